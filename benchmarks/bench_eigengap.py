"""Benchmark: batched eigengaps vs a per-head numpy loop, and vs one forward pass.

Both eigen sides get the same captured keys (every layer and key/value head of the model, for n
prompts of T tokens of the shipped held-out text, plus one set of chat prompts of mixed lengths
with padding). The loop forms each head's T x T Gram matrix (1/d_head) K Kᵀ and calls
numpy.linalg.eigvalsh on it; steerlens masks padding, uses the d_head x d_head side when T > d_head
and makes one batched float64 eigvalsh call. Beside that, on the same batch: one full forward pass
with logits (`forward`), the eigen step of `eigengaps` (keys before and after rotary, plus the
pattern gaps: `eigen`), and the whole `eigengaps` computation (capture forward that stops after the
deepest layer without logits, plus the eigen step: `total`), so the ratios eigen / forward and
total / forward are printed side by side (the #14 target: no slower than one forward for T <= 64).
Where T <= d_head both eigen sides solve the same T x T problems and LAPACK dominates, so the gain
over the loop there is small; the d_head x d_head side is what pays off for long prompts. Timings
are medians of `--repeats` round-robin runs. Written to results/benchmarks/eigengap.json (`--out`
elsewhere).

    python benchmarks/bench_eigengap.py [--model smollm2-135m-instruct] [--n 8] [--repeats 3]
                                        [--threads 1] [--lengths 16 32 64 128] [--device cpu]
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
from steerlens.spectral.eigengap import gaps_of_batch, gram_gaps, gram_top2


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


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def eigen_step(cap, mask: torch.Tensor) -> None:
    """The eigen part of `eigengaps` on captured parts: key kinds in one call, patterns in one."""
    keys = [cap.parts[p].permute(0, 1, 3, 2, 4) for p in ("k", "rot_k") if p in cap.parts]
    kmask = mask[:, None, None, :].expand(*keys[0].shape[:3], mask.shape[-1])
    gram_top2(torch.stack(keys), kmask.expand(len(keys), *kmask.shape))
    if "pattern" in cap.parts:
        pat = cap.parts["pattern"].to(torch.float64) * mask[:, None, None, None, :]
        gram_top2(pat, mask[:, None, None, :].expand(*pat.shape[:3], mask.shape[-1]), scale=1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, ...)")
    ap.add_argument("--n", type=int, default=8, help="prompts per setting")
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-loop", action="store_true", help="skip the numpy per-matrix loop")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    layers = list(range(runtime.n_layers(model)))
    _, n_kv, d_head = runtime.attention_shape(model)
    rotary = runtime.has_hook(model, runtime.key_hook_name(0, rotated=True))
    parts = ["k"] + (["rot_k"] if rotary else []) + ["pattern"]
    print(f"model={runtime.model_id(model)} layers={len(layers)} kv_heads={n_kv} d_head={d_head} "
          f"n_prompts={args.n} repeats={args.repeats} torch_threads={torch.get_num_threads()} "
          f"device={args.device} dtype={args.dtype}")
    chat = runtime.has_chat_template(model) and runtime.is_instruct(model)
    settings = [(f"T={t} held-out text", heldout_batch(model, args.n, t)) for t in args.lengths]
    prompts = (load_behaviour("sentiment").eval_prompts * 4)[: args.n]
    settings.append(("chat prompts, mixed T (padded)",
                     runtime.encode_prompts(model, prompts, chat=chat, device="cpu")))
    print(f"{'setting':<32}{'T':>4}{'loop s':>9}{'keys s':>9}{'x loop':>8}{'fwd s':>8}"
          f"{'eigen s':>9}{'total s':>9}{'eig/fwd':>9}{'tot/fwd':>9}{'max |diff|':>11}")
    rows = []
    for label, batch in settings:
        dev_batch = batch.to(args.device)
        cap = capture_attention(model, batch, layers, parts)
        keys = cap.parts["k"].cpu().float()
        lengths = [int(x) for x in batch.lengths]
        mask = cap.mask
        cases = {
            "ours": lambda k=keys, m=mask.cpu(): ours(k, m),
            "forward": lambda b=dev_batch: runtime.forward(model, b),
            "eigen": lambda c=cap, m=mask: eigen_step(c, m),
            "total": lambda b=batch: gaps_of_batch(model, b, layers, patterns=True),
        }
        if not args.no_loop:
            keys_np = keys.to(torch.float64).numpy()
            cases["loop"] = lambda k=keys_np, n=lengths: loop_gaps(k, n)
        times: dict[str, list[float]] = {k: [] for k in cases}
        outs: dict[str, object] = {}
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(args.repeats):  # round-robin, so a load spike hits every case
            for name, fn in cases.items():
                sync(args.device)
                t0 = time.perf_counter()
                outs[name] = fn()
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        got = outs["ours"]
        row = {"setting": label, "T": int(batch.tokens.shape[1]), "matrices": int(got.size),
               "ours_median_s": med["ours"], "forward_median_s": med["forward"],
               "eigen_median_s": med["eigen"], "total_median_s": med["total"],
               "eigen_over_forward": med["eigen"] / med["forward"],
               "total_over_forward": med["total"] / med["forward"], "runs_s": times}
        diff = float("nan")
        if "loop" in outs:
            ref = outs["loop"]
            diff = float(np.abs(ref - got).max())
            # float64 on both sides: ~1e-13 at most for gaps in [0, 1]
            if not np.allclose(ref, got, rtol=0, atol=1e-9):
                raise SystemExit(f"Gaps differ by {diff:.3e} in setting {label!r}.")
            row.update(loop_median_s=med["loop"], ratio=med["loop"] / med["ours"],
                       max_abs_diff=diff)
        print(f"{label:<32}{row['T']:>4}{med.get('loop', float('nan')):>9.4f}{med['ours']:>9.4f}"
              f"{row.get('ratio', float('nan')):>7.1f}x{med['forward']:>8.3f}{med['eigen']:>9.4f}"
              f"{med['total']:>9.3f}{row['eigen_over_forward']:>9.3f}"
              f"{row['total_over_forward']:>9.3f}{diff:>11.2e}")
        rows.append(row)
    short = [r for r in rows if r["T"] <= 64]
    summary = {"ratio_by_setting": {r["setting"]: r.get("ratio") for r in rows},
               "eigen_over_forward_by_setting": {r["setting"]: r["eigen_over_forward"]
                                                 for r in rows},
               "total_over_forward_by_setting": {r["setting"]: r["total_over_forward"]
                                                 for r in rows},
               "short_prompts_max_eigen_over_forward": max(
                   (r["eigen_over_forward"] for r in short), default=None),
               "short_prompts_max_total_over_forward": max(
                   (r["total_over_forward"] for r in short), default=None),
               "max_abs_diff": max((r.get("max_abs_diff", 0.0) for r in rows), default=None)}
    if short:
        print(f"T <= 64: eigen step / forward <= {summary['short_prompts_max_eigen_over_forward']:.3f}"
              f", whole eigengaps / forward <= {summary['short_prompts_max_total_over_forward']:.3f}"
              f" (n={args.n} prompts, {len(layers)} layers; forward = one pass with logits)")
    write("eigengap", {**{k: v for k, v in vars(args).items() if k != "out"},
                       "kv_heads": n_kv, "d_head": d_head, "layers": len(layers),
                       "timing": "median of round-robin repeats"}, rows, summary,
          device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
