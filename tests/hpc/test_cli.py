"""The command line as a user meets it: a bad invocation or config is one line on stderr and exit status 2;
-v adds the traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "cloudvox")


def run(*args, cwd=None):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["featurize", "--n", "many"], "argument --n: invalid int value: 'many'"),
    (["featurize", "--input", "x.jsonl"], "featurize needs an output file and an input format"),
    (["featurize", "--config", "absent.yaml"], "config file absent.yaml does not exist"),
    (["featurize", "--format", "aflow", "--output", "o.h5", "--input", "absent.jsonl"], "input absent.jsonl does not exist"),
    (["train", "voxnet", "c.yaml"], "unknown model 'voxnet': did you mean 'voxelnet'?"),
    (["train", "voxelnet", "{root}/jobs/configs/voxelnet_cross.yaml", "--set", "train.lrr=1"],
     "unknown key 'train.lrr': did you mean 'lr'?"),
    (["evaluate", "no_run", "no.h5"], "no_run"),
])
def test_user_errors_are_one_line_with_exit_status_2(tmp_path, args, message):
    root = Path(__file__).resolve().parents[2]
    proc = run(*[a.format(root=root) for a in args], cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if "INFO" not in line]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_verbose_shows_the_traceback(tmp_path):
    proc = run("featurize", "--config", "absent.yaml", "-v", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "absent.yaml does not exist" in proc.stderr
