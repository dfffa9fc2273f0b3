#!/usr/bin/env bash
# The main job on the embedded defaults: train a small 2-bit MLP with MCEL, export it, compile it
# with FINN into a stitched RTL accelerator, inject bit flips into its weight memories under
# cocotb + Verilator at four rates, and compare the hardware-measured accuracy with the software
# prediction map by map. Uses Fashion-MNIST when installed, else the bundled 8x8 digits.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
MCEL=("$PY" -m flows.cli)  # an array: VENV may hold spaces
RUN=${RUN:-runs/demo}
# RUN= is what the user set: a bad one is named as such (not as the --out of a later command)
blocker="$RUN"
while [ ! -e "$blocker" ] && [ "$blocker" != "$(dirname -- "$blocker")" ]; do blocker=$(dirname -- "$blocker"); done
if [ ! -d "$blocker" ]; then
  echo "error: RUN=$RUN: $blocker is a file, not a folder; give a run folder (make demo RUN=runs/NAME)" >&2
  exit 2
fi
if "$PY" -c "from mcel_train.data import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null; then
  CONFIG=flows/configs/demo_fmnist.yaml
else
  echo "notice: Fashion-MNIST not found (apt-get install dataset-fashion-mnist); the demo uses the bundled 8x8 digits" >&2
  CONFIG=flows/configs/smoke_digits.yaml
fi
step() { echo; echo "=== $* ==="; }
if [ -e "$RUN/train" ]; then echo "[demo] reusing $RUN/train (delete $RUN to start over)"; else
  step "train ($CONFIG)"; "${MCEL[@]}" train "$CONFIG" --out="$RUN"; fi
if [ ! -e "$RUN/export" ]; then step "export to QONNX"; "${MCEL[@]}" export -- "$RUN"; fi
if [ ! -e "$RUN/build" ]; then step "FINN build + Verilator"; "${MCEL[@]}" build --target-cycles 784 -- "$RUN"; fi
step "software sweep (100 maps per rate)"
"${MCEL[@]}" sweep --bers 0,0.001,0.005,0.01,0.02 --maps 100 --seed 0 --force -- "$RUN"
step "RTL simulation with fault injection (cocotb + Verilator)"
"${MCEL[@]}" sim --ber 0,0.005,0.01,0.02 --maps 4 --images 500 --seed 0 --force -- "$RUN"
step "hardware vs software"
"${MCEL[@]}" compare -- "$RUN"
echo "[demo] plots: $RUN/sim/compare.png, $RUN/sweep/sw_ber.png; records: $RUN/sim/hw_ber.json, $RUN/sim/compare.json"
