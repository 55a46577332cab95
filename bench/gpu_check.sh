#!/usr/bin/env bash
# The GPU check, for a bare GPU node (no network, its own python3 with PyTorch/CUDA, e3nn, h5py, mpi4py, numpy,
# scipy, pyyaml, pytest; no pymatgen, no README set-up, no compiled CPU kernel): run from the repository root,
# with out/gpu/ and .whl/ carried along (bench/gpu_prepare.sh makes them here: QM9 clouds, the perovskite feature
# file and the vesin wheel; without the feature file the perovskites are featurized on the node from ../shared):
#   bash bench/gpu_check.sh                # about 3-6 minutes on one H100/H200
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh   # the same script on a CPU, quickly (to check the script)
# Prints JSON lines: the environment, the CUDA test results, and for VoxelNet (original network, N=32, per-element
# channels of the AFLOW perovskites, rotation augmentation binned on the device) and AtomCloudNet
# (jobs/configs/atomcloud_qm9.yaml network, 20,000 QM9 molecules) at batch 32 and 256 in float32, and at batch
# 256 with AMP (float16 autocast, gradient scaler): samples/s, the step split (data, forward, backward, optimizer,
# sync; ms/step), an operator profile and the peak GPU memory. Goals: >= 10,000 and >= 5,000 samples/s on one H100.
# Each stage has its own time limit (about 8 minutes in all); where $OUT is set (the device tool), the logs are
# copied there.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SHARED=${CLOUDVOX_SHARED_DATA:-../shared/data}
DEST=${OUT:-}  # the device tool's folder for files to bring back, where set
OUT=out/gpu
WORKERS=${WORKERS:-12}
STEPS=40; EPOCHS=3; [ "${QUICK:-0}" = 1 ] && STEPS=3 && EPOCHS=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HDF5_USE_FILE_LOCKING=FALSE OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
mkdir -p "$OUT"
# Python packages the node lacks (vesin, the neighbour lists), as wheels that gpu_prepare.sh downloaded into .whl/
if ! "$PY" -c "import vesin" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cloudvox-site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/cloudvox-site
fi
json() { echo "{\"bench\": \"gpu_check\", $1}"; }
t0=$SECONDS

"$PY" - <<'PY'
import json, platform, torch
info = dict(bench="gpu_check", metric="environment", torch=torch.__version__, cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(), python=platform.python_version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}")
print(json.dumps(info), flush=True)
PY

# 1. the device tests (CUDA variants are collected where CUDA is present); the compiled-kernel test is CPU-only
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/cloudvox/models/test_devices.py tests/cloudvox/models/test_voxelnet.py \
  --deselect tests/cloudvox/models/test_voxelnet.py::test_native_kernel_is_built \
  --deselect tests/cloudvox/models/test_voxelnet.py::test_native_kernel_refuses_indices_it_would_write_out_of_bounds_with \
  > "$OUT/pytest.log" 2>&1
rc=$?
json "\"metric\": \"tests\", \"value\": \"$(tail -n 1 "$OUT/pytest.log" | tr -d '"=')\", \"exit\": $rc"
[ $rc = 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -n 20

# 2. inputs: the perovskites featurized here from ../shared (reciprocal sets for the rotation augmentation)
if [ ! -f "$OUT/perovskites.h5" ]; then  # in-process, one rank: no MPI runtime needed on the node
  SHARED="$SHARED" OUT="$OUT" timeout 300 "$PY" - > "$OUT/featurize.log" 2>&1 <<'PY' || { json "\"metric\": \"featurize\", \"value\": \"failed\""; tail -n 20 "$OUT/featurize.log"; }
import os
from cloudvox.config import read_yaml
from hpc.comm import SerialComm
from hpc.featurize import FeaturizeJob, run_featurize
raw = read_yaml("jobs/configs/perovskites.yaml")
raw.update(input=[os.path.join(os.environ["SHARED"], "aflow", "oxide_perovskites_cP5.jsonl")],
           output=os.path.join(os.environ["OUT"], "perovskites.h5"), block_size=128)
print(run_featurize(FeaturizeJob.from_config(raw), SerialComm())["structures"], "structures")
PY
fi
[ -f "$OUT/qm9_cloud.h5" ] || json "\"metric\": \"qm9_input\", \"value\": \"missing: run bench/gpu_prepare.sh where qm9pack is installed and carry out/gpu/qm9_cloud.h5\""

# 3. throughput of the real pipeline (loader -> device binning -> model -> optimiser), batch 32 and 256
common=(--device "$DEVICE" --steps "$STEPS" --epochs "$EPOCHS" --workers "$WORKERS")
throughput() {  # MODEL DATA LIMIT_S ARGS...: one model's runs, its log kept, its tail shown if it fails
  local model=$1 data=$2 limit=$3; shift 3
  [ -f "$data" ] || return 0
  timeout "$limit" "$PY" bench/train_throughput.py --model "$model" --data "$data" "${common[@]}" "$@" \
    2>> "$OUT/$model.log" || { json "\"metric\": \"$model\", \"value\": \"failed or timed out\""; tail -n 20 "$OUT/$model.log"; }
}
throughput voxelnet "$OUT/perovskites.h5" 100 --batch-size 32 256 --profile 12  # first layer: auto (grouped on CUDA)
throughput voxelnet "$OUT/perovskites.h5" 50 --batch-size 256 --set network.first_layer=scatter
throughput atomcloud "$OUT/qm9_cloud.h5" 100 --batch-size 32 256 --profile 12
if [ "$DEVICE" = cuda ]; then  # mixed precision (the trainer's float16 autocast), batch 256
  throughput voxelnet "$OUT/perovskites.h5" 50 --batch-size 256 --amp
  throughput atomcloud "$OUT/qm9_cloud.h5" 50 --batch-size 256 --amp
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null || true
fi
json "\"metric\": \"wall\", \"value\": $((SECONDS - t0)), \"unit\": \"s\""
[ -n "$DEST" ] && cp "$OUT"/*.log "$DEST"/ 2>/dev/null
true
