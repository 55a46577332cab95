#!/usr/bin/env bash
# The main job on the embedded default data (no network): the 288 AFLOW prototypes shipped with pymatgen
# and a QM9 sample from the qm9pack package, featurized under mpirun -n 2 into HDF5 feature files in out/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
RANKS=${RANKS:-2}
mkdir -p out
echo "== featurize the AFLOW prototype library (mpirun -n $RANKS)"
mpirun -n "$RANKS" cloudvox featurize --config jobs/configs/prototypes.yaml --overwrite > out/prototypes.summary.json
echo "== featurize a QM9 sample (mpirun -n $RANKS)"
mpirun -n "$RANKS" cloudvox featurize --config jobs/configs/qm9_sample.yaml --overwrite > out/qm9_sample.summary.json
echo "== produced"
cloudvox info out/prototypes.h5
cloudvox info out/qm9_sample.h5
DATA=${CLOUDVOX_SHARED_DATA:-$ROOT/../shared/data}
if [ -f "$DATA/aflow/oxide_perovskites_cP5.jsonl" ]; then
  echo "== featurize 800 AFLOW perovskites and train VoxelNet briefly (mpirun -n $RANKS, Horovod)"
  mpirun -n "$RANKS" cloudvox featurize --config jobs/configs/perovskites_demo.yaml \
      --input "$DATA/aflow/oxide_perovskites_cP5.jsonl" --overwrite > out/perovskites_demo.summary.json
  mpirun -n "$RANKS" cloudvox train voxelnet jobs/configs/voxelnet_demo.yaml --backend auto > out/voxelnet_demo.summary.json
  .venv/bin/python - <<'PY'
import json
s = json.load(open("out/voxelnet_demo.summary.json"))
m = s["metrics"]
print(f"VoxelNet ({s['epochs']} epochs, runs/voxelnet_demo): test MAE {m['test']['mae']:.3f} {s.get('unit', 'eV/atom')} "
      f"on {m['test']['n']} test structures (val {m['val']['mae']:.3f}, train {m['train']['mae']:.3f})")
PY
else
  echo "== no shared AFLOW data at $DATA: skipping the VoxelNet demo training"
fi
