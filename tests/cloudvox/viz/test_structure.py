"""cloudvox show: every panel renders headless for a crystal and a molecule; clear errors; tutorial figures."""
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.viz.structure import PANELS, figure, save
from cloudvox.structure import Structure

ROOT = Path(__file__).resolve().parents[3]
CLI = str(Path(sys.executable).parent / "cloudvox")


def crystal():
    return Structure(["Sr", "Ti", "O", "O", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                     np.eye(3) * 3.9, id="SrTiO3")


def molecule():
    return Structure.molecule([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], ["O", "H", "H"], id="water")


def png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size, np.asarray(im.convert("L"))


@pytest.mark.parametrize("make", [crystal, molecule])
@pytest.mark.parametrize("panel", PANELS)
def test_each_panel_renders_to_a_non_empty_png(tmp_path, make, panel):
    assert matplotlib.get_backend().lower() == "agg" or os.environ.get("DISPLAY") is None
    out = tmp_path / f"{panel}.png"
    save(figure(make(), ReciprocalVoxelizer(n=12, length=8.0), [panel]), out)
    (w, h), gray = png_size(out)
    assert w >= 300 and h >= 250
    assert gray.std() > 5  # something was drawn, not a blank canvas


def test_cli_errors_and_selection(tmp_path, osrti_path):
    ok = subprocess.run([CLI, "show", str(osrti_path), "--id", "aflow:a398a1911df830b6", "--n", "12",
                         "--panel", "voxels", "--out", str(tmp_path / "a.png")], capture_output=True, text=True)
    assert ok.returncode == 0 and "O3SrTi" in ok.stdout and (tmp_path / "a.png").stat().st_size > 1000
    bad = subprocess.run([CLI, "show", str(osrti_path), "--index", "500", "--out", str(tmp_path / "b.png")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "index 500 out of range" in bad.stderr and "135 structures" in bad.stderr
    unknown = subprocess.run([CLI, "show", str(osrti_path), "--id", "aflow:nope", "--out", str(tmp_path / "c.png")],
                             capture_output=True, text=True)
    assert unknown.returncode != 0 and "no structure with id 'aflow:nope'" in unknown.stderr
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_feature_file_input(tmp_path, osrti_path):
    from tests.cloudvox.test_runs import make_file
    h5 = make_file(tmp_path / "f.h5", osrti_path, 5, n=12, length=8.0)
    proc = subprocess.run([CLI, "show", str(h5), "--index", "2", "--out", str(tmp_path / "f.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"n": 12' in proc.stdout  # the file's descriptor parameters are the default


@pytest.mark.slow
def test_tutorial_figures_are_generated_and_referenced(tmp_path, osrti_path):
    env = dict(os.environ, FAST="1", CLOUDVOX=CLI)
    subprocess.run(["bash", str(ROOT / "docs" / "make_figures.sh"), str(tmp_path)], check=True, env=env,
                   capture_output=True, timeout=600)
    referenced = set(re.findall(r"figures/([\w.-]+\.png)", (ROOT / "docs" / "tutorial.md").read_text()))
    made = {p.name for p in tmp_path.glob("*.png")}
    assert referenced and referenced <= made, referenced - made
    assert referenced <= {p.name for p in (ROOT / "docs" / "figures").glob("*.png")}  # committed too
