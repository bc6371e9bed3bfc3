# Sourced by scripts/steerlens and scripts/test: make a virtual environment with steerlens installed.
# Idempotent: re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STEERLENS_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.steerlens-installed"

if [ ! -x "$PY" ]; then
  echo "[steerlens] creating virtual environment in $VENV" >&2
  python3 -m venv "$VENV"
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # A CPU torch when none is present; users with a GPU keep (or get) their CUDA build.
  tmp="$(mktemp -d)"
  if "$PY" -m pip download -q --no-deps --no-index -d "$tmp" "torch==2.13.0" >/dev/null 2>&1; then
    echo "[steerlens] installing the local CPU build of torch 2.13.0" >&2
    "$PY" -m pip install -q "torch==2.13.0" 2> >(grep -v "^WARNING: Location" >&2)
  elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "[steerlens] GPU found: torch will come from PyPI with CUDA" >&2
  else
    echo "[steerlens] installing a CPU build of torch" >&2
    "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
      || "$PY" -m pip install -q torch
  fi
  rm -rf "$tmp"
fi

if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[steerlens] installing steerlens and its dependencies (first run takes a minute or two)" >&2
  "$PY" -m pip install -q -e "$ROOT[dev,docs]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$STAMP"
fi
