"""Benchmark: batched eigengaps (one eigvalsh call, small Gram side) vs a per-head numpy loop.

Both sides get the same captured keys (every layer and key/value head of the model, for n prompts
of T tokens of the shipped held-out text, plus one set of chat prompts of mixed lengths with
padding). The loop forms each head's T x T Gram matrix (1/d_head) K Kᵀ and calls
numpy.linalg.eigvalsh on it; steerlens masks padding, uses the d_head x d_head side when T > d_head
and makes one batched float64 eigvalsh call. Prints the median time of each, the ratio, and the
largest gap difference. Where T <= d_head both sides solve the same T x T problems and LAPACK
dominates, so the gain there is small; the d_head x d_head side is what pays off for long prompts.
The numbers and the machine are written to results/benchmarks/eigengap.json (`--out` elsewhere).

    python benchmarks/bench_eigengap.py [--model smollm2-135m-instruct] [--n 8] [--repeats 3]
                                        [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib import resources

import numpy as np
import torch
from _record import write

from steerlens.backend import load_model, runtime
from steerlens.pairs import load_behaviour
from steerlens.spectral._capture import capture_attention
from steerlens.spectral.eigengap import gram_gaps


def loop_gaps(keys: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Reference: per prompt, layer and head, T x T Gram matrix -> numpy eigvalsh -> gap."""
    n_p, n_l, width, n_h, d = keys.shape
    out = np.empty((n_p, n_l, n_h))
    for p in range(n_p):
        for layer in range(n_l):
            for h in range(n_h):
                k = keys[p, layer, width - lengths[p]:, h, :]  # left padded: real tokens at the end
                ev = np.linalg.eigvalsh(k @ k.T / d)
                out[p, layer, h] = (ev[-1] - max(ev[-2], 0.0)) / ev[-1]
    return out


def ours(keys: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    k = keys.permute(0, 1, 3, 2, 4)  # [prompt, layer, head, pos, d]
    m = mask[:, None, None, :].expand(*k.shape[:3], mask.shape[-1])
    return gram_gaps(k, m).numpy()


def timed(fn, repeats: int, budget_s: float = 30.0) -> tuple[float, object]:
    """Median wall time over `repeats` runs (fewer when one run already exceeds `budget_s`)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s:
            break
    return statistics.median(times), out


def heldout_batch(model, n: int, length: int) -> runtime.TokenBatch:
    text = resources.files("steerlens").joinpath("data/heldout.txt").read_text(encoding="utf-8")
    ids = runtime.text_ids(model, text)
    bos = runtime.tokenizer(model).bos_token_id
    body = length - (1 if bos is not None else 0)
    if len(ids) < n * body:
        raise ValueError(f"Held-out text has {len(ids)} tokens; {n} x {body} needed.")
    rows = [(([bos] if bos is not None else []) + ids[i * body:(i + 1) * body], 0) for i in range(n)]
    return runtime.batch_from_ids(model, rows, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=8, help="prompts per setting")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    layers = list(range(runtime.n_layers(model)))
    _, n_kv, d_head = runtime.attention_shape(model)
    print(f"model={runtime.model_id(model)} layers={len(layers)} kv_heads={n_kv} d_head={d_head} "
          f"n_prompts={args.n} repeats={args.repeats} torch_threads={torch.get_num_threads()}")
    chat = runtime.has_chat_template(model) and runtime.is_instruct(model)
    settings = [(f"T={t} held-out text", heldout_batch(model, args.n, t)) for t in args.lengths]
    prompts = (load_behaviour("sentiment").eval_prompts * 4)[: args.n]
    settings.append(("chat prompts, mixed T (padded)",
                     runtime.encode_prompts(model, prompts, chat=chat, device="cpu")))
    print(f"{'setting':<34}{'matrices':>9}{'loop s':>10}{'ours s':>10}{'speedup':>9}{'max |diff|':>12}")
    rows = []
    for label, batch in settings:
        cap = capture_attention(model, batch, layers, ["k"])
        keys = cap.parts["k"].cpu()
        keys_np = keys.to(torch.float64).numpy()
        lengths = [int(x) for x in batch.lengths]
        t_loop, ref = timed(lambda k=keys_np, n=lengths: loop_gaps(k, n), args.repeats)
        t_ours, got = timed(lambda k=keys, m=cap.mask.cpu(): ours(k, m), args.repeats)
        diff = float(np.abs(ref - got).max())
        print(f"{label:<34}{ref.size:>9}{t_loop:>10.4f}{t_ours:>10.4f}{t_loop / t_ours:>8.1f}x"
              f"{diff:>12.2e}")
        if not np.allclose(ref, got, rtol=0, atol=1e-9):
            raise SystemExit(f"Gaps differ by {diff:.3e} in setting {label!r}.")
        rows.append({"setting": label, "matrices": int(ref.size), "loop_median_s": t_loop,
                     "ours_median_s": t_ours, "ratio": t_loop / t_ours, "max_abs_diff": diff})
    write("eigengap", {**{k: v for k, v in vars(args).items() if k != "out"},
                       "kv_heads": n_kv, "d_head": d_head, "layers": len(layers)}, rows,
          {"ratio_by_setting": {r["setting"]: r["ratio"] for r in rows},
           "max_abs_diff": max(r["max_abs_diff"] for r in rows)},
          device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
