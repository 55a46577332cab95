"""The training loop: one :class:`Trainer` for every cloudvox model (optimisation, schedules, early stopping,
checkpoints, resume).

The trainer is model-agnostic: a *task* turns a batch into (prediction, target) on the device, and a
*distributed* object (default :class:`~cloudvox.training.process.SingleProcess`; :mod:`hpc.distributed` provides
Horovod and DDP) shards the data and reduces gradients and metrics. The trainer never imports torch.distributed.
Its pieces live beside it: the config (:mod:`.config`), batches and loaders (:mod:`.loaders`), a step's
randomness and the prediction loop (:mod:`.step`), the losses, the moving average (:mod:`.ema`), checkpoints and
the step timer.

Determinism: the epoch's sample order comes from a generator seeded by (seed, epoch), augmentation from one
seeded by (seed, epoch, step), and the torch RNG state is saved in every checkpoint, so a run resumed from
a checkpoint continues exactly as the uninterrupted run would have (on CPU).
"""
import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..progress import Progress
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .ema import EMA
from .loaders import InProcessBatches, Prefetch, _EpochBatches, chunk_rows_of, collate_chunks, epoch_batches, shard_rows
from .losses import loss_fn
from .process import SingleProcess
from .step import predict_dataset, step_generator
from .timing import StepTimer

log = logging.getLogger(__name__)


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
        self.loss = loss_fn(cfg.loss)
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
        self.ema: Optional[EMA] = EMA(self.model, cfg.ema) if cfg.ema > 0 else None  # the weights evaluated

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
    def averaged(self):
        """Within: the model holds the averaged weights (no-op without ``ema``); the trained ones after."""
        return self.ema.averaged() if self.ema is not None else contextlib.nullcontext()

    # --- checkpoints -------------------------------------------------------------------------------------
    def state(self, step_in_epoch: int = 0) -> Dict:
        """The checkpoint: ``model`` holds the weights to evaluate (the average, with ``ema``), ``trained`` the
        optimiser's own weights that training resumes from (with ``ema`` only)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        extra = {}
        if self.ema is not None:
            extra = dict(trained={k: v.detach().clone() for k, v in self.model.state_dict().items()},
                         ema_steps=self.ema.steps)
        if self.ema is None:  # saved before the next step changes them: no copy needed
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
        if self.ema is not None:  # the average from "model", the weights to go on from "trained"
            self.ema.restart_from_model(int(ck.get("ema_steps", 0)))
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
        """One epoch (from ``start_step`` of it, after a resume mid-epoch): its metrics and step-time split."""
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
            done, compute = self._forward_backward(rows, chunks, step, len(batches[step]), timer)
            if self._rebalance:  # this rank's work and time to the allreduce: its speed, for the next shares
                self._window += (busy + compute, len(rows) if costs is None else float(costs[batches[step][rows]].sum()))
            self.dist.reduce_gradients(self.model, meanwhile=read_ahead)
            timer.mark("allreduce")
            self._optimizer_step()
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
        return self._epoch_metrics(sums, seen, timer, time.perf_counter() - t0)

    def _forward_backward(self, rows: np.ndarray, chunks: List[Dict], step: int, global_count: int,
                          timer: StepTimer) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], float]:
        """This rank's share of a global batch (``rows``, collated in micro-batch ``chunks``) forward and backward,
        its gradients summed over the chunks (DDP's reducer runs once, on the last): each chunk's (per-sample
        loss, prediction, target), and the seconds it took."""
        cfg = self.cfg
        done, busy = [], 0.0
        no_sync = getattr(self.model_for_step, "no_sync", contextlib.nullcontext)
        self.optimizer.zero_grad()
        for j, (chunk_rows, batch) in enumerate(zip(chunk_rows_of(rows, cfg.micro_batch), chunks)):
            # the same generator for every chunk: random draws are made for the global batch, then indexed
            gen = step_generator(cfg.seed, self.epoch, step)
            with no_sync() if j + 1 < len(chunks) else contextlib.nullcontext():
                with torch.autocast(self.device.type, enabled=self.amp):
                    pred, y = self.task.forward(self.model_for_step, batch, self.device, gen, True,
                                                rows=(chunk_rows, global_count))
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
        return done, busy

    def _optimizer_step(self) -> None:
        """Clip, step and average, after the gradients were reduced over the ranks."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # after the reduction: every rank sees the same inf/nan
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update()

    def _epoch_metrics(self, sums: torch.Tensor, seen: int, timer: StepTimer, wall: float) -> Dict[str, object]:
        """The epoch's loss, MAE and samples/s over all ranks, and the step-time split (every rank's, where
        several): one reduction."""
        # every rank's step split and sample count ride on the epoch's one reduction of the sums (rank r's row)
        splits = torch.zeros(self.dist.size, len(timer.PHASES) + 1, dtype=torch.float64)
        splits[self.dist.rank] = torch.tensor(list(timer.per_step_ms().values()) + [seen], dtype=torch.float64)
        reduced = self.dist.allreduce_sum(torch.cat([sums.cpu(), splits.reshape(-1)]))
        sums, splits = reduced[:3], reduced[3:].reshape(splits.shape)
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


class StopTraining(Exception):
    """Raised after a requested stop (SIGTERM/SIGUSR1) once the checkpoint is written."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"stopped at epoch {epoch} step {step}; checkpoint written")
        self.epoch, self.step = epoch, step
