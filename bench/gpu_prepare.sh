#!/usr/bin/env bash
# Run HERE (with the README set-up) before bench/gpu_check.sh: makes the inputs a bare GPU node cannot make
# itself (no qm9pack there, and ../shared beside the clone does not travel with the tree), ~23 MB together:
#   out/gpu/qm9_cloud.h5        20,000 QM9 molecules as point clouds (14 MB)
#   out/gpu/perovskites.h5      the 3957 shared AFLOW perovskites, reciprocal sets + clouds (9 MB; needs ../shared)
# Carry out/gpu with the tree (it is git-ignored). Without ../shared here, gpu_check.sh featurizes the
# perovskites on the node from the shared folder there, if it finds one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/env.sh
mkdir -p out/gpu
mpirun -n 2 .venv/bin/cloudvox featurize --format qm9 --limit 20000 --store cloud --block-size 2000 \
  --species C F H N O --output out/gpu/qm9_cloud.h5 --overwrite > /dev/null
SHARED=${CLOUDVOX_SHARED_DATA:-../shared/data}
if [ -f "$SHARED/aflow/oxide_perovskites_cP5.jsonl" ]; then
  mpirun -n 2 .venv/bin/cloudvox featurize --config jobs/configs/perovskites.yaml --store reciprocal cloud \
    --input "$SHARED/aflow/oxide_perovskites_cP5.jsonl" --output out/gpu/perovskites.h5 --overwrite > /dev/null
fi
ls -la out/gpu/*.h5
