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

# STEERLENS_EXTRAS adds optional extras (e.g. "eval,llama" in CI: lm-eval and a source build of
# llama-cpp-python, minutes on 2 cores); the stamp records which extras were installed.
EXTRAS="dev,docs${STEERLENS_EXTRAS:+,$STEERLENS_EXTRAS}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$(cat "$STAMP")" != "$EXTRAS" ]; then
  echo "[steerlens] installing steerlens[$EXTRAS] and its dependencies (first run takes a minute or two)" >&2
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]" 2> >(grep -v "^WARNING: Location" >&2)
  printf '%s' "$EXTRAS" > "$STAMP"
fi
