"""Benchmark: sweep throughput in one process vs on Ray with 1 and 2 workers (cells/s, ratios).

For each model the same grid (one vector x layers x strengths x prompts, KL; `--generate` adds
greedy continuations) is swept (a) in this process (`executor=None`), (b) on a `RayExecutor`
with 1 worker and (c) with 2 workers, on a local Ray cluster of `--ray-cpus` CPUs. Every
process runs torch at `--threads` threads (1 by default, so 2 workers use 2 cores and the
single process 1: the fair per-core comparison). Each executor first runs one warm-up sweep
(actor start, imports and model load, reported as `startup_s`), then the cases alternate
`--repeats` times and medians are reported as cells/s and as ratios to the single process,
side by side; the largest |KL difference| from the single-process table is printed as a check.
Results go to results/benchmarks/ray.json (`--out` elsewhere).

Throughput model: cells/s with n workers ~ n x (cells/s of one worker) while units outnumber
workers and the per-unit round trip (a few ms) is small against a unit's compute; one worker's
rate over the single process's gives the Ray overhead.

    python benchmarks/bench_ray.py [--models tiny-random,smollm2-135m-instruct] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _record import write

from steerlens.backend import load_model, runtime
from steerlens.methods import build_vector
from steerlens.pairs import load_behaviour
from steerlens.sweep import sweep
from steerlens.sweep.executor import ModelLoader, RayExecutor
from steerlens.vectors import SteeringVector


def _vector(model, beh, layers: list[int]) -> SteeringVector:
    if runtime.model_id(model) == "tiny-random":  # random weights: a random direction will do
        g = torch.Generator().manual_seed(0)
        return SteeringVector({la: torch.randn(runtime.d_model(model), generator=g) * 3
                               for la in layers})
    return build_vector(model, beh.train[:8], layers, show_progress=False)


def _layers(model, spec: str) -> list[int]:
    n = runtime.n_layers(model)
    if spec:
        return [int(x) for x in spec.split(",")]
    return sorted({min(n - 1, max(0, round(f * (n - 1)))) for f in (0.1, 0.3, 0.5, 0.7, 0.9)})


def bench_model(name: str, args, beh) -> list[dict]:
    model = load_model(name, device="cpu")
    layers = _layers(model, args.layers if name != "tiny-random" else "")
    strengths = [float(x) for x in args.strengths.split(",")]
    prompts = list(beh.eval_prompts[: args.n_prompts])
    vec = _vector(model, beh, layers)
    kw = dict(layers=layers, strengths=strengths, batch_size=args.batch_size,
              show_progress=False, measures=("kl", "generate") if args.generate else ("kl",))
    if args.generate:
        kw["max_new_tokens"] = args.max_new_tokens
    n_cells = len(layers) * len(strengths) * len(prompts)
    print(f"\n{name}: {len(layers)} layers {layers} x {len(strengths)} strengths x "
          f"{len(prompts)} prompts = {n_cells} cells, batch_size {args.batch_size}, "
          f"measures {kw['measures']}")

    # 0.5 CPU each: the 1- and 2-worker executors (3 actors) fit on a 2-CPU cluster together
    executors = {f"ray_{n}_worker": RayExecutor(n, num_cpus_per_worker=0.5,
                                                torch_threads=args.threads,
                                                model_loader=ModelLoader(name, {"device": "cpu"}))
                 for n in (1, 2)}
    startup = {}
    for case, ex in executors.items():
        t0 = time.perf_counter()
        sweep(model, prompts, vec, executor=ex, **kw)
        startup[case] = time.perf_counter() - t0
    cases = {"single_process": None, **executors}
    times = {c: [] for c in cases}
    ref = None
    diffs = {}
    for _ in range(args.repeats):
        for case, ex in cases.items():
            t0 = time.perf_counter()
            res = sweep(model, prompts, vec, executor=ex, **kw)
            times[case].append(time.perf_counter() - t0)
            if ex is None:
                ref = res.table
            elif ref is not None:
                diffs[case] = max(diffs.get(case, 0.0),
                                  float((res.table.kl_bits - ref.kl_bits).abs().max()))
    for ex in executors.values():
        ex.shutdown()
    single = statistics.median(times["single_process"])
    rows = []
    print(f"{'case':18}{'median s':>10}{'cells/s':>10}{'vs single':>11}{'startup s':>11}"
          f"{'max|dKL|':>11}  runs")
    for case in cases:
        med = statistics.median(times[case])
        row = {"model": name, "case": case, "cells": n_cells, "times_s": times[case],
               "median_s": med, "cells_per_s": n_cells / med, "ratio_vs_single": single / med,
               "startup_s": startup.get(case), "max_abs_kl_diff_bits": diffs.get(case, 0.0)}
        rows.append(row)
        print(f"{case:18}{med:>10.2f}{n_cells / med:>10.1f}{single / med:>10.2f}x"
              f"{(startup.get(case) or 0):>11.1f}{row['max_abs_kl_diff_bits']:>11.1e}  "
              f"{', '.join(f'{x:.2f}' for x in times[case])}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-random,smollm2-135m-instruct")
    ap.add_argument("--layers", default="", help="layers for the embedded models (default: 5 "
                    "spread over the depth)")
    ap.add_argument("--strengths", default="-8,-4,4,8")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--generate", action="store_true", help="also greedy continuations")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import ray

    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    beh = load_behaviour("sentiment")
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, args, beh)
        summary = {f"{r['model']}:{r['case']}": {"cells_per_s": r["cells_per_s"],
                                                 "ratio_vs_single": r["ratio_vs_single"]}
                   for r in rows}
        write("ray", {k: v for k, v in vars(args).items() if k != "out"}, rows, summary,
              out_dir=args.out)  # after each model, so a partial run keeps what it measured
    ray.shutdown()


if __name__ == "__main__":
    main()
