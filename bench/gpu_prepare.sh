#!/usr/bin/env bash
# Run HERE (with the README set-up) before bench/gpu_check.sh: makes the one input the bare GPU node cannot
# make itself, 20,000 QM9 molecules as point clouds (qm9pack is not installed there), ~20 MB:
#   out/gpu/qm9_cloud.h5        (carry it with the tree: it is git-ignored)
# The perovskites for VoxelNet are featurized on the node from ../shared, which travels with the tree.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/env.sh
mkdir -p out/gpu
mpirun -n 2 .venv/bin/cloudvox featurize --format qm9 --limit 20000 --store cloud --block-size 2000 \
  --species C F H N O --output out/gpu/qm9_cloud.h5 --overwrite > /dev/null
ls -la out/gpu/qm9_cloud.h5
