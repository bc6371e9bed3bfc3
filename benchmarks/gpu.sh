#!/usr/bin/env bash
# The benchmark suite on whatever this machine has: a CUDA GPU if present, else a small CPU run.
#
#   bash benchmarks/gpu.sh [--dry-run] [--cpu] [--out DIR] [--python PY]
#
# With a GPU (torch.cuda.is_available()): every benchmark at full size on cuda in float32 (the
# side-by-side comparisons with Hugging Face / steering-vectors / repeng), then bf16 throughput
# (bench_generate and bench_peers again with --dtype bfloat16), results in results/benchmarks/gpu/
# and results/benchmarks/gpu/bf16/. Without one it says so and runs the CPU suite with small sizes
# into a scratch directory (the committed CPU numbers come from the full single-script runs).
# A flag is passed to a benchmark only if its --help lists it, so the script runs unchanged while
# the benchmarks evolve. At the end it prints the device, the dtype and every ratio written.
# --dry-run lists the commands without running anything (no model is loaded).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
FORCE_CPU=0
OUT=""
PY="${PYTHON:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --cpu) FORCE_CPU=1 ;;
    --out) OUT="$2"; shift ;;
    --python) PY="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (valid: --dry-run --cpu --out DIR --python PY)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [ "$FORCE_CPU" = 1 ]; then
  DEVICE=cpu
else
  DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
fi

if [ "$DEVICE" = cuda ]; then
  GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  echo "device: cuda ($GPU_NAME); dtypes: float32 suite, then bfloat16 throughput"
  OUT="${OUT:-results/benchmarks/gpu}"
  THREADS=()
  SMALL=0
else
  echo "device: cpu (no CUDA GPU found): running the CPU suite with small sizes, dtype float32"
  OUT="${OUT:-${TMPDIR:-/tmp}/steerlens-bench-cpu}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
  THREADS=(--threads "$OMP_NUM_THREADS")
  SMALL=1
fi

declare -A HELP
supports() {  # supports SCRIPT FLAG: does the benchmark's --help list FLAG?
  local script="$1" flag="$2"
  if [ -z "${HELP[$script]+x}" ]; then
    HELP[$script]=$("$PY" "$script" --help 2>/dev/null || true)
  fi
  grep -qE -- "(^|[^[:alnum:]-])${flag}([^[:alnum:]-]|\$)" <<<"${HELP[$script]}"
}

FAILED=()
run() {  # run NAME SCRIPT OUTDIR DTYPE [ARGS...]: one benchmark with the flags it supports
  # (DTYPE "-": pass none, e.g. bench_precision compares its own --dtypes against float32)
  local name="$1" script="benchmarks/$2" outdir="$3" dtype="$4"
  shift 4
  if [ ! -f "$script" ]; then echo "== $name: $script not present, skipped"; return; fi
  local args=("$@")
  if [ "$DRY" = 1 ]; then  # no --help probing in a dry run: list the full intended command
    args+=(--device "$DEVICE")
    [ "$dtype" != - ] && args+=(--dtype "$dtype")
    args+=("${THREADS[@]}" --out "$outdir")
  else
    supports "$script" "--device" && args+=(--device "$DEVICE")
    [ "$dtype" != - ] && supports "$script" "--dtype" && args+=(--dtype "$dtype")
    [ ${#THREADS[@]} -gt 0 ] && supports "$script" "--threads" && args+=("${THREADS[@]}")
    supports "$script" "--out" && args+=(--out "$outdir")
  fi
  echo "== $name: $PY $script ${args[*]}"
  [ "$DRY" = 1 ] && return
  mkdir -p "$outdir"
  if ! "$PY" "$script" "${args[@]}"; then FAILED+=("$name"); fi
}

if [ "$SMALL" = 1 ]; then
  run peers bench_peers.py "$OUT" float32 --quick
  run generate bench_generate.py "$OUT" float32 --n 4 --tokens 8 --repeats 1
  run eigengap bench_eigengap.py "$OUT" float32 --n 2 --lengths 16 64 --repeats 1 --no-loop
  run memory bench_memory.py "$OUT" float32 --pairs 8 --prompts 4 --layers 2 --strengths 2
  run precision bench_precision.py "$OUT" - --quick
else
  run peers bench_peers.py "$OUT" float32
  run generate bench_generate.py "$OUT" float32
  run eigengap bench_eigengap.py "$OUT" float32
  run memory bench_memory.py "$OUT" float32
  run precision bench_precision.py "$OUT" -
  # bf16 throughput: the same comparisons with both sides in bfloat16, and a larger batch
  run peers-bf16 bench_peers.py "$OUT/bf16" bfloat16 --no-batch1
  run generate-bf16 bench_generate.py "$OUT/bf16" bfloat16
  run generate-bf16-n64 bench_generate.py "$OUT/bf16/n64" bfloat16 --n 64 --tokens 128
fi

[ "$DRY" = 1 ] && exit 0
echo
echo "== summary: device $DEVICE${GPU_NAME:+ ($GPU_NAME)}; every ratio written under $OUT"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).rglob("*.json")):
    data = json.loads(path.read_text())
    m, s = data.get("machine", {}), data.get("settings", {})
    dtype = s.get("dtype") or s.get("dtypes") or "float32"
    print(f"{path}: device {m.get('device')} {m.get('gpu') or ''} dtype {dtype}")

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}{k}.", x)
        elif isinstance(v, float) and any(w in prefix for w in ("ratio", "speedup", "over", "vs")):
            print(f"    {prefix[:-1]:<60} {v:.3f}")

    walk("", data.get("summary", {}))
EOF
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed: ${FAILED[*]}"
  exit 1
fi
