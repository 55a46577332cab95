"""Fault injection for the job-script tests (on PYTHONPATH only there; production code has no hooks).

CLOUDVOX_INJECT, read at interpreter start-up in a SLURM step's task:
  raise  the task whose SLURM_PROCID is CLOUDVOX_INJECT_RANK (default 1) raises in its first featurize block;
  kill   that task dies of SIGKILL there, as under the kernel's OOM killer;
  slow   every task sleeps CLOUDVOX_INJECT_DELAY seconds (default 0.25) before each featurize block, so that a
         signal sent after the first blocks surely lands before the last one.
"""
import os
import signal
import time

_mode = os.environ.get("CLOUDVOX_INJECT")
if _mode and "SLURM_STEP_ID" in os.environ and (
        _mode == "slow" or os.environ.get("SLURM_PROCID") == os.environ.get("CLOUDVOX_INJECT_RANK", "1")):
    import cloudvox.featurefile as _features

    _original = _features.featurize_block

    def _injected_block(*args, **kwargs):
        if _mode == "slow":
            time.sleep(float(os.environ.get("CLOUDVOX_INJECT_DELAY", "0.25")))
            return _original(*args, **kwargs)
        if _mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault on rank {os.environ['SLURM_PROCID']}")

    _features.featurize_block = _injected_block
