"""MACE on our perovskite split, with the same wall-clock budget: the peer our models must beat (issue 19).

Makes its own virtual environment (``out/peers/mace-venv``: mace-torch 0.3.16 pins e3nn 0.4.4, which cloudvox's
environment cannot share; torch pinned by requirements/constraints.txt), writes the train/val/test structures
of a cloudvox run's split (``--split-run``, default: the compound-grouped 80/10/10 split, seed 0, of
jobs/configs/voxelnet_cross.yaml, made here if absent) as extended XYZ with total energies
(``enthalpy_atom`` x atoms, eV) and zero forces, and trains MACE with its documented small-data settings: 64
channels, max_L 0, r_max 5 A, E0s by least squares over the training set ("average"), the weighted loss with forces weight 0
(mace-torch 0.3.16 has no energy-only loss; the zero forces make the force term finite), EMA, AMSGrad, float32
with denormals flushed (they slowed its epochs 3x on CPU). The epoch count fills ``--budget`` seconds: a
two-epoch pilot measures an epoch (between its log's epoch lines) and the set-up around them. Nothing is tuned against the test set: the checkpoint is the one with the best
validation loss (MACE's own choice). Prints test and validation MAE (eV/atom; over the structures whose elements
MACE saw in training, the others listed by id: compare ours on the same ids), epochs, wall time and training
samples/s as JSON lines, also kept in out/peers/mace/results.jsonl for ``bench/peers/compare.py``, which trains
ours with the same budget (``train.max_minutes``) and prints the table.
Usage: python bench/peers/mace_perovskites.py [--budget 3600] [--threads 1] [--limit N (a quick check)]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, emit as _emit, shared_dir  # noqa: E402

VENV = ROOT / "out" / "peers" / "mace-venv"
MACE = "mace-torch==0.3.16"

EVAL = r'''
import json, sys
import numpy as np, torch
from ase.io import read
torch.set_flush_denormal(True)
from mace.calculators import MACECalculator
calc = MACECalculator(model_paths=sys.argv[1], device="cpu", default_dtype="float32")  # the model just trained
known = {int(z) for z in calc.z_table.zs}
out = {}
for name in sys.argv[2:]:
    errs, skipped = [], []
    for atoms in read(name, ":"):
        if not set(atoms.numbers.tolist()) <= known:  # an element absent from training: MACE has no embedding
            skipped.append(atoms.info.get("sid", ""))
            continue
        ref = atoms.info["REF_energy"] / len(atoms)
        atoms.calc = calc
        errs.append(abs(atoms.get_potential_energy() / len(atoms) - ref))
    out[name] = dict(mae=float(np.mean(errs)), n=len(errs), skipped=skipped)
print(json.dumps(out))
'''


RESULTS = ROOT / "out" / "peers" / "mace" / "results.jsonl"  # read by bench/peers/compare.py


def emit(*args, **kw):
    """A JSON line on stdout, also kept in RESULTS."""
    with open(RESULTS, "a") as fh:
        fh.write(_emit(*args, **kw) + "\n")


def venv_python() -> Path:
    py = VENV / "bin" / "python"
    if not (py.exists() and subprocess.run([str(py), "-c", "import mace"], capture_output=True).returncode == 0):
        print(f"making {VENV} with {MACE} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "requirements" / "constraints.txt"),
                        MACE], check=True)
    return py


def split_run(path: str) -> Path:
    """A run directory holding split_{train,val,test}.txt: the given one, or the cross-spectrum VoxelNet's."""
    run = ROOT / path
    if not (run / "split_test.txt").exists():
        from cloudvox.config import load_run_config
        from cloudvox.runs import prepare
        sys.path.insert(0, str(ROOT / "bench"))
        from common import features
        # the split depends only on the usable ids, their compounds and the seed: any featurization of every
        # shared perovskite gives the split of jobs/configs/voxelnet_cross.yaml (the N=16 one is quicker)
        cfg = load_run_config(str(ROOT / "jobs" / "configs" / "voxelnet_cross.yaml"),
                              [f"data.path={features('bench/configs/perovskites_16_all.yaml')}"])
        run.mkdir(parents=True, exist_ok=True)
        prepare(cfg, run, reuse_splits=False)
    return run


def write_xyz(run: Path, out: Path, limit: int):
    from ase import Atoms
    from ase.io import write
    import numpy as np
    from cloudvox.io import read_aflow
    src = shared_dir() / "data" / "aflow" / "oxide_perovskites_cP5.jsonl"
    by_id = {s.id: s for s in read_aflow(src)}
    files = {}
    for name in ("train", "val", "test"):
        ids = (run / f"split_{name}.txt").read_text().split()[:limit or None]
        frames = []
        for sid in ids:
            s = by_id[sid]
            a = Atoms(numbers=s.numbers, positions=s.cart_coords, cell=s.lattice, pbc=True)
            a.info["REF_energy"] = float(s.props["enthalpy_atom"]) * len(a)
            a.arrays["REF_forces"] = np.zeros((len(a), 3))
            a.info["sid"] = sid
            frames.append(a)
        files[name] = out / f"{name}.xyz"
        write(files[name], frames, format="extxyz")
    return files


def train(py: Path, files, out: Path, epochs: int, threads: int, tag: str) -> float:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [str(py), "-c", "import torch, sys; torch.set_flush_denormal(True); "
           "from mace.cli.run_train import main; sys.argv = ['mace_run_train'] + sys.argv[1:]; main()",
           f"--name={tag}", f"--train_file={files['train']}", f"--valid_file={files['val']}",
           "--energy_key=REF_energy", "--forces_key=REF_forces", "--E0s=average", "--model=MACE",
           "--num_channels=64", "--max_L=0", "--r_max=5.0", "--loss=weighted", "--energy_weight=1.0",
           "--forces_weight=0.0", "--batch_size=16", "--valid_batch_size=32", f"--max_num_epochs={epochs}",
           "--ema", "--ema_decay=0.99", "--amsgrad", "--lr=0.01", "--default_dtype=float32", "--device=cpu",
           "--seed=0", "--eval_interval=1", f"--work_dir={out}", "--error_table=PerAtomMAE"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"mace_run_train failed in {out}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def epoch_seconds(run: Path) -> float:
    """Seconds between the first two "Epoch N:" lines of a mace_run_train log (one epoch with its validation)."""
    from datetime import datetime
    for log in sorted(run.rglob("*.log")):  # NAME_run-0.log (the _debug.log beside it repeats the lines)
        stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f") for line in log.read_text().splitlines()
                  if " INFO: Epoch " in line]
        if len(stamps) >= 2:
            return (stamps[1] - stamps[0]).total_seconds()
    raise SystemExit(f"the pilot in {run} logged fewer than 2 epochs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=3600.0, help="wall-clock seconds of training")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split-run", default="out/peers/split", help="a run directory with split_*.txt (made if absent)")
    ap.add_argument("--limit", type=int, default=0, help="first N structures of each split (a quick check)")
    args = ap.parse_args()
    py = venv_python()
    out = ROOT / "out" / "peers" / "mace"
    out.mkdir(parents=True, exist_ok=True)
    RESULTS.unlink(missing_ok=True)
    files = write_xyz(split_run(args.split_run), out, args.limit)
    n_train = sum(1 for line in open(files["train"]) if line.strip().isdigit())
    pilot = train(py, files, out / "pilot", 2, args.threads, "pilot")  # two epochs, with set-up and evaluation
    epoch_s = epoch_seconds(out / "pilot")
    epochs = max(1, int((args.budget - max(0.0, pilot - 2 * epoch_s)) // epoch_s))  # the budget less the set-up
    wall = train(py, files, out / "run", epochs, args.threads, "mace")
    model = next((out / "run").rglob("mace.model"))
    mae = json.loads(subprocess.run([str(py), "-c", EVAL, str(model), str(files["val"]), str(files["test"])],
                                    check=True, capture_output=True, text=True, cwd=out).stdout.splitlines()[-1])
    common = dict(model="MACE (mace-torch 0.3.16, 64x0e, r_max 5)", epochs=epochs, threads=args.threads,
                  n_train=n_train, budget_s=args.budget)
    for split in ("test", "val"):  # over the structures MACE can represent; the others are listed (write_xyz ids)
        r = mae[str(files[split])]
        emit("peers_mace", f"{split}_mae", r["mae"], "eV/atom", n=r["n"], not_predicted=r["skipped"], **common)
    emit("peers_mace", "wall_time", wall, "s", **common)
    emit("peers_mace", "train_samples_per_s", n_train * epochs / wall, "samples/s", **common)


if __name__ == "__main__":
    main()
