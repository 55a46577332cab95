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


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """cloudvox's own error types (a bad config, file or data) exit 2 with one line; any other exception,
    a plain ValueError from numpy included, is a bug: its traceback, one line saying so, exit 1."""
    import hpc.cli as cli
    import hpc.cli.info
    from cloudvox.errors import DataError

    def fails_with(exc):
        def cmd(args, command):
            raise exc
        return cmd
    monkeypatch.setattr(hpc.cli.info, "cmd_info", fails_with(DataError("structure 3 (x) failed featurization; see /failures")))
    assert cli.main(["info", "some.h5"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["cloudvox info: structure 3 (x) failed featurization; see /failures "
                                        "(-v shows the traceback)"]
    monkeypatch.setattr(hpc.cli.info, "cmd_info", fails_with(ValueError("operands could not be broadcast together")))
    assert cli.main(["info", "some.h5"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: operands could not be broadcast" in err
    assert err.strip().splitlines()[-1].startswith("cloudvox info: internal error (ValueError), a bug in cloudvox")


def test_every_error_cloudvox_raises_for_the_user_is_a_user_error():
    from cloudvox.config import ConfigError
    from cloudvox.elements import UnknownElementError
    from cloudvox.errors import DataError, FormatError, UserError
    from cloudvox.io.aflux_client import FetchError
    from cloudvox.io.records import InputError
    from cloudvox.structure import StructureError
    from hpc.featurize import JobError
    for kind in (ConfigError, DataError, FormatError, InputError, StructureError, UnknownElementError, FetchError,
                 JobError):
        assert issubclass(kind, UserError), kind
    assert not issubclass(ValueError, UserError)
