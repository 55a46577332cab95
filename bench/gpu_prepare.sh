#!/usr/bin/env bash
# Run HERE (with the README set-up) before bench/gpu_check.sh: makes the inputs a bare GPU node cannot make
# itself (no qm9pack there, and ../shared beside the clone does not travel with the tree), ~23 MB together:
#   out/gpu/qm9_cloud.h5        20,000 QM9 molecules as point clouds (14 MB)
#   out/gpu/perovskites.h5      the 3957 shared AFLOW perovskites, reciprocal sets + clouds (9 MB; needs ../shared)
#   .whl/vesin-*.whl            the neighbour-list package, which the node's Python lacks
# Carry out/gpu and .whl with the tree (both are git-ignored). Without ../shared here, gpu_check.sh featurizes the
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
# the one package the node lacks (vesin: neighbour lists), as a wheel for its Python 3.12 (gpu_check installs it)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "vesin==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("vesin"))')"
ls -la out/gpu/*.h5 .whl/*.whl
