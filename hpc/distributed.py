"""Distributed data-parallel training behind one interface: Horovod or torch.distributed (DDP).

The trainer (:class:`cloudvox.training.loop.Trainer`) talks only to this interface: ``rank``, ``size``,
``local_rank``, ``device()``, ``wrap()``, ``broadcast_state()``, ``allreduce_sum()``, ``barrier()``.

Rank, world size and local rank come from whichever launcher started the job (:mod:`hpc.launcher`: Open MPI,
MPICH / Intel MPI, a SLURM step or torchrun). torch.distributed does not read MPI's variables itself: they
are mapped.
"""
import contextlib
import datetime
import inspect
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from cloudvox.training.process import SingleProcess, pick_device

from .launcher import LaunchEnv, launch_env
from .watchdog import FOLDER, Watchdog, start as start_watchdog
from cloudvox.errors import ConfigError

log = logging.getLogger(__name__)


def average_flat_gradients(model: torch.nn.Module, start_average, meanwhile: Optional[Callable[[], None]] = None) -> None:
    """Every gradient of ``model`` averaged over the ranks by one allreduce per dtype of one flat buffer:
    ``start_average(k, flat)`` starts averaging ``flat`` in place and returns a callable that waits for it to
    finish. ``meanwhile()`` runs while the allreduces are in flight (the trainer reads the next batch there:
    a rank that arrives first would otherwise wait idle for the other). A parameter without a gradient on
    this rank's batch sends zeros, so that every rank sends one layout."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    pending = []
    try:
        for k, grads in enumerate(by_dtype.values()):
            flat = torch.cat([g.reshape(-1) for g in grads])
            pending.append((grads, flat, start_average(k, flat)))
        if meanwhile is not None:
            meanwhile()
    finally:  # even when ``meanwhile`` raised: never leave a collective in flight
        for grads, flat, wait in pending:
            wait()
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()


class Watched:
    """The collectives of a backend, timed by a :class:`hpc.watchdog.Watchdog` once :func:`watch` attached one."""
    watchdog: Optional[Watchdog] = None

    def waiting(self):
        return self.watchdog.waiting() if self.watchdog is not None else contextlib.nullcontext()

    def progress(self) -> None:
        if self.watchdog is not None:
            self.watchdog.advance()


def watch(dist, base: Path, timeout: float) -> Optional[Watchdog]:
    """Attach a collective-timeout watchdog to ``dist`` (several ranks, ``timeout`` > 0), its heartbeats in
    ``base/.watchdog/LAUNCH`` (one folder per launch, agreed by one allreduce). Returns it, or None."""
    if dist.size < 2 or timeout <= 0 or not isinstance(dist, Watched):
        return None
    stamp = torch.tensor([(time.time_ns() // 1000 + os.getpid()) % (1 << 62) if dist.rank == 0 else 0],
                         dtype=torch.int64)
    launch = f"{int(dist.allreduce_sum(stamp)[0]):x}"
    dist.watchdog = start_watchdog(Path(base) / FOLDER, launch, dist.rank, dist.size, timeout)
    return dist.watchdog


class HorovodBackend(Watched, SingleProcess):
    """Horovod: gradients averaged by one fused allreduce per step, parameter/optimizer broadcast, allreduce."""
    backend = "horovod"

    # Measured on 2 ranks x 1 core (bench/train_scaling.py, docs/scaling.md): Horovod's background thread negotiates
    # through MPI every cycle and Open MPI busy-polls while it waits, on the core the rank computes on; without
    # yielding, forward and backward ran 30-50% slower at 2 ranks than at 1. With MPI yielding when idle the
    # cycle no longer slows the compute (a 0.1-2 ms cycle: the same matrix products within 2%), and a fused
    # allreduce of 0.3 MB takes about one cycle: 1.8 ms at a 2 ms cycle, 0.96 ms at 0.5, 0.47 ms at 0.1.
    # VoxelNet's 2-rank weak efficiency went from 0.84 (2 ms) to 0.97 (0.5 ms). The environment wins.
    DEFAULT_ENV = {"HOROVOD_CYCLE_TIME": "0.5", "OMPI_MCA_mpi_yield_when_idle": "1"}

    def __init__(self):
        for key, value in self.DEFAULT_ENV.items():  # before MPI_Init (the mpi4py import) and hvd.init()
            os.environ.setdefault(key, value)
        try:  # let mpi4py own MPI: it finalises MPI last at exit, after HDF5 (parallel h5py) has closed;
            from mpi4py import MPI  # noqa: F401   Horovod finalising first made h5py crash at shutdown
        except ImportError:
            pass
        import horovod.torch as hvd
        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def device(self, requested: str) -> torch.device:
        dev = pick_device(requested, self.local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return dev

    def wrap(self, model, optimizer):
        return model, optimizer  # gradients are averaged by reduce_gradients, between backward and step

    def reduce_gradients(self, model, meanwhile=None) -> None:
        """One fused allreduce (average) of every gradient after the backward: one negotiation with Horovod's
        background thread per step, submitted asynchronously, ``meanwhile()`` run while it is in flight.
        Measured on 2 CPU ranks (docs/scaling.md), Horovod's DistributedOptimizer, which submits each gradient
        as the backward produces it, waited 2.9-8.8 ms per step for these ~0.3 MB of gradients, tensors
        spread over several negotiation cycles; the backward is too short to hide them. Clipping and
        mixed-precision unscaling then see the averaged gradients on every rank."""
        def start(k, flat):
            handle = self.hvd.allreduce_async_(flat, op=self.hvd.Average, name=f"cloudvox.gradients.{k}")
            return lambda: self.hvd.synchronize(handle)
        with self.waiting():
            average_flat_gradients(model, start, meanwhile)

    def broadcast_state(self, model, optimizer) -> None:
        with self.waiting():
            self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
            # Horovod initialises an empty optimiser state with a zero-gradient step, which would advance
            # Adam's step count: broadcast the state only once there is one (after a restore)
            if optimizer.state_dict()["state"]:
                self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def allreduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        with self.waiting():
            return self.hvd.allreduce(t, op=self.hvd.Sum)

    def barrier(self) -> None:
        with self.waiting():
            self.hvd.allreduce(torch.zeros(1), op=self.hvd.Sum, name="barrier")


class DDPBackend(Watched, SingleProcess):
    """torch.distributed: DistributedDataParallel with NCCL on GPUs; on CPU (gloo), one fused allreduce of the
    gradients after the backward, as with Horovod.

    On CPU, DDP's reducer allreduces its buckets during the backward through gloo, whose transport thread
    needs the core the rank computes on: measured on 2 ranks x 1 core (docs/scaling.md), each gloo allreduce
    took 2.7-2.9 ms while both ranks computed (0.6 ms back to back), and the backward grew by 4-6 ms with
    DDP's buckets (by 8 ms with 50 kB buckets). There is no overlap to win there, so one call per step.
    """
    backend = "ddp"

    def __init__(self, env: LaunchEnv, timeout_minutes: float = 30.0, fused: Optional[bool] = None):
        import torch.distributed as dist
        self.dist = dist
        self.rank, self.size, self.local_rank = env.rank, env.size, env.local_rank
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=env.rank,
                                world_size=env.size, timeout=datetime.timedelta(minutes=timeout_minutes))
        # CPU: reduce_gradients' one allreduce instead of DDP's reducer (``fused`` chooses; None: by device)
        self.fused = (not use_cuda) if fused is None else fused

    def wrap(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel as DDP
        dev = next(model.parameters()).device
        if self.fused:
            return model, optimizer
        # DDP broadcasts every buffer from rank 0 before each forward by default: a collective and a wait for
        # the slowest rank on every step. Our buffers are constants (Clebsch-Gordan tables, radial
        # frequencies), equal on every rank; only BatchNorm's running statistics would need it.
        running_stats = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        # torch >= 2.13 names the per-forward buffer sync ``forward_sync_buffers`` (buffers still synced at init)
        sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else "broadcast_buffers")
        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, gradient_as_bucket_view=True,
                  **{sync: running_stats})
        return ddp, optimizer

    def _all_reduce(self, t: torch.Tensor) -> None:
        """Sum ``t`` over the ranks in place."""
        self._start_all_reduce(t)()

    def _start_all_reduce(self, t: torch.Tensor) -> Callable[[], None]:
        """Start summing ``t`` over the ranks in place; the callable that waits for it. A CPU (gloo)
        collective is waited for by polling with ``sched_yield`` instead of blocking: gloo moves the data
        through TCP and its own threads, and a rank that blocks lets its core go idle between the transfer's
        wake-ups. Measured on 2 ranks x 1 core (docs/scaling.md), 0.3 MB after 20 ms of compute: 3.6-3.8 ms
        blocking, 0.6 ms polling (the same after a 20 ms sleep: it is the wake-ups, not the other rank's
        load); 1 float: 0.6 ms either way."""
        work = self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, async_op=True)

        def wait():
            if t.device.type == "cpu":
                while not work.is_completed():
                    os.sched_yield()
            work.wait()
        return wait

    def reduce_gradients(self, model, meanwhile=None) -> None:
        """CPU: one fused allreduce (sum, then divided by the rank count) of every gradient after the backward,
        ``meanwhile()`` run while it is in flight. GPU: nothing but ``meanwhile()`` (DDP's reducer averaged
        them during the backward)."""
        if not self.fused:  # GPU: DDP's reducer waited in the backward; a step is progress
            self.progress()
            return super().reduce_gradients(model, meanwhile)

        def start(_, flat):
            wait = self._start_all_reduce(flat)

            def finish():
                wait()
                flat.div_(self.size)
            return finish
        with self.waiting():
            average_flat_gradients(model, start, meanwhile)

    def broadcast_state(self, model, optimizer) -> None:
        with self.waiting():
            for p in model.state_dict().values():
                self.dist.broadcast(p, src=0)

    def allreduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else t.device
        out = t.to(dev).clone()
        with self.waiting():
            self._all_reduce(out)
        return out.to(t.device)

    def barrier(self) -> None:
        with self.waiting():
            self.dist.barrier()

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def make_distributed(backend: str = "auto", env: Optional[LaunchEnv] = None):
    """The distributed interface for this process: ``horovod``, ``ddp``, ``none``, or ``auto`` (Horovod
    where it is importable and more than one process runs, else DDP, else a single process)."""
    env = env or launch_env()
    if backend == "none" or (backend == "auto" and env.size == 1):
        return SingleProcess()
    if backend == "auto":
        try:
            import horovod.torch  # noqa: F401
            backend = "horovod"
        except ImportError:
            backend = "ddp"
    if backend == "horovod":
        return HorovodBackend()
    if backend == "ddp":
        return DDPBackend(env)
    raise ConfigError(f"unknown backend {backend!r}; choose horovod, ddp, auto or none")
