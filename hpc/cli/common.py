"""What every command shares: the logger, the stop signals, the launch line."""
import logging

log = logging.getLogger("cloudvox")


def on_stop_signals(callback) -> None:
    """SIGUSR1 (SLURM's time-limit warning, forwarded to every task by jobs/common.sh) and SIGTERM (scancel,
    the time limit itself): ``callback()``, and the job stops at its next safe point instead of dying."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: callback())


def log_launch() -> None:
    from ..launcher import describe, launch_env
    log.info("%s", describe(launch_env()))
