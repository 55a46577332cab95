"""The README's quickstart, run as written (its cloudvox lines, in a fresh folder beside the checkout's jobs/ and
tests/): featurize own structures (extxyz via ASE), train a few epochs, predict CIF, POSCAR and extxyz files."""
import csv
import io
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.startswith("cloudvox ")]


@pytest.mark.slow
def test_the_readme_quickstart_runs_end_to_end(tmp_path):
    commands = quickstart_commands()
    assert [c[1] for c in commands] == ["featurize", "info", "train", "predict"]
    for name in ("jobs", "tests"):
        os.symlink(ROOT / name, tmp_path / name)
    env = dict(os.environ, OMP_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
    outputs = {}
    for cmd in commands:
        args = cmd[1:] + (["--set", "train.epochs=3"] if cmd[1] == "train" else [])  # a few epochs here
        proc = subprocess.run([str(BIN / "cloudvox"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
        outputs[cmd[1]] = proc.stdout
    assert "240 structures" in outputs["info"] and "enthalpy_atom" in outputs["info"]
    assert (tmp_path / "runs" / "quickstart" / "checkpoint_best.pt").is_file()
    rows = list(csv.DictReader(io.StringIO(outputs["predict"])))
    assert [r["formula"] for r in rows] == ["O3PbRh", "O3PbTc", "O3PbTi"]  # CIF, POSCAR, extxyz
    assert rows[2]["id"] == "aflow:3b97ae34b7e6d862"  # the extxyz frame's info id
    values = [float(r["prediction"]) for r in rows]
    assert all(math.isfinite(v) and -12 < v < 0 for v in values), values  # eV/atom, formation-like range


@pytest.mark.parametrize("args, message", [
    (["predict", "runs/none", "tests/data/structures/new/O3Pb1Rh1.cif"], "runs/none"),
])
def test_quickstart_mistakes_are_one_line(tmp_path, args, message):
    os.symlink(ROOT / "tests", tmp_path / "tests")
    proc = subprocess.run([str(BIN / "cloudvox"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
