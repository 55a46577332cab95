#!/usr/bin/env bash
# The main job, on data that ships with the packages only (nothing from ../shared, no network): featurize
# pymatgen's 288 AFLOW prototypes and 3000 QM9 molecules (qm9pack) under mpirun, then train AtomCloudNet and
# VoxelNet briefly on the molecules (U at 298 K, kcal/mol) under mpirun and print their test MAE. Where the
# shared AFLOW data sits beside the project it also trains the perovskite VoxelNet demo. About 3 minutes
# after the set-up on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
RANKS=${RANKS:-2}
mkdir -p out
say() { echo "== $*"; }
mae() {  # mae SUMMARY.json NAME: one line with the test MAE of a training summary
  .venv/bin/python - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m, unit = s["metrics"], s.get("unit", "")
print(f"{sys.argv[2]}: test MAE {m['test']['mae']:.3f} {unit} on {m['test']['n']} test structures "
      f"(val {m['val']['mae']:.3f}, train {m['train']['mae']:.3f}; {s['epochs']} epochs)")
PY
}

say "featurize the AFLOW prototype library (pymatgen, 288 structure types; mpirun -n $RANKS)"
mpirun -n "$RANKS" cloudvox featurize --config jobs/configs/prototypes.yaml --overwrite > out/prototypes.summary.json
cloudvox info out/prototypes.h5 | head -4

say "featurize 3000 QM9 molecules (qm9pack; mpirun -n $RANKS)"
mpirun -n "$RANKS" cloudvox featurize --config jobs/configs/qm9_demo.yaml --overwrite > out/qm9_demo.summary.json
cloudvox info out/qm9_demo.h5 | head -4

say "train AtomCloudNet on them (U at 298 K; mpirun -n $RANKS)"
mpirun -n "$RANKS" cloudvox train atomcloud jobs/configs/atomcloud_qm9_demo.yaml > out/atomcloud_qm9_demo.summary.json
say "train VoxelNet on them (same split; mpirun -n $RANKS)"
mpirun -n "$RANKS" cloudvox train voxelnet jobs/configs/voxelnet_qm9_demo.yaml > out/voxelnet_qm9_demo.summary.json

DATA=${CLOUDVOX_SHARED_DATA:-$ROOT/../shared/data}
if [ -f "$DATA/aflow/oxide_perovskites_cP5.jsonl" ]; then
  say "shared AFLOW data found at $DATA: featurize 800 perovskites and train the VoxelNet crystal demo"
  mpirun -n "$RANKS" cloudvox featurize --config jobs/configs/perovskites_demo.yaml \
      --input "$DATA/aflow/oxide_perovskites_cP5.jsonl" --overwrite > out/perovskites_demo.summary.json
  mpirun -n "$RANKS" cloudvox train voxelnet jobs/configs/voxelnet_demo.yaml > out/voxelnet_demo.summary.json
fi

say "results"
mae out/atomcloud_qm9_demo.summary.json "AtomCloudNet, QM9 U (runs/atomcloud_qm9_demo)"
mae out/voxelnet_qm9_demo.summary.json "VoxelNet, QM9 U (runs/voxelnet_qm9_demo)"
[ -f out/voxelnet_demo.summary.json ] && mae out/voxelnet_demo.summary.json "VoxelNet, AFLOW perovskites enthalpy_atom (runs/voxelnet_demo)"
cat <<TXT
== made
  out/prototypes.h5, out/qm9_demo.h5           feature files (cloudvox info FILE; cloudvox show FILE --out fig.png)
  runs/atomcloud_qm9_demo/, runs/voxelnet_qm9_demo/
      checkpoint_best.pt, metrics.jsonl, learning_curve.png, parity_test.png, predictions.csv, evaluation.json
== next
  your own structures: the README's quickstart (extxyz / CIF / POSCAR -> features -> model -> cloudvox predict)
  the full QM9 model:  mpirun -n 2 cloudvox featurize --config jobs/configs/qm9.yaml
                       cloudvox train atomcloud jobs/configs/atomcloud_qm9.yaml
  on a cluster:        sbatch jobs/featurize.slurm CONFIG.yaml   (README, "On a cluster")
TXT
