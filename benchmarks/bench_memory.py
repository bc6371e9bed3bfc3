"""Peak memory of CAA extraction (48 pairs x all layers) and of a 5 x 5 x 12 sweep, with lower bounds.

Each workload runs in its own child process, after the model is loaded and warmed up, so the
number is the workload's own peak above what the process already held. On CUDA it is
`torch.cuda.max_memory_allocated` minus the allocation before the workload (after
`reset_peak_memory_stats`). On the CPU tracemalloc cannot see torch's allocations, so the child
runs with glibc's `MALLOC_MMAP_THRESHOLD_=65536` (every tensor buffer is its own mapping, returned
to the OS when freed, so the resident set follows live tensors), resets the kernel's peak-RSS
mark (`/proc/self/clear_refs` <- 5) and reads `VmHWM` afterwards: peak RSS minus the RSS before.
That also counts the allocator's and Python's own churn, so it is an upper estimate.

The lower bound beside each number is what the one-layer-at-a-time design cannot avoid: the
tensors the call returns (for extraction the reduced rows of every pair at every layer, float32)
plus one batch's working set inside one block (residual stream in and out, and the larger of the
gated MLP's three hidden tensors or the attention scores and pattern), plus for the sweep the
chunk's cached unsteered residual at one layer, its last-position logits and the steered rows'
last-position logits. Results go to results/benchmarks/memory.json (`--out` elsewhere).
Run: python benchmarks/bench_memory.py [--model smollm2-135m-instruct] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MIB = 1024 * 1024
WORKLOADS = ("build_vector", "sweep")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _data(args):
    from steerlens.pairs import ContrastSet, load_behaviour

    beh = load_behaviour("sentiment")
    pairs = ContrastSet(tuple(beh.train.pairs) + tuple(beh.test.pairs), "sentiment-48")[: args.pairs]
    prompts = (list(beh.eval_prompts) * 2)[: args.prompts]
    return pairs, prompts


def lower_bound(model, workload: str, args, pairs, prompts) -> dict:
    """Bytes the workload cannot avoid holding at its peak (see the module docstring)."""
    import torch

    from steerlens.backend import runtime

    n_layers, d = runtime.n_layers(model), runtime.d_model(model)
    n_heads, _, _ = runtime.attention_shape(model)
    d_mlp = int(model.cfg.d_mlp)  # benchmark only: the MLP width for the bound
    vocab = runtime.d_vocab(model)
    width = torch.finfo(runtime.model_dtype(model)).bits // 8
    chat = runtime.has_chat_template(model)

    def block_ws(rows: int, t: int) -> int:
        return (2 * rows * t * d + max(3 * rows * t * d_mlp, 2 * rows * n_heads * t * t)) * width

    if workload == "build_vector":
        texts = [len(runtime.prompt_ids(model, p.prompt, chat) if p.prompt else []) +
                 max(len(runtime.text_ids(model, p.positive)), len(runtime.text_ids(model, p.negative)))
                 for p in pairs]
        t = max(texts) + 1
        rows = min(args.batch_size, 2 * len(pairs))
        returned = 2 * len(pairs) * n_layers * d * 4 + n_layers * d * 4
        return {"returned_bytes": returned, "block_bytes": block_ws(rows, t),
                "lower_bound_bytes": returned + block_ws(rows, t), "rows": rows, "max_tokens": t}
    t = max(len(runtime.prompt_ids(model, p, chat)) for p in prompts)
    p = len(prompts)
    n_rows = min(args.batch_size, p * (args.strengths - 1))  # strength 0 needs no forward
    held = p * t * d * width + p * vocab * 4  # one layer's cached residual + base logits
    steer_rows = n_rows * vocab * 4 * 2  # steered last-position logits (and their float64 lse)
    return {"returned_bytes": 0, "block_bytes": block_ws(n_rows, t), "held_bytes": held,
            "lower_bound_bytes": held + steer_rows + block_ws(n_rows, t), "rows": n_rows,
            "max_tokens": t}


def child(args) -> None:
    """Run one workload in this process and print its measurement as one JSON line."""
    import torch

    import steerlens as sl
    from steerlens.backend import load_model, runtime
    from steerlens.methods import build_vector

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    pairs, prompts = _data(args)
    n_layers = runtime.n_layers(model)
    all_layers = list(range(n_layers))
    # evenly spaced from layer 1 (layer 0 reads the embedding: a zero CAA direction at 'last')
    k = min(args.layers, n_layers - 1)
    sweep_layers = sorted({1 + round(i * (n_layers - 2) / max(k - 1, 1)) for i in range(k)})
    strengths = [float(s) for s in range(args.strengths)]
    # warm-up: lazy inits (tokenizer caches, the first forward's allocator state) stay outside
    build_vector(model, pairs[:2], all_layers[1:2], show_progress=False)
    vec = build_vector(model, pairs[:8], sweep_layers, show_progress=False)

    if args.workload == "build_vector":
        def run():
            return build_vector(model, pairs, all_layers, batch_size=args.batch_size,
                                show_progress=False)
    else:
        def run():
            return sl.sweep(model, prompts, vec, layers=sweep_layers, strengths=strengths,
                            batch_size=args.batch_size, show_progress=False)

    cuda = str(args.device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        method = "torch.cuda.max_memory_allocated - allocated before"
    else:
        peak = _status_kib("VmHWM") * 1024 - before
        method = "VmHWM - VmRSS before (MALLOC_MMAP_THRESHOLD_=65536)"
    del out
    bound = lower_bound(model, args.workload, args, pairs, prompts)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print("RESULT " + json.dumps({
        "workload": args.workload, "model": args.model, "dtype": args.dtype,
        "device": args.device, "n_pairs": len(pairs), "n_layers": len(all_layers),
        "sweep": {"layers": sweep_layers, "strengths": strengths, "prompts": len(prompts)},
        "batch_size": args.batch_size, "seconds": seconds, "peak_bytes": int(peak),
        "weights_bytes": weights, "method": method, **bound}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", help="one dtype, or several comma-separated")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--strengths", type=int, default=5, help="strengths 0..n-1")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--workload", choices=WORKLOADS, action="append", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.child:
        args.workload = args.workload[0]
        child(args)
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    print(f"{'workload':<13} {'model':<22} {'dtype':<5} {'peak MiB':>9} {'bound MiB':>9} "
          f"{'peak/bound':>10} {'weights MiB':>11} {'s':>6}")
    for dtype, workload in [(d, w) for d in args.dtype.split(",") for w in args.workload or WORKLOADS]:
        cmd = [sys.executable, __file__, "--child", "--workload", workload, "--dtype", dtype]
        for k in ("model", "device", "pairs", "prompts", "layers", "strengths", "batch_size",
                  "threads"):
            v = getattr(args, k)
            if v is not None:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{workload} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        row = json.loads(lines[-1].removeprefix("RESULT "))
        row["peak_over_bound"] = row["peak_bytes"] / row["lower_bound_bytes"]
        rows.append(row)
        print(f"{workload:<13} {row['model']:<22} {row['dtype']:<5} {row['peak_bytes'] / MIB:>9.1f} "
              f"{row['lower_bound_bytes'] / MIB:>9.1f} {row['peak_over_bound']:>10.2f} "
              f"{row['weights_bytes'] / MIB:>11.1f} {row['seconds']:>6.1f}", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _record import write

    summary = {f"{r['workload']}/{r['dtype']}": {"peak_mib": r["peak_bytes"] / MIB,
                               "lower_bound_mib": r["lower_bound_bytes"] / MIB,
                               "peak_over_bound": r["peak_over_bound"]} for r in rows}
    write("memory", {k: v for k, v in vars(args).items() if k != "child"}, rows, summary,
          device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
