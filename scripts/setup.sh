#!/usr/bin/env bash
# Idempotent set-up of the full cloudvox stack on a fresh Debian machine:
#   system packages (apt-get; SLURM's daemons and clients for the job-script tests), a virtual environment .venv in the repo root, the Python stack
#   (torch pinned by requirements/constraints.txt in every pip call), h5py built against parallel HDF5,
#   and Horovod built from its sdist with the C++17 patch.  A second run skips what is done.
# Variables: CLOUDVOX_SKIP_HOROVOD=1 skips the Horovod build; PYTHON picks the interpreter (default python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
LOGS="$ROOT/.venv-logs"
log() { echo "[setup] $*" >&2; }
# step NAME MESSAGE CMD...: one progress line; the command's whole output goes to .venv-logs/NAME.log and is
# shown (its last 60 lines) only when the command fails
step() {
  local name=$1 msg=$2 t0=$SECONDS
  shift 2
  mkdir -p "$LOGS"
  log "$msg"
  if ! "$@" > "$LOGS/$name.log" 2>&1; then
    echo "[setup] FAILED: $msg; the end of $LOGS/$name.log:" >&2
    tail -n 60 "$LOGS/$name.log" >&2
    exit 1
  fi
  log "  done in $((SECONDS - t0)) s"
}
pip_c() { "$PY" -m pip install --quiet -c "$CONSTRAINTS" "$@"; }

# 1. system packages -------------------------------------------------------------------------------
# slurm-wlm: slurmctld + slurmd for the job-script tests (a local cluster the tests start and stop; no service)
APT_PKGS=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-openmpi-dev slurm-wlm)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  step apt "apt-get install ${missing[*]}" bash -c "$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    $SUDO apt-get install -y -qq --no-install-recommends ${missing[*]}"
fi

# 2. virtual environment ---------------------------------------------------------------------------
if [ ! -x "$PY" ]; then
  step venv "creating $VENV" "${PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$PY" -c 'import setuptools, sys; v=int(setuptools.__version__.split(".")[0]); sys.exit(v < 77)' 2>/dev/null; then
  step pip "upgrading pip, setuptools, wheel" pip_c -U pip "setuptools>=77" wheel
fi

# 3. Python stack ----------------------------------------------------------------------------------
stamp="$VENV/.cloudvox-base-$(cat requirements/base.txt "$CONSTRAINTS" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  step base "pip install requirements/base.txt (torch pinned)" pip_c -r requirements/base.txt
  touch "$stamp"
fi

# 4. h5py with MPI (parallel HDF5) -----------------------------------------------------------------
if ! "$PY" -c 'import sys, h5py; sys.exit(not h5py.get_config().mpi)' 2>/dev/null; then
  build_h5py() {
    # (called from a condition, where set -e does not apply: every command is chained)
    { "$PY" -m pip uninstall -y -q h5py || true; } &&
    pip_c "Cython>=3" pkgconfig "numpy>=1.24" &&
    CC=mpicc.openmpi HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi \
      pip_c --no-binary=h5py --no-build-isolation --no-cache-dir h5py
  }
  step h5py "building h5py against parallel HDF5 (Open MPI; about 2 minutes)" build_h5py
fi

# 5. Horovod 0.28.1 (C++17 patch: the released sdist hard-codes C++14, torch >= 2.1 needs 17) --------
if [ "${CLOUDVOX_SKIP_HOROVOD:-0}" != 1 ] && ! "$PY" -c 'import horovod.torch' 2>/dev/null; then
  build_horovod() {
    local work src
    work=$(mktemp -d "$LOGS/horovod-build.XXXXXX") && src="$work/horovod-0.28.1" &&
    "$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$work" horovod==0.28.1 &&
    tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work" &&
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt" &&
    pip_c cloudpickle psutil packaging pyyaml &&
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 MAKEFLAGS="-j$(nproc)" \
      pip_c --no-build-isolation --no-cache-dir "$src" &&
    rm -rf "$work"
  }
  step horovod "building Horovod 0.28.1 with PyTorch, MPI and Gloo (about 4 minutes)" build_horovod
fi

# 6. cloudvox itself (editable), with its C++ kernels (cloudvox/models/csrc, cloudvox/csrc, compiled against the pinned torch) ----
installed="$VENV/.cloudvox-installed"
if ! "$PY" -c 'import torch, cloudvox, hpc, cloudvox.models._sparse_conv, cloudvox._structure_factors' 2>/dev/null || [ setup.py -nt "$installed" ] \
    || [ pyproject.toml -nt "$installed" ] || [ -n "$(find cloudvox/models/csrc cloudvox/csrc -newer "$installed" 2>/dev/null | head -1)" ]; then
  # setuptools' note on editable installs is information, not a warning
  step cloudvox "pip install -e . (compiles the C++ kernel against the pinned torch, about a minute)" \
    env PYTHONWARNINGS="ignore:Editable installation" "$PY" -m pip install --quiet -c "$CONSTRAINTS" \
    --no-deps --no-build-isolation -e .
  touch "$installed"
fi
log "ready: $VENV"
