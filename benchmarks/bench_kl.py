"""Next-token KL: steerlens (batched, prefix reuse, last-position unembedding) vs a plain loop.

The plain loop is what one writes by hand: for each prompt, a full unsteered forward and a full
steered forward (hook adding the vector), full logits, KL at the last position. Both are timed
side by side in one run, for a vector at an early, middle and late layer, and the bits are checked
to agree. The numbers and the machine are written to results/benchmarks/kl.json (`--out`
elsewhere). Run: python benchmarks/bench_kl.py [--model smollm2-135m-instruct] [--n 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _record import write

from steerlens.backend import load_model, runtime
from steerlens.measures import kl_bits, next_token_kl
from steerlens.methods import random_like
from steerlens.pairs import load_behaviour
from steerlens.vectors import SteeringVector


def plain_loop(model, prompts, vec: SteeringVector, strength: float) -> list[float]:
    (layer,) = vec.layers
    direction = vec[layer] * strength

    def add(act, hook):
        return act + direction

    out = []
    for p in prompts:
        toks = torch.tensor([runtime.prompt_ids(model, p, chat=True)])
        with torch.inference_mode():
            base = model(toks)[0, -1]
            with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", add)]):
                steered = model(toks)[0, -1]
        out.append(float(kl_bits(base, steered)))
    return out


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=16, help="number of prompts")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    beh = load_behaviour("sentiment")
    prompts = (list(beh.eval_prompts) * 4)[: args.n]
    n_layers = runtime.n_layers(model)
    print(f"model {args.model}, n={len(prompts)} prompts, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    print(f"{'layer':>5} {'plain s':>8} {'batched s':>9} {'+prefix s':>9} {'plain/prefix':>12} "
          f"{'max |diff| bits':>15}")
    rows = []
    for layer in (1, n_layers // 2, n_layers - 2):
        base = SteeringVector({layer: torch.ones(runtime.d_model(model))})
        vec = random_like(base.normalized(8.0), seed=layer)
        t_plain, ref = timed(lambda v=vec: plain_loop(model, prompts, v, 1.0), args.repeats)
        t_full, full = timed(lambda v=vec: next_token_kl(model, prompts, v, 1.0, chat=True,
                                                         reuse_prefix=False), args.repeats)
        t_pre, pre = timed(lambda v=vec: next_token_kl(model, prompts, v, 1.0, chat=True),
                           args.repeats)
        diff = max(np.max(np.abs(np.array(ref) - full.values)),
                   np.max(np.abs(np.array(ref) - pre.values)))
        print(f"{layer:>5} {t_plain:>8.2f} {t_full:>9.2f} {t_pre:>9.2f} {t_plain / t_pre:>11.2f}x "
              f"{diff:>15.2e}")
        rows.append({"layer": layer, "plain_loop_s": t_plain, "batched_s": t_full,
                     "batched_prefix_reuse_s": t_pre, "ratio": t_plain / t_pre,
                     "max_abs_diff_bits": float(diff)})
    ratios = [r["ratio"] for r in rows]
    write("kl", {**{k: v for k, v in vars(args).items() if k != "out"}, "n_prompts": len(prompts),
                 "timing": "best of repeats"}, rows,
          {"ratio_min": min(ratios), "ratio_max": max(ratios),
           "prefix_reuse_s_min": min(r["batched_prefix_reuse_s"] for r in rows),
           "prefix_reuse_s_max": max(r["batched_prefix_reuse_s"] for r in rows),
           "plain_loop_s_min": min(r["plain_loop_s"] for r in rows),
           "plain_loop_s_max": max(r["plain_loop_s"] for r in rows),
           "max_abs_diff_bits": max(r["max_abs_diff_bits"] for r in rows)},
          device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
