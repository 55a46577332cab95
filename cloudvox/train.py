"""One trainer for every cloudvox model: optimisation, schedules, early stopping, checkpoints, resume.

The trainer is model-agnostic: a *task* turns a batch into (prediction, target) on the device, and a
*distributed* object (default :class:`SingleProcess`; :mod:`hpc.distributed` provides Horovod and DDP)
shards the data and reduces gradients and metrics. The trainer never imports torch.distributed.

Determinism: the epoch's sample order comes from a generator seeded by (seed, epoch), augmentation from one
seeded by (seed, epoch, step), and the torch RNG state is saved in every checkpoint, so a run resumed from
a checkpoint continues exactly as the uninterrupted run would have (on CPU).
"""
import collections
import contextlib
import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import properties as K
from .partition import balanced_shards, blockdist
from .progress import Progress
from .errors import ConfigError, FormatError

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """Optimisation settings (the ``train`` section of a run's YAML)."""
    epochs: int = 50
    batch_size: int = 32  # global batch, over all ranks
    lr: float = 1e-3
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 0.0
    ema: float = 0.0  # > 0: validation, checkpoints and evaluation use an exponential moving average of the weights
    #                   with this decay per optimiser step (0.99-0.999; ramped up over the first steps), 0: off
    schedule: str = "cosine"  # cosine | plateau | none
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    patience: int = 0  # early stopping on validation MAE (0: never)
    loss: str = "l1"  # l1 | mse | huber | berhu (L1 below half a target std, quadratic above)
    grad_clip: float = 0.0
    micro_batch: int = 0  # > 0: each rank's share of a batch is run through forward and backward in chunks of at
    # most this many samples, their gradients summed before the one allreduce and optimiser step (the same
    # gradient up to summation order; with BatchNorm each chunk normalises over itself, as each rank's share does).
    # For memory on GPUs; on CPUs with several ranks per node for speed: VoxelNet at 2 ranks x 32 samples trained
    # 9 % more samples/s in chunks of 16, whose working set stays nearer the core's cache (1 rank: no change;
    # AtomCloudNet: no gain; docs/scaling.md). 0: the whole share at once
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, on CUDA only
    channels_last: bool = True  # on CUDA only
    num_workers: int = 0  # DataLoader worker processes (persistent): > 0 overlaps reading and collation with steps
    prefetch: int = 0  # with num_workers 0: batches read and collated ahead by a thread while the step computes (for
    # GPU steps; on CPU the thread competes with the step for Python's GIL: data wait 3.5 -> 0.1 ms, step +25%)
    lr_scaling: str = "none"  # none | linear | sqrt: scale lr with the number of ranks
    tensorboard: bool = False
    progress_every: float = 60.0  # s between progress lines in a batch log (output not a terminal; 0: none)
    eval_every: int = 1
    stop_after_epochs: int = 0  # end this process after N epochs (checkpointed; --resume continues), 0: never
    max_minutes: float = 0.0  # wall-clock budget of this process's training (0: none): no epoch starts that would
    # end past it (judged from the mean epoch so far); the run then ends as if at its last epoch and is evaluated.
    # With the cosine schedule its length follows the budget (the epochs that fit, from the last epoch's time,
    # capped by ``epochs``): set ``epochs`` high and the learning rate still anneals before the time is up
    stop_after_steps: int = 0  # end this process after N optimiser steps, mid-epoch (checkpointed), 0: never
    stop_check_every: int = 16  # steps between the ranks' agreements on a stop signal (one small allreduce)
    rebalance: bool = False  # several ranks on CPU (or with exact_timing): each global batch is split in proportion
    # to the ranks' measured speeds (agreed with the stop signal), so that a rank on a slower or busier core gets
    # fewer samples and the others wait less for it; the gradient is the same up to summation order, but the
    # split then depends on timing (runs are not bit for bit repeatable). Off: on 2 ranks x 1 core it halved the
    # ranks' arrival skew at the allreduce and left samples/s unchanged within the machine's drift (docs/scaling.md)
    collective_timeout: float = 600.0  # s: with several ranks, a rank that does not reach a collective within it
    # ends the job (exit 124) with one log line naming the missing rank(s) and their hosts (hpc/watchdog.py); 0: off.
    # Well below a typical time limit, well above a step, a validation pass or a checkpoint write
    exact_timing: bool = False  # synchronise the device at each phase of a step: exact step_ms_* on GPUs
    ensemble: int = 1  # K > 1: K members (seeds seed .. seed + K - 1, same split) in RUN/member-k (cloudvox.runs);
    #                    evaluate / predict report their mean and their standard deviation (the uncertainty)
    members_over_ranks: bool = False  # an ensemble on several ranks: member k trained alone on rank k % ranks
    #                    (no gradient exchange: K models in the time of K / ranks), instead of every member
    #                    data-parallel over all ranks; rank 0 then evaluates the ensemble

    @classmethod
    def from_dict(cls, d: Optional[Dict]) -> "TrainConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown train option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


class SingleProcess:
    """The distributed interface for one process (see hpc.distributed for Horovod and DDP)."""
    rank, size, local_rank = 0, 1, 0
    backend = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shows_progress(self) -> bool:
        """Whether this process draws progress bars: the job's rank 0 only."""
        return self.is_main

    def device(self, requested: str) -> torch.device:
        return pick_device(requested, self.local_rank)

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def allreduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def progress(self) -> None:
        """A unit of work done outside a collective (a batch predicted): a backend's collective timeout
        then knows this rank is slow, not hung."""

    def reduce_gradients(self, model: torch.nn.Module, meanwhile: Optional[Callable[[], None]] = None) -> None:
        """Average the gradients over the ranks, after the backward and before clipping and the step
        (Horovod and DDP on CPU: one fused allreduce; DDP on GPUs: its reducer has done it during the backward;
        one process: nothing), and call ``meanwhile()`` while the allreduce is in flight (the trainer reads
        the next batch there)."""
        if meanwhile is not None:
            meanwhile()


class MemberProcess(SingleProcess):
    """One rank of a job training a model of its own (an ensemble's members spread over the ranks): a single
    process for its trainer (it writes its own run directory), on the device of its local rank, that draws
    progress only where it is the job's rank 0."""

    def __init__(self, job_rank: int, local_rank: int = 0):
        self.job_rank, self.local_rank = int(job_rank), int(local_rank)

    @property
    def shows_progress(self) -> bool:
        return self.job_rank == 0


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Keep large freed blocks in this process's heap instead of returning them to the OS (glibc only).

    glibc serves blocks above its mmap threshold (at most 32 MB by default) with fresh mmap'ed pages and
    unmaps them on free, so a training step whose activations hold such blocks (VoxelNet's first layer
    output: 55 MB at batch 32) page-faults them in again on every step: measured 26 ms for a 55 MB
    ``torch.zeros`` against 7.5 ms when its memory is reused. Raising the mmap and trim thresholds to
    ``limit_bytes`` lets freed blocks be reused (the process keeps its peak heap). Call once at program
    start (``cloudvox train`` does); returns whether it took effect (False off glibc).
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, int(limit_bytes))
        return bool(mmap_ok) and bool(libc.mallopt(M_TRIM_THRESHOLD, int(limit_bytes)))
    except (OSError, AttributeError):
        return False


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}") if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(requested)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> List[np.ndarray]:
    """The global batches of an epoch: a permutation seeded by (seed, epoch), cut into batch_size pieces."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def shard(batch: np.ndarray, rank: int, size: int) -> np.ndarray:
    """This rank's part of a global batch (contiguous, near-equal: :func:`cloudvox.partition.blockdist`)."""
    a, b = blockdist(len(batch), size, rank)
    return batch[a:b]


def shard_rows(costs: Optional[np.ndarray], n: int, rank: int, size: int,
               speeds: Optional[np.ndarray] = None) -> np.ndarray:
    """The rows (ascending) of a global batch of n samples that this rank computes: balanced by cost
    (:func:`cloudvox.partition.balanced_shards`) where the dataset gives one per sample (n,), and by the ranks'
    relative speeds (size,) where given; else contiguous, near-equal."""
    if size == 1:
        return np.arange(n)
    if costs is None and speeds is None:
        return shard(np.arange(n), rank, size)
    return np.flatnonzero(balanced_shards(np.ones(n) if costs is None else costs, size, speeds) == rank)


def step_generator(seed: int, epoch: int, step: int, device: torch.device = torch.device("cpu")) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0]))
    return g


def random_rotations(count: int, generator: torch.Generator, reflections: bool = True) -> torch.Tensor:
    """(count, 3, 3) float64 Haar-random rotations, each a reflection with probability 1/2 if asked."""
    A = torch.randn(count, 3, 3, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar measure
    det = torch.det(Q)
    Q[:, :, 0] *= det.sign().unsqueeze(-1)  # now a proper rotation
    if reflections:
        flip = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
        Q = Q * flip.to(Q.dtype).view(-1, 1, 1)
    return Q


# --------------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, payload: Dict) -> None:
    """torch.save to ``path.tmp``, flushed to the file system (fsync), then renamed: a checkpoint is never half
    written, and a node lost while writing leaves the previous one complete (the .tmp is never read)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> Dict:
    """A checkpoint, loaded without unpickling arbitrary objects (``weights_only=True``)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    version = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(version, int):
        raise FormatError(f"{path} is not a cloudvox checkpoint (no format version)")
    if version > CHECKPOINT_FORMAT:
        raise FormatError(f"{path} has checkpoint format {version}, newer than this cloudvox's "
                          f"({CHECKPOINT_FORMAT}): upgrade cloudvox")
    if version < CHECKPOINT_FORMAT:
        raise FormatError(f"{path} has checkpoint format {version}, which this cloudvox no longer reads "
                          f"(it reads {CHECKPOINT_FORMAT}): retrain, or use the cloudvox that wrote it")
    return payload


BERHU_THRESHOLD = 0.5  # in normalised target units (the training residual's std)


def _berhu(p: torch.Tensor, y: torch.Tensor, c: float = BERHU_THRESHOLD) -> torch.Tensor:
    """Reverse Huber loss per sample, (B,) normalised predictions and targets -> (B,): |x| for |x| <= c and
    (x^2 + c^2) / (2 c) above, continuous with a continuous gradient at c. Small errors keep L1's equal weight
    (the MAE that is reported); a structure the network misses by more than c pulls in proportion to its error,
    as under MSE, so a rare outlier of the training set is fitted sooner. On the perovskites it was worse than L1 on
    validation (docs/accuracy.md, "The loss and the anti-perovskites")."""
    x = (p - y).abs()
    return torch.where(x <= c, x, (x * x + c * c) / (2 * c))


def _loss_fn(name: str):
    if name == "l1":
        return lambda p, y: (p - y).abs()
    if name == "mse":
        return lambda p, y: (p - y) ** 2
    if name == "huber":
        return lambda p, y: torch.nn.functional.huber_loss(p, y, reduction="none", delta=1.0)
    if name == "berhu":
        return _berhu
    raise ConfigError(f"unknown loss {name!r}")


class Trainer:
    """Train ``model`` on ``task`` with a train and a validation dataset, writing a run directory.

    Args:
        model: the network. task: object with ``forward(model, batch, device, generator, train) ->
            (pred, target)`` in normalised units, and ``collate`` on the datasets.
        train_set, val_set: datasets with ``collate``. cfg: :class:`TrainConfig`.
        run_dir: where checkpoints, metrics and plots go. meta: JSON-able facts saved in every checkpoint
            (the model config, descriptor parameters, species, normaliser, ...). dist: the distributed
            interface. target_scale: factor from normalised units to reported units (MAE in eV/atom...).
    """

    def __init__(self, model: torch.nn.Module, task, train_set, val_set, cfg: TrainConfig, run_dir: Path,
                 meta: Dict, dist=None, target_scale: float = 1.0):
        self.dist = dist or SingleProcess()
        self.cfg = cfg
        self.device = self.dist.device(cfg.device)
        self.model = model.to(self.device)
        self.task, self.train_set, self.val_set = task, train_set, val_set
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.scale = float(target_scale)
        lr = cfg.lr * {"none": 1.0, "linear": self.dist.size, "sqrt": math.sqrt(self.dist.size)}[cfg.lr_scaling]
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
        self.optimizer = opt_cls(self.model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        self.base_lr = lr
        self.model_for_step, self.optimizer = self.dist.wrap(self.model, self.optimizer)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience) if cfg.schedule == "plateau" else None
        self.amp = cfg.amp and self.device.type == "cuda"
        if self.device.type == "cuda":  # autotuned cuDNN algorithms: a step has few distinct shapes
            torch.backends.cudnn.benchmark = True
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.loss = _loss_fn(cfg.loss)
        self.history: List[Dict] = []
        self.epoch = 0
        self.best = math.inf
        self.best_epoch = -1
        self.budget_reached = False  # train.max_minutes ended the training early
        self.horizon = cfg.epochs  # the cosine schedule's length in epochs (fitted to max_minutes when set)
        self.stop_requested = False  # set by a signal handler: checkpoint and leave at the next step
        self.steps_done = 0  # optimiser steps taken by this process
        # the ranks' relative speeds (None: equal), agreed every stop_check_every steps; host times measure the
        # work on CPU only (asynchronous kernels on a GPU, unless exact_timing)
        self.rank_speeds: Optional[np.ndarray] = None
        self._rebalance = cfg.rebalance and (self.device.type == "cpu" or cfg.exact_timing)
        self._window = np.zeros(2)  # this rank's busy seconds and work (costs) since the last agreement
        self._writer = None
        # the moving average of the parameters (cfg.ema): None when off
        self.ema_params: Optional[List[torch.Tensor]] = ([p.detach().clone() for p in self.model.parameters()]
                                                         if cfg.ema > 0 else None)
        self.ema_steps = 0

    # --- schedule ------------------------------------------------------------------------------------------
    def lr_at(self, epoch: float) -> float:
        cfg = self.cfg
        if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
            return self.base_lr * (epoch + 1) / (cfg.warmup_epochs + 1)
        if cfg.schedule == "cosine":
            t = (epoch - cfg.warmup_epochs) / max(1, self.horizon - cfg.warmup_epochs)
            return self.base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
        return None  # plateau / none: leave the optimiser's lr

    # --- weight averaging ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- d ema + (1 - d) params after an optimiser step, d = min(cfg.ema, (1 + n) / (10 + n))."""
        self.ema_steps += 1
        d = min(self.cfg.ema, (1.0 + self.ema_steps) / (10.0 + self.ema_steps))
        params = [p.detach() for p in self.model.parameters()]
        torch._foreach_mul_(self.ema_params, d)
        torch._foreach_add_(self.ema_params, params, alpha=1.0 - d)

    @contextlib.contextmanager
    def averaged(self):
        """Within: the model holds the averaged weights (no-op without ``ema``); the trained ones after."""
        if self.ema_params is None:
            yield
            return
        params = list(self.model.parameters())
        raw = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.ema_params):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)

    # --- checkpoints -------------------------------------------------------------------------------------
    def state(self, step_in_epoch: int = 0) -> Dict:
        """The checkpoint: ``model`` holds the weights to evaluate (the average, with ``ema``), ``trained`` the
        optimiser's own weights that training resumes from (with ``ema`` only)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        extra = {}
        if self.ema_params is not None:
            extra = dict(trained={k: v.detach().clone() for k, v in self.model.state_dict().items()},
                         ema_steps=self.ema_steps)
        if self.ema_params is None:  # saved before the next step changes them: no copy needed
            weights = self.model.state_dict()
        else:
            with self.averaged():
                weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return dict(format=CHECKPOINT_FORMAT, model=weights, optimizer=self.optimizer.state_dict(), **extra,
                    plateau=self.plateau.state_dict() if self.plateau else None,
                    scaler=self.scaler.state_dict() if self.scaler else None,
                    epoch=self.epoch, step_in_epoch=step_in_epoch, best=self.best, best_epoch=self.best_epoch,
                    history=json.dumps(self.history), meta=json.dumps(self.meta),
                    train_config=json.dumps(asdict(self.cfg)), rng=rng, world_size=self.dist.size)

    def save(self, name: str, step_in_epoch: int = 0) -> Optional[Path]:
        if not self.dist.is_main:
            return None
        path = self.run_dir / name
        save_checkpoint(path, self.state(step_in_epoch))
        return path

    def restore(self, path: Path) -> int:
        """Load a checkpoint to continue training; returns the step within the epoch to resume at."""
        ck = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        if self.ema_params is not None:  # the average from "model", the weights to go on from "trained"
            self.ema_params = [p.detach().clone() for p in self.model.parameters()]
            self.ema_steps = int(ck.get("ema_steps", 0))
        if ck.get("trained") is not None:
            self.model.load_state_dict(ck["trained"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.plateau and ck.get("plateau"):
            self.plateau.load_state_dict(ck["plateau"])
        if self.scaler and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.best, self.best_epoch = int(ck["epoch"]), float(ck["best"]), int(ck["best_epoch"])
        self.history = json.loads(ck["history"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if "cuda" in ck["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
        self.dist.broadcast_state(self.model, self.optimizer)
        log.info("resumed from %s at epoch %d step %d", path, self.epoch, int(ck.get("step_in_epoch", 0)))
        return int(ck.get("step_in_epoch", 0))

    # --- loops -------------------------------------------------------------------------------------------
    @staticmethod
    def _costs(dataset) -> Optional[np.ndarray]:
        return dataset.costs() if hasattr(dataset, "costs") else None

    def _rows(self, dataset, batch: np.ndarray, speeds: Optional[np.ndarray] = None) -> np.ndarray:
        """This rank's rows of a global batch (dataset positions) of ``dataset``, balanced by the samples'
        costs (``dataset.costs()``: binned values, atoms) where it has them, and by the ranks' ``speeds``."""
        costs = self._costs(dataset) if self.dist.size > 1 else None
        return shard_rows(None if costs is None else costs[np.asarray(batch)], len(batch), self.dist.rank,
                          self.dist.size, speeds)

    def _loader(self, dataset, batches: Sequence[np.ndarray], speeds=lambda: None, chunk: Optional[int] = None):
        """This rank's (rows, batch) of each global batch of ``dataset``: the rows are split off when the batch
        is read (by the ranks' ``speeds()`` at that moment) and travel with it. With ``chunk`` (training) the
        batch is a list of batches of at most ``chunk`` consecutive rows each (0: one, all rows;
        :func:`collate_chunks`). With ``num_workers`` > 0 the loader and its worker processes persist across
        epochs (one per dataset): reading and collation overlap the step, and the workers' item caches stay
        warm. Only the batch list changes between epochs."""
        def rows_of(b):
            return self._rows(dataset, b, speeds())
        collate = dataset.collate if chunk is None else functools.partial(collate_chunks, dataset.collate, chunk)
        if not self.cfg.num_workers:
            loader = InProcessBatches(dataset, batches, rows_of, collate)
            return Prefetch(loader, self.cfg.prefetch) if self.cfg.prefetch > 0 else loader
        loaders = self.__dict__.setdefault("_loaders", {})
        key = (id(dataset), chunk)
        if key not in loaders:
            sampler = _EpochBatches()
            loaders[key] = (sampler, torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers,
                persistent_workers=True, prefetch_factor=2, pin_memory=self.device.type == "cuda"))
        sampler, loader = loaders[key]
        sampler.set(batches, rows_of)
        return ((sampler.pending.popleft(), batch) for batch in loader)

    def train_epoch(self, start_step: int = 0) -> Dict[str, float]:
        cfg = self.cfg
        self.model_for_step.train()
        batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, self.epoch)
        lr = self.lr_at(self.epoch)
        if lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        # loss sum, abs error sum, count: accumulated on the device, read once per epoch (no per-step host sync)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # sums[2]: the count, set at the end
        t0, seen = time.perf_counter(), 0
        timer = StepTimer(self.device, cfg.exact_timing)
        bar = Progress(len(batches), f"epoch {self.epoch}", unit="steps", initial=start_step, every_s=cfg.progress_every,
                       enabled=self.dist.shows_progress, leave=False)
        costs = self._costs(self.train_set)
        batches_in = iter(self._loader(self.train_set, batches[start_step:], lambda: self.rank_speeds,
                                       cfg.micro_batch))
        ahead = {}

        def read():
            ahead["item"] = next(batches_in, None)
            ahead["data"] = timer.mark("data" if ahead["item"] is not None else "allreduce")

        def read_ahead():
            """The next step's batch, read while this step's gradients are averaged (a rank that reaches the
            allreduce first would wait idle for the other; at one rank it changes nothing)."""
            timer.mark("allreduce")
            read()

        read()  # the first batch: the time since the epoch began is its data wait, as for every other
        step = start_step
        while ahead["item"] is not None:
            (rows, chunks), busy = ahead["item"], ahead["data"]
            global_count = len(batches[step])
            self.optimizer.zero_grad()
            done = []  # each chunk's (per-sample loss, prediction, target), summed into the metrics after the step
            no_sync = getattr(self.model_for_step, "no_sync", contextlib.nullcontext)  # DDP's reducer: once
            for j, (chunk_rows, batch) in enumerate(zip(chunk_rows_of(rows, cfg.micro_batch), chunks)):
                # the same generator for every chunk: random draws are made for the global batch, then indexed
                gen = step_generator(cfg.seed, self.epoch, step)
                batch[K.GLOBAL_ROWS] = (chunk_rows, global_count)
                with no_sync() if j + 1 < len(chunks) else contextlib.nullcontext():
                    with torch.autocast(self.device.type, enabled=self.amp):
                        pred, y = self.task.forward(self.model_for_step, batch, self.device, gen, True)
                        per = self.loss(pred.float(), y)
                    # sum over this chunk's samples / global count x ranks: the reducer's mean is the global mean
                    loss = per.sum() * self.dist.size / global_count
                    busy += timer.mark("forward")
                    if self.scaler:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                    busy += timer.mark("backward")
                done.append((per.detach(), pred.detach(), y))
            if self._rebalance:  # this rank's work and time to the allreduce: its speed, for the next shares
                self._window += (busy, len(rows) if costs is None else float(costs[batches[step][rows]].sum()))
            self.dist.reduce_gradients(self.model, meanwhile=read_ahead)
            timer.mark("allreduce")
            if self.scaler:
                self.scaler.unscale_(self.optimizer)  # after the reduction: every rank sees the same inf/nan
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.ema_params is not None:
                self._update_ema()
            timer.mark("optimizer")
            for per, pred, y in done:
                sums[:2].add_(torch.stack([per.sum(), (pred.float() - y).abs().sum()]))
                seen += len(y)
            if bar.enabled:
                bar.update(1, **({"samples/s": f"{seen * self.dist.size / (time.perf_counter() - t0):.0f}"}
                                 if step % 25 == 0 else {}))
            self.steps_done += 1
            if self._stop_agreed(step + 1 == len(batches)):
                bar.close()
                self.save("checkpoint_last.pt", step + 1)
                raise StopTraining(self.epoch, step + 1)
            timer.mark("sync")
            step += 1
        bar.close()
        sums[2] = seen
        # every rank's step split and sample count ride on the epoch's one reduction of the sums (rank r's row)
        splits = torch.zeros(self.dist.size, len(timer.PHASES) + 1, dtype=torch.float64)
        splits[self.dist.rank] = torch.tensor(list(timer.per_step_ms().values()) + [seen], dtype=torch.float64)
        reduced = self.dist.allreduce_sum(torch.cat([sums.cpu(), splits.reshape(-1)]))
        sums, splits = reduced[:3], reduced[3:].reshape(splits.shape)
        wall = time.perf_counter() - t0
        out = dict(train_loss=float(sums[0] / sums[2]), train_mae=float(sums[1] / sums[2]) * self.scale,
                   samples_per_s=float(sums[2]) / wall, lr=self.optimizer.param_groups[0]["lr"], train_seconds=wall)
        out.update(timer.per_step_ms())
        out["train_steps"] = timer.steps
        if self.dist.size > 1:  # where the ranks differ: the slower rank's extra time is the others' wait
            out["ranks_step_ms"] = {k: [round(v, 3) for v in splits[:, i].tolist()]
                                    for i, k in enumerate(timer.PHASES)}
            out["ranks_samples"] = [int(v) for v in splits[:, -1].tolist()]
        return out

    def _stop_agreed(self, last_step: bool) -> bool:
        """Whether every rank stops after this step. ``stop_after_steps`` is the same on every rank (no
        collective); a signal (``stop_requested``, any rank, any time) is agreed by one small allreduce every
        ``stop_check_every`` steps and at the end of an epoch, so that all ranks checkpoint at one step. The
        same allreduce carries every rank's work and busy time since the last one: with ``rebalance`` the
        ranks' speeds for the next global batches' shares (equal on every rank: the same reduced numbers)."""
        cfg = self.cfg
        if cfg.stop_after_steps and self.steps_done >= cfg.stop_after_steps:
            return True
        if self.dist.size == 1:
            return self.stop_requested
        if not (last_step or self.steps_done % max(1, cfg.stop_check_every) == 0):
            return False
        size, rank = self.dist.size, self.dist.rank
        vec = torch.zeros(1 + 2 * size, dtype=torch.float64)
        vec[0] = 1.0 if self.stop_requested else 0.0
        vec[1 + rank], vec[1 + size + rank] = self._window
        vec = self.dist.allreduce_sum(vec)
        self._window = np.zeros(2)
        busy, work = vec[1:1 + size].numpy(), vec[1 + size:].numpy()
        if self._rebalance and np.all(busy > 0) and np.all(work > 0):
            speed = work / busy
            self.rank_speeds = np.clip(speed / speed.mean(), 0.5, 2.0)
        return float(vec[0]) > 0

    def predict(self, dataset, rotations: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalised predictions, targets and spread (std over ``rotations`` random rotations, 0 if none)
        for a whole dataset, gathered in dataset order on every rank (:func:`cloudvox.inference.predict_dataset`)."""
        from .inference import predict_dataset
        self.model_for_step.eval()
        batches = epoch_batches(len(dataset), self.cfg.batch_size, 0, 0, shuffle=False)

        def forward(batch, positions, generator):
            rotate = generator is not None
            return self.task.forward(self.model_for_step, batch, self.device, generator, rotate, augment=rotate)
        pred, spread, y = predict_dataset([forward], self._loader(dataset, batches), batches, len(dataset), self.dist,
                                          rotations, self.cfg.seed, self.amp, self.device.type)
        return pred[0], y, spread[0]

    def validate(self) -> Dict[str, float]:
        with self.averaged():
            pred, y, _ = self.predict(self.val_set)
        return dict(val_mae=float(np.abs(pred - y).mean()) * self.scale,
                    val_rmse=float(np.sqrt(((pred - y) ** 2).mean())) * self.scale)

    def fit(self, resume: Optional[Path] = None) -> Dict:
        """Train until ``epochs`` or early stopping; returns the summary. Writes checkpoint_{last,best}.pt."""
        cfg = self.cfg
        start_step = self.restore(resume) if resume else 0
        if not resume:
            self.dist.broadcast_state(self.model, self.optimizer)
        if self.dist.is_main and cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard logs")
        first_epoch = self.epoch
        try:
            self._loop(first_epoch, start_step)
        except StopTraining as stop:
            log.info("%s", stop)
            return dict(best_val_mae=self.best, best_epoch=self.best_epoch, epochs=self.epoch, history=self.history,
                        stopped=True)
        finally:
            if self._writer is not None:
                self._writer.close()
        return dict(best_val_mae=self.best, best_epoch=self.best_epoch, epochs=self.epoch, history=self.history,
                    stopped=False, budget_reached=self.budget_reached)

    def _fit_horizon(self, remaining_s: float, epoch_s: float) -> None:
        """With ``max_minutes``: the cosine schedule ends with the epochs that still fit (rank 0's estimate)."""
        if not self.cfg.max_minutes or self.cfg.schedule != "cosine":
            return
        fit = torch.tensor([float(self.epoch + max(0, int(remaining_s / max(epoch_s, 1e-9))))])
        if self.dist.size > 1:  # every rank follows rank 0's clock
            fit = self.dist.allreduce_sum(fit * float(self.dist.is_main))
        self.horizon = int(min(self.cfg.epochs, max(self.epoch + 1, float(fit[0]))))

    def _out_of_time(self, started: float, epochs_run: int) -> bool:
        """Whether another epoch would end past ``max_minutes`` (rank 0's clock decides for every rank)."""
        if not self.cfg.max_minutes:
            return False
        elapsed = time.perf_counter() - started
        over = elapsed + elapsed / max(epochs_run, 1) > 60.0 * self.cfg.max_minutes
        if self.dist.size > 1:
            over = float(self.dist.allreduce_sum(torch.tensor([float(over and self.dist.is_main)]))[0]) > 0
        return over

    def _loop(self, first_epoch: int, start_step: int) -> None:
        cfg = self.cfg
        started = last = time.perf_counter()
        while self.epoch < cfg.epochs:
            if cfg.stop_after_epochs and self.epoch - first_epoch >= cfg.stop_after_epochs:
                log.info("stopping after %d epochs of this process (resume to continue)", cfg.stop_after_epochs)
                break
            row = dict(epoch=self.epoch)
            row.update(self.train_epoch(start_step))
            start_step = 0
            if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs:
                row.update(self.validate())
                if self.plateau:
                    self.plateau.step(row["val_mae"])
            self.history.append(row)
            self.epoch += 1  # epochs completed: what a checkpoint resumes from
            if row.get("val_mae", math.inf) < self.best:
                self.best, self.best_epoch = row["val_mae"], row["epoch"]
                self.save("checkpoint_best.pt")
            self.save("checkpoint_last.pt")
            if self.dist.is_main:
                self._log_epoch(row)
            if cfg.patience and self.epoch - 1 - self.best_epoch >= cfg.patience:
                log.info("early stopping: no better validation MAE for %d epochs", cfg.patience)
                break
            now = time.perf_counter()
            self._fit_horizon(60.0 * cfg.max_minutes - (now - started), now - last)
            last = now
            if self._out_of_time(started, self.epoch - first_epoch):
                log.info("time budget: %.1f min reached after epoch %d; the best checkpoint is evaluated",
                         cfg.max_minutes, self.epoch - 1)
                self.budget_reached = True
                break

    def _log_epoch(self, row: Dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        log.info("epoch %d  loss %.4f  train MAE %.4f  val MAE %s  lr %.2e  %.0f samples/s", row["epoch"],
                 row["train_loss"], row["train_mae"], f"{row['val_mae']:.4f}" if "val_mae" in row else "-",
                 row["lr"], row["samples_per_s"])
        if self._writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._writer.add_scalar(k, v, row["epoch"])


class _EpochBatches:
    """A batch sampler whose global batches are set before each pass (the loader that iterates it persists):
    it yields this rank's part of each, split off by ``rows_of`` as the loader asks for it, and queues the rows
    in ``pending`` for the consumer (the loader keeps the sampler's order)."""

    def __init__(self):
        self.batches: List[np.ndarray] = []
        self.rows_of: Callable = None
        self.pending = collections.deque()

    def set(self, batches: Sequence[np.ndarray], rows_of: Callable) -> None:
        self.batches, self.rows_of = list(batches), rows_of
        self.pending.clear()

    def __iter__(self):
        for b in self.batches:
            rows = self.rows_of(b)
            self.pending.append(rows)
            yield np.asarray(b)[rows].tolist()

    def __len__(self) -> int:
        return len(self.batches)


def chunk_rows_of(rows: np.ndarray, chunk: int) -> List[np.ndarray]:
    """``rows`` in consecutive pieces of at most ``chunk`` (0: one piece): a step's micro-batches."""
    if chunk <= 0 or len(rows) <= chunk:
        return [rows]
    return [rows[i:i + chunk] for i in range(0, len(rows), chunk)]


def collate_chunks(collate: Callable, chunk: int, items: List) -> List:
    """The batches of ``items`` in the consecutive pieces :func:`chunk_rows_of` splits their rows into (0: one
    batch of all)."""
    return [collate([items[i] for i in piece]) for piece in chunk_rows_of(np.arange(len(items)), chunk)]


class InProcessBatches:
    """(rows, batch) for each global batch (an array of dataset positions) of ``dataset``: this rank's rows
    (``rows_of``) read and collated (``collate``, default the dataset's) in this process when iterated: what a
    DataLoader without workers does, without its per-batch machinery (0.4 ms of 0.8 per VoxelNet batch)."""

    def __init__(self, dataset, batches: Sequence[np.ndarray], rows_of: Callable, collate: Optional[Callable] = None):
        self.dataset, self.batches, self.rows_of = dataset, batches, rows_of
        self.collate = collate or dataset.collate

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        ds = self.dataset
        for b in self.batches:
            rows = self.rows_of(b)
            yield rows, self.collate([ds[i] for i in np.asarray(b)[rows]])


class Prefetch:
    """Iterate ``loader`` with up to ``depth`` batches read and collated ahead by a background thread, so that
    the step's data phase overlaps the previous step's compute (torch and numpy release the GIL). Exceptions
    reach the consumer; leaving the loop early (a stop, an error) ends the thread."""

    def __init__(self, loader, depth: int = 1):
        self.loader, self.depth = loader, max(1, int(depth))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        import queue
        import threading
        q: "queue.Queue" = queue.Queue(self.depth)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def work():
            try:
                for batch in self.loader:
                    if not put((batch, None)):
                        return
            except BaseException as exc:  # handed to the consumer, raised there
                put((None, exc))
                return
            put((done, None))

        thread = threading.Thread(target=work, name="cloudvox-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                batch, exc = q.get()
                if exc is not None:
                    raise exc
                if batch is done:
                    return
                yield batch
        finally:
            stop.set()
            thread.join()


class StepTimer:
    """Where a training step's time goes, per phase (``data``: waiting for the batch; ``forward``: to the
    device, binning, model and loss; ``backward`` (with DDP, also the wait for the gradients' allreduce, which
    the reducer overlaps with the backward); ``allreduce``: averaging the gradients when the backend does it
    after the backward (Horovod); ``optimizer``: clipping and the step; ``sync``: metrics, the
    progress bar and the ranks' stop agreement), as milliseconds per step. Costs two clock reads per phase.
    On a GPU, kernels run asynchronously: without ``exact`` a phase's time is the host's (the device's work
    shows up where the host next waits); with ``exact`` the device is synchronised at each mark."""
    PHASES = ("data", "forward", "backward", "allreduce", "optimizer", "sync")

    def __init__(self, device: torch.device, exact: bool = False):
        self.sync = exact and device.type == "cuda"
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0
        self.last = time.perf_counter()

    def mark(self, phase: str) -> float:
        """End ``phase`` now; its seconds."""
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        self.seconds[phase] += elapsed
        self.steps += phase == "data"
        return elapsed

    def per_step_ms(self) -> Dict[str, float]:
        return {f"step_ms_{k}": 1e3 * v / max(self.steps, 1) for k, v in self.seconds.items()}


class StopTraining(Exception):
    """Raised after a requested stop (SIGTERM/SIGUSR1) once the checkpoint is written."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"stopped at epoch {epoch} step {step}; checkpoint written")
        self.epoch, self.step = epoch, step
