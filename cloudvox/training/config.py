"""The ``train`` section of a run config: optimisation settings, their defaults and their choices (the one place;
:mod:`cloudvox.config` validates a config against them)."""
from dataclasses import dataclass, field


def choices(*values, default):
    """A config field with its allowed values (``metadata["choices"]``), checked when a config is loaded."""
    return field(default=default, metadata={"choices": values})


@dataclass
class TrainConfig:
    """Optimisation settings (the ``train`` section of a run's YAML)."""
    epochs: int = 50
    batch_size: int = 32  # global batch, over all ranks
    lr: float = 1e-3
    optimizer: str = choices("adam", "adamw", default="adamw")
    weight_decay: float = 0.0
    ema: float = 0.0  # > 0: validation, checkpoints and evaluation use an exponential moving average of the weights
    #                   with this decay per optimiser step (0.99-0.999; ramped up over the first steps), 0: off
    schedule: str = choices("cosine", "plateau", "none", default="cosine")
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    patience: int = 0  # early stopping on validation MAE (0: never)
    loss: str = choices("l1", "mse", "huber", "berhu", default="l1")  # berhu: L1 below half a target std, quadratic above
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
    lr_scaling: str = choices("none", "linear", "sqrt", default="none")  # scale lr with the number of ranks
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
    uncertainty: str = choices("validation", "folds", default="validation")  # how the uncertainty is calibrated:
    #                    on the validation split alone, or also on held-out chemistry: leave-chemistry-out folds of
    #                    the training data, small runs in RUN/fold-k (cloudvox.calibration), so that its growth off
    #                    the training set is fitted on extrapolation
    uncertainty_folds: int = 5  # folds (groups of element families) with uncertainty: folds
    uncertainty_epochs: int = 0  # epochs of each fold's run (0: half of epochs)
    members_over_ranks: bool = False  # an ensemble on several ranks (hpc.ensemble): member k alone on rank k % ranks
    #                    (no gradient exchange: K models in the time of K / ranks), instead of every member
    #                    data-parallel over all ranks; rank 0 then evaluates the ensemble
