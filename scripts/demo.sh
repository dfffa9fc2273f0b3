#!/usr/bin/env bash
# The main job on the embedded defaults. Uses Fashion-MNIST when installed, else the bundled
# digits (with a notice). Later stages (build, simulate, compare) are appended as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN=${RUN:-runs/demo}
if $PY -c "from mcel_train.data import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null; then
  CONFIG=flows/configs/demo_fmnist.yaml
else
  echo "notice: Fashion-MNIST not found (apt-get install dataset-fashion-mnist); the demo uses the bundled 8x8 digits" >&2
  CONFIG=flows/configs/smoke_digits.yaml
fi
if [ -e "$RUN/train" ]; then
  echo "[demo] $RUN/train exists; reusing it (delete it to retrain)"
else
  $PY -m mcel_train.cli train "$CONFIG" --out "$RUN"
fi
cat "$RUN/train/metrics.json" | $PY -c "import json,sys; m=json.load(sys.stdin); print(f\"[demo] test accuracy {m['test_accuracy']:.4f}, mean logit margin {m['mean_logit_margin']:.2f}\")"
