"""Arena run vs the library's own batched generation of the same rows.

An arena run (baseline + 2 strengths, 24 greedy tokens, the sentiment vector at one layer) streams
its steps, then per-token KL for each steered row; the floor is `generate` of the same three rows
in one batch under one `steer()` with per-row strengths [0, s1, s2]. Both are timed side by side
in one run, round-robin, after a warm-up run that builds (and caches) the vector; the ratio
arena / generate has the target <= 1.5x. Where it is missed, a profile of the arena run is
printed. Results: results/benchmarks/arena.json (`--out` elsewhere).
Run: python benchmarks/bench_arena.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _record import write

from steerlens.arena.engine import Arena
from steerlens.backend import load_model
from steerlens.generate import generate
from steerlens.steer import Injection, steer

PROMPT = "Tell me about your weekend."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--strengths", default="4,8")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    arena = Arena(model)
    req = arena.parse_request({"prompt": PROMPT, "layer": args.layer, "strengths": args.strengths,
                               "behaviour": "sentiment", "max_new_tokens": args.tokens})
    vec = arena._vector(req)
    rows = [0.0, *req.strengths]

    def run_arena():
        events = list(arena.run(req))
        return events[-1]["texts"]

    def run_generate():
        with steer(model, Injection(vec, 1.0, name="add")) as s:
            s.set_strength("add", rows)
            gen = generate(model, [PROMPT] * len(rows), s, chat=req.chat, config=req.generation)
        return list(gen.texts)

    cases = {"arena_run": run_arena, "generate_same_rows": run_generate}
    outputs = {k: fn() for k, fn in cases.items()}  # warm-up (vector built once, cached)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k, fn in cases.items():
            t = time.perf_counter()
            outputs[k] = fn()
            times[k].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = best["arena_run"] / best["generate_same_rows"]
    ratio_med = med["arena_run"] / med["generate_same_rows"]
    print(f"model {args.model}, rows {rows}, {args.tokens} tokens, layer {args.layer}, torch "
          f"threads {torch.get_num_threads()}, {args.repeats} round-robin runs")
    print(f"{'case':<20} {'best s':>8} {'median s':>9}  runs")
    for k in cases:
        print(f"{k:<20} {best[k]:>8.3f} {med[k]:>9.3f}  " + " ".join(f"{t:.2f}" for t in times[k]))
    same = outputs["arena_run"] == outputs["generate_same_rows"]
    print(f"arena / generate: {ratio:.3f}x best, {ratio_med:.3f}x median (target <= 1.5); "
          f"identical texts: {same}")
    if ratio > 1.5:
        from torch.profiler import ProfilerActivity, profile
        print("Target missed; where the arena run spends its time (self CPU by op):")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_arena()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    write("arena", {**{k: v for k, v in vars(args).items() if k != "out"}, "rows": rows,
                    "timing": "best and median of round-robin repeats"},
          [{"case": k, "best_s": best[k], "median_s": med[k], "runs_s": times[k]} for k in cases],
          {"arena_over_generate_best": ratio, "arena_over_generate_median": ratio_med,
           "identical_texts": same, "target_met": ratio <= 1.5}, out_dir=args.out)


if __name__ == "__main__":
    main()
