"""Benchmark: the sweep engine vs a plain loop over (layer, strength), and steering overhead.

(a) plain loop: one `model.run_with_hooks` forward per (layer, strength) over all prompts, with a
    hand-written hook adding strength * direction at the layer's resid_pre, full unembedding, then
    next-token KL(base || steered) in bits from the last position;
(b) `steerlens.sweep.sweep` on the same grid (KL only).
Both run in this process, alternating, `--repeats` times; medians, their ratio and the largest
|KL difference| over all cells are printed. Then one batch is run unsteered and steered (hook
attached, strength != 0) alternately; the median time of each and their ratio are printed. The
numbers and the machine are written to results/benchmarks/sweep.json (`--out` elsewhere).

    python benchmarks/bench_sweep.py [--model smollm2-135m-instruct] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _record import write

from steerlens.backend import load_model, runtime
from steerlens.measures import kl_bits
from steerlens.methods import build_vector
from steerlens.pairs import load_behaviour
from steerlens.steer import steer, steered_forward
from steerlens.sweep import sweep


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_loop(model, vec, layers, strengths, batch) -> dict[tuple[int, float], torch.Tensor]:
    """The naive grid: one hooked full forward per (layer, strength)."""
    with torch.inference_mode():
        base = model(batch.tokens, attention_mask=batch.attention_mask)[:, -1]
        out = {}
        for layer in layers:
            direction = vec[layer].to(base.device)
            for s in strengths:
                def hook(act, hook, d=direction * s):
                    return act + d

                logits = model.run_with_hooks(
                    batch.tokens, attention_mask=batch.attention_mask,
                    fwd_hooks=[(runtime.hook_name(layer, "resid_pre"), hook)])
                out[(layer, s)] = kl_bits(base, logits[:, -1]).cpu()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", default="1,4,7,10,13,16,19,22,25,28")
    ap.add_argument("--strengths", default="-8,-4,-2,2,4,8")
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--forward-repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    layers = [int(x) for x in args.layers.split(",")]
    strengths = [float(x) for x in args.strengths.split(",")]
    beh = load_behaviour("sentiment")
    prompts = list(beh.eval_prompts[: args.n_prompts])
    vec = build_vector(model, beh.train[:16], layers, show_progress=False)
    batch = runtime.encode_prompts(model, prompts, chat=runtime.has_chat_template(model))
    n_cfg = len(layers) * len(strengths)
    print(f"model {args.model} on {args.device} ({torch.get_num_threads()} CPU threads); "
          f"vector: mean_diff from 16 sentiment pairs")
    print(f"grid: {len(layers)} layers {layers} x {len(strengths)} strengths {strengths} x "
          f"{len(prompts)} prompts ({tuple(batch.tokens.shape)} tokens) = {n_cfg} configs, "
          f"{n_cfg * len(prompts)} cells")

    t_loop, t_eng = [], []
    for _ in range(args.repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        ref = plain_loop(model, vec, layers, strengths, batch)
        _sync(args.device)
        t_loop.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = sweep(model, prompts, vec, layers=layers, strengths=strengths, show_progress=False)
        _sync(args.device)
        t_eng.append(time.perf_counter() - t0)
    t = res.table
    diff = max(
        float((torch.tensor(t[(t.layer == lay) & (t.strength == s)].sort_values("prompt_idx")
                            .kl_bits.to_numpy()) - ref[(lay, s)].double()).abs().max())
        for lay in layers for s in strengths)
    loop_m, eng_m = statistics.median(t_loop), statistics.median(t_eng)
    print()
    print(f"{'':28}{'median s':>10}  runs")
    print(f"{'(a) plain loop':28}{loop_m:>10.2f}  {', '.join(f'{x:.2f}' for x in t_loop)}"
          f"   ({n_cfg + 1} full forwards)")
    print(f"{'(b) sweep engine':28}{eng_m:>10.2f}  {', '.join(f'{x:.2f}' for x in t_eng)}"
          f"   (passes {dict(res.passes)})")
    print(f"speed-up (a)/(b): {loop_m / eng_m:.2f}x   (n={args.repeats} alternating repeats)")
    print(f"max |KL difference| over {len(t)} cells: {diff:.2e} bits "
          f"(KL range {t.kl_bits.min():.3g}..{t.kl_bits.max():.3g})")

    layer = layers[len(layers) // 2]
    plain, hooked = [], []
    for _ in range(args.forward_repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        runtime.forward(model, batch)
        _sync(args.device)
        plain.append(time.perf_counter() - t0)
        with steer(model, vec.layer(layer), strengths[-1]) as st:  # hook attach not timed
            t0 = time.perf_counter()
            steered_forward(model, batch, st)
            _sync(args.device)
            hooked.append(time.perf_counter() - t0)
    p_m, h_m = statistics.median(plain), statistics.median(hooked)
    print()
    print(f"one forward of {tuple(batch.tokens.shape)} tokens, median of {args.forward_repeats} "
          f"alternating runs: unsteered {p_m * 1e3:.1f} ms, steered (layer {layer}) "
          f"{h_m * 1e3:.1f} ms, ratio {h_m / p_m:.3f}")
    write("sweep", {**{k: v for k, v in vars(args).items() if k != "out"}, "layers": layers,
                    "strengths": strengths, "tokens_shape": list(batch.tokens.shape)},
          [{"case": "grid", "configs": n_cfg, "cells": len(t), "plain_loop_s": t_loop,
            "sweep_engine_s": t_eng, "plain_loop_median_s": loop_m, "sweep_engine_median_s": eng_m,
            "ratio": loop_m / eng_m, "max_abs_kl_diff_bits": diff},
           {"case": "steered_vs_unsteered_forward", "layer": layer, "unsteered_median_s": p_m,
            "steered_median_s": h_m, "ratio": h_m / p_m}],
          {"sweep_engine_speedup": loop_m / eng_m, "steering_overhead_ratio": h_m / p_m,
           "max_abs_kl_diff_bits": diff}, device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
