#!/usr/bin/env bash
# Regenerate the tutorial's figures with `cloudvox show`:  bash docs/make_figures.sh [OUT_DIR]
# FAST=1 uses a coarse grid (N=16) for CI, which runs this so that the figures never go stale.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/docs/figures}
CLOUDVOX=${CLOUDVOX:-$ROOT/.venv/bin/cloudvox}
DATA=$ROOT/tests/data/aflow/O-Sr-Ti.jsonl   # the 135 AFLOW O-Sr-Ti entries committed with the tests
N=32; [ "${FAST:-0}" = 1 ] && N=16
mkdir -p "$OUT"
show() { "$CLOUDVOX" show "$@" --n "$N" > /dev/null; }
show "$DATA" --index 0 --out "$OUT/srtio3_panels.png"
show "$DATA" --index 0 --panel cell --panel density --out "$OUT/srtio3_cell_density.png"
show "$DATA" --index 0 --vary sigma=0.05,0.1,0.3 --out "$OUT/vary_sigma.png"
show "$DATA" --index 0 --vary length=8,12.8,20 --out "$OUT/vary_length.png"
"$CLOUDVOX" show "$DATA" --index 0 --vary n=16,32,48 --out "$OUT/vary_n.png" > /dev/null
show "$DATA" --index 0 --compare translate:0.7,-1.3,2.1 --out "$OUT/translation.png"
show "$DATA" --index 0 --compare rotate:z:30 --out "$OUT/rotation_cartesian.png"
show "$DATA" --index 0 --compare rotate:z:30 --descriptor spherical --out "$OUT/rotation_spherical.png"
show "$DATA" --index 0 --compare supercell:2,2,2 --out "$OUT/supercell.png"
show "$DATA" --index 1 --out "$OUT/triclinic_panels.png"
show --format qm9 --index 20 --sigma 0.2 --length 10 --out "$OUT/qm9_molecule.png"
echo "figures in $OUT"
