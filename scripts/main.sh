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
