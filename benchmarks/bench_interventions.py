"""Overhead of each intervention kind relative to an unsteered forward, timed side by side.

One batch of prompts, one process, the same forward (`steered_forward`, full logits) under: no
steering; additive steering at one layer (`Injection`); directional ablation at every layer and
every residual site (`Ablation`, 3 x n_layers hooks); SAE feature clamping at the SAE's site
(`FeatureClamp`, the shipped SAE, 1 and 20 features); a per-head edit (`HeadSteer`) and a head
ablation (`HeadAblation`). Conditions are interleaved within each repeat (so drift in machine load
hits them all alike) and each condition's median over repeats is reported with its ratio to the
unsteered median (and the median over repeats of the ratio to that repeat's unsteered time,
which is robust to slow drift in machine load). The hooks are attached before the timer starts
(the forward is what is timed). Because whole-forward times on a shared machine drift by more than
the edits cost, the edits are also timed on their own ("edits s": `apply` at every site the
intervention touches, on activations of the batch's shape), as a fraction of the unsteered
forward. Writes results/benchmarks/interventions.json with the machine
description.

Run: python benchmarks/bench_interventions.py [--model smollm2-135m-instruct] [--n 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from steerlens.backend import load_model, runtime
from steerlens.interventions.ablation import Ablation
from steerlens.interventions.clamp import FeatureClamp
from steerlens.interventions.heads import HeadAblation, HeadSteer
from steerlens.pairs import load_behaviour
from steerlens.sae import list_shipped_saes, load_sae, random_sae
from steerlens.steer import Injection, steer, steered_forward
from steerlens.vectors import SteeringVector

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device,
            "cuda": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}


def conditions(model) -> dict:
    d = runtime.d_model(model)
    n_layers = runtime.n_layers(model)
    mid = n_layers // 2
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({mid: torch.randn(d, generator=g)}, model_id=runtime.model_id(model))
    mine = [n for n in list_shipped_saes()
            if n.lower().startswith(runtime.model_id(model).split("/")[-1].lower())]
    if mine:
        sae, sae_name = load_sae(mine[0], device=str(runtime.model_device(model))), mine[0]
    else:  # a random SAE of the model's width (timing only)
        sae = random_sae(d, 8 * d, hook_name=runtime.hook_name(mid, "resid_pre"),
                         model_name=runtime.model_id(model))
        sae_name = "random_sae(8 x d_model)"
    n_heads, _, d_head = runtime.attention_shape(model)
    return {
        "unsteered": None,
        f"add (1 layer, L{mid})": Injection(vec, 4.0),
        f"ablation (all {n_layers} layers x 3 residual sites)": Ablation(vec),
        "clamp (1 SAE feature)": FeatureClamp(sae, [1], value=10.0),
        "clamp (20 SAE features)": FeatureClamp(sae, list(range(20)), value=10.0),
        f"head add (L{mid} h{n_heads // 2})": HeadSteer(mid, n_heads // 2,
                                                         torch.randn(d_head, generator=g)),
        f"head ablation (L{mid} h{n_heads // 2})": HeadAblation(mid, n_heads // 2),
    }, sae_name


def time_one(model, batch, iv) -> float:
    if iv is None:
        t = time.perf_counter()
        steered_forward(model, batch, None)
        return time.perf_counter() - t
    with steer(model, iv) as s:
        t = time.perf_counter()
        steered_forward(model, batch, s)
        return time.perf_counter() - t


def edit_cost(model, batch, iv, repeats: int = 20) -> float:
    """Median time of the intervention's own edits for one forward: `apply` at every site it
    touches, on activations of this batch's shape (a bound on its overhead that machine-load noise
    in whole forwards cannot hide)."""
    if iv is None:
        return 0.0
    from steerlens.interventions.base import PositionContext

    b, p = batch.tokens.shape
    n_heads, _, d_head = runtime.attention_shape(model)
    dt, dev = runtime.model_dtype(model), runtime.model_device(model)
    bound, ctx, total = iv.bind(model), PositionContext(), 0.0
    for hook, layer in iv.sites(model):
        shape = (b, p, n_heads, d_head) if hook.endswith("hook_z") else (b, p, runtime.d_model(model))
        act = torch.randn(shape, generator=torch.Generator().manual_seed(layer)).to(dev, dt)
        ts = []
        with torch.inference_mode():
            for _ in range(repeats):
                t = time.perf_counter()
                bound.apply(act, layer, hook, 1.0, None, ctx)
                ts.append(time.perf_counter() - t)
        total += statistics.median(ts)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=8, help="prompts in the batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "interventions.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    prompts = (list(load_behaviour("sentiment").eval_prompts) * 4)[: args.n]
    batch = runtime.encode_prompts(model, prompts, chat=runtime.is_instruct(model))
    conds, sae_name = conditions(model)
    for iv in conds.values():  # warm-up (and a check that every kind runs)
        time_one(model, batch, iv)
    times: dict[str, list[float]] = {k: [] for k in conds}
    for _ in range(args.repeats):
        for name, iv in conds.items():
            times[name].append(time_one(model, batch, iv))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["unsteered"]
    # each repeat's time over the same repeat's unsteered time: robust to slow drift in load
    paired = {k: statistics.median(t / b for t, b in zip(v, times["unsteered"]))
              for k, v in times.items()}
    edits = {k: edit_cost(model, batch, iv) for k, iv in conds.items()}
    info = machine(args.device)
    print(f"model {args.model}, batch {tuple(batch.tokens.shape)} tokens, SAE {sae_name}, "
          f"median of {args.repeats} interleaved repeats, torch threads {info['torch_threads']}, "
          f"{info['cpu']}")
    print(f"{'condition':<48} {'median s':>9} {'min s':>8} {'ratio':>7} {'paired':>7} "
          f"{'edits s':>8} {'edits/fwd':>9}")
    for k in conds:
        print(f"{k:<48} {med[k]:>9.4f} {min(times[k]):>8.4f} {med[k] / base:>6.3f}x "
              f"{paired[k]:>6.3f}x {edits[k]:>8.5f} {edits[k] / base:>8.2%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "batch_shape": list(batch.tokens.shape), "sae": sae_name,
        "repeats": args.repeats, "machine": info,
        "conditions": [{"name": k, "median_s": med[k], "min_s": min(times[k]),
                        "times_s": times[k], "ratio_to_unsteered": med[k] / base,
                        "median_paired_ratio": paired[k], "edit_cost_s": edits[k],
                        "edit_cost_over_unsteered": edits[k] / base} for k in conds],
        "note": "hooks attached before timing; full-logit forward; conditions interleaved "
                "within each repeat",
    }, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
