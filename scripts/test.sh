#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (idempotent), then pytest. MPI tests run mpirun -n 1..3.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
