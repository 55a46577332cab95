"""Distributed data-parallel training behind one interface: Horovod or torch.distributed (DDP).

The trainer (:class:`cloudvox.train.Trainer`) talks only to this interface: ``rank``, ``size``,
``local_rank``, ``device()``, ``wrap()``, ``broadcast_state()``, ``allreduce_sum()``, ``barrier()``.

Rank, world size and local rank come from whichever launcher started the job (:func:`launch_env`): Open MPI
(``OMPI_COMM_WORLD_*``), MPICH / Intel MPI (``PMI_*``, ``MPI_LOCALRANKID``), SLURM's srun (``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_LOCALID``, master address from ``SLURM_JOB_NODELIST``) or torchrun (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``). torch.distributed does not read MPI's variables itself: they are mapped.
"""
import datetime
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from cloudvox.train import SingleProcess, pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    size: int
    local_rank: int
    launcher: str
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def launch_env(environ: Optional[Dict[str, str]] = None) -> LaunchEnv:
    """Rank, size and local rank from the launcher's environment (a pure function of ``environ``)."""
    env = os.environ if environ is None else environ
    port = int(env.get("MASTER_PORT", 29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
    addr = env.get("MASTER_ADDR")
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun / torch.distributed.launch
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun",
                         addr or "127.0.0.1", port)
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchEnv(int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                         int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)), "openmpi", addr or _slurm_master(env), port)
    if "PMI_RANK" in env:
        local = env.get("MPI_LOCALRANKID", env.get("PMI_LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
        return LaunchEnv(int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(local), "mpich", addr or _slurm_master(env), port)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm",
                         addr or _slurm_master(env), port)
    return LaunchEnv(0, 1, 0, "none", addr or "127.0.0.1", port)


def _slurm_master(env) -> str:
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    return first_host(nodes) if nodes else "127.0.0.1"


class HorovodBackend(SingleProcess):
    """Horovod: DistributedOptimizer (averaged gradients), parameter/optimizer broadcast, allreduce."""
    backend = "horovod"

    def __init__(self):
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
        opt = self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=self.hvd.Average)
        return model, opt

    def broadcast_state(self, model, optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # Horovod initialises an empty optimiser state with a zero-gradient step, which would advance
        # Adam's step count: broadcast the state only once there is one (after a restore)
        if optimizer.state_dict()["state"]:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def allreduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(t, op=self.hvd.Sum)

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), op=self.hvd.Sum, name="barrier")


class DDPBackend(SingleProcess):
    """torch.distributed DistributedDataParallel: NCCL on GPUs, gloo on CPU."""
    backend = "ddp"

    def __init__(self, env: LaunchEnv, timeout_minutes: float = 30.0):
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
        self._model = None

    def wrap(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel as DDP
        dev = next(model.parameters()).device
        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self._model = ddp
        return ddp, optimizer

    def broadcast_state(self, model, optimizer) -> None:
        for p in model.state_dict().values():
            self.dist.broadcast(p, src=0)

    def allreduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else t.device
        out = t.to(dev).clone()
        self.dist.all_reduce(out, op=self.dist.ReduceOp.SUM)
        return out.to(t.device)

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
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
    raise ValueError(f"unknown backend {backend!r}; choose horovod, ddp, auto or none")
