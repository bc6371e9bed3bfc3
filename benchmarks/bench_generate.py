"""Batched greedy generation: steerlens vs Hugging Face `generate`, steered and unsteered.

Side by side in one run, on the same SmolLM2 weights (steerlens' own Hugging Face export of the
embedded GGUF) and the same left-padded chat-templated batch: Hugging Face `generate` plain and
steered (steering-vectors' `SteeringVector.apply` on the decoder block output when that package is
installed, else a plain forward hook adding the vector), steerlens `generate` unsteered and steered
(KV cache, the backend's fast decode path), and optionally steerlens on TransformerLens' own decode
path (`--with-plain`). The configurations run round-robin `--repeats` times; the ratios use the
best (least disturbed) time of each, with the median ratios recorded too, so a load spike on a
shared machine cannot favour one side. Every row generates exactly
`--tokens` tokens (EOS suppressed on both sides), so tokens/s compare directly; the greedy texts
are compared up to the first stop token. If a target is missed (steered >= 0.9x HF steered,
unsteered >= 0.9x HF plain, steered/unsteered <= 1.05x) a torch.profiler table of steerlens'
steered decode is printed. Results: results/benchmarks/generate.json (`--out` elsewhere).
Run: python benchmarks/bench_generate.py [--n 16] [--tokens 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _record import write

from steerlens.backend import fast, load_model, runtime
from steerlens.backend.loading import DTYPE_NAMES, cached_hf_export
from steerlens.generate import generate
from steerlens.methods import random_like
from steerlens.pairs import load_behaviour
from steerlens.vectors import SteeringVector


def hf_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    path = cached_hf_export(name)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def sync(device: str) -> None:
    """Wait for queued CUDA work, so a timer stops when the GPU is done."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def hf_steering(hf, layer: int, direction: torch.Tensor, strength: float):
    """A context manager adding strength * direction to the output of decoder block `layer`."""
    try:
        from steering_vectors import SteeringVector as SV
    except ImportError:
        SV = None
    if SV is not None:
        return SV({layer: direction}, layer_type="decoder_block").apply(hf, multiplier=strength), \
            "steering-vectors"
    import contextlib

    @contextlib.contextmanager
    def hooked():
        def add(mod, inp, out):
            if isinstance(out, tuple):
                return (out[0] + strength * direction, *out[1:])
            return out + strength * direction
        handle = hf.model.layers[layer].register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()
    return hooked(), "forward hook"


def cut(ids, stop):
    out = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16, help="prompts in the batch")
    ap.add_argument("--tokens", type=int, default=40, help="greedy tokens per prompt")
    ap.add_argument("--layer", type=int, default=10, help="steered layer (resid_pre)")
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--with-plain", action="store_true",
                    help="also time TransformerLens' own decode path")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both libraries)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPE_NAMES),
                    help="weights' dtype for both libraries")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    hf = hf_model(args.model, args.device, DTYPE_NAMES[args.dtype])
    beh = load_behaviour("sentiment")
    prompts = (list(beh.eval_prompts) * 8)[: args.n]
    batch = runtime.encode_prompts(model, prompts, chat=True)
    vec = random_like(SteeringVector({args.layer: torch.ones(runtime.d_model(model))})
                      .normalized(1.0), seed=0)
    direction = vec[args.layer].to(args.device, DTYPE_NAMES[args.dtype])
    stop = runtime.eos_ids(model)
    settings = dict(max_new_tokens=args.tokens, stop_at_eos=False)

    def run_hf(steered: bool):
        kw = dict(input_ids=batch.tokens, attention_mask=batch.attention_mask, do_sample=False,
                  max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                  pad_token_id=runtime.pad_id(model))
        with torch.inference_mode():
            if not steered:
                out = hf.generate(**kw)
            else:
                # steerlens resid_pre of block L == output of HF decoder block L - 1
                ctx, _ = hf_steering(hf, args.layer - 1, direction, args.strength)
                with ctx:
                    out = hf.generate(**kw)
        return [cut(r, stop) for r in out[:, batch.tokens.shape[1]:].tolist()]

    def run_sl(steered: bool, plain: bool = False, tokens: int | None = None):
        import contextlib
        ctx = fast.plain(model) if plain else contextlib.nullcontext()
        kw = {**settings, "max_new_tokens": tokens or args.tokens}
        with ctx:
            gen = (generate(model, prompts, vec, args.strength, chat=True, **kw) if steered
                   else generate(model, prompts, chat=True, **kw))
        return [cut(t, stop) for t in gen.tokens]

    _, hf_kind = hf_steering(hf, args.layer - 1, direction, args.strength)
    cases = {"hf_plain": lambda: run_hf(False), "hf_steered": lambda: run_hf(True),
             "steerlens_unsteered": lambda: run_sl(False),
             "steerlens_steered": lambda: run_sl(True)}
    if args.with_plain:
        cases["steerlens_tl_path_steered"] = lambda: run_sl(True, plain=True)
    for fn in cases.values():  # warm-up (allocator, first-call costs), also the texts
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    outputs: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            sync(args.device)
            t = time.perf_counter()
            outputs[name] = fn()
            sync(args.device)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    n_tok = args.n * args.tokens
    print(f"model {args.model}, {args.n} prompts x {args.tokens} greedy tokens, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} round-robin runs; HF steering via "
          f"{hf_kind}")
    print(f"{'case':<28} {'best s':>8} {'median s':>9} {'tokens/s':>9}  runs")
    rows = []
    for k in cases:
        print(f"{k:<28} {best[k]:>8.2f} {med[k]:>9.2f} {n_tok / best[k]:>9.1f}  "
              + " ".join(f"{t:.2f}" for t in times[k]))
        rows.append({"case": k, "best_s": best[k], "median_s": med[k],
                     "tokens_per_s": n_tok / best[k],
                     "runs_s": times[k]})
    same_plain = sum(a == b for a, b in zip(outputs["hf_plain"], outputs["steerlens_unsteered"]))
    same_steer = sum(a == b for a, b in zip(outputs["hf_steered"], outputs["steerlens_steered"]))
    summary = {
        "steered_vs_hf_steered": best["hf_steered"] / best["steerlens_steered"],
        "unsteered_vs_hf_plain": best["hf_plain"] / best["steerlens_unsteered"],
        "steered_over_unsteered": best["steerlens_steered"] / best["steerlens_unsteered"],
        "hf_steered_over_plain": best["hf_steered"] / best["hf_plain"],
        "median_steered_vs_hf_steered": med["hf_steered"] / med["steerlens_steered"],
        "median_unsteered_vs_hf_plain": med["hf_plain"] / med["steerlens_unsteered"],
        "median_steered_over_unsteered": med["steerlens_steered"] / med["steerlens_unsteered"],
        "identical_texts_unsteered": f"{same_plain}/{args.n}",
        "identical_texts_steered": f"{same_steer}/{args.n}",
        "hf_steering": hf_kind,
    }
    if args.with_plain:
        summary["fast_vs_tl_path_steered"] = (best["steerlens_tl_path_steered"]
                                              / best["steerlens_steered"])
    print("ratios from the best run of each (median-run ratios in the JSON):")
    print(f"steered tokens/s vs HF steered:   {summary['steered_vs_hf_steered']:.3f}x "
          "(target >= 0.9)")
    print(f"unsteered tokens/s vs HF plain:   {summary['unsteered_vs_hf_plain']:.3f}x "
          "(target >= 0.9)")
    print(f"steered / unsteered time:         {summary['steered_over_unsteered']:.3f}x "
          "(target <= 1.05)")
    print(f"HF steered / plain time:          {summary['hf_steered_over_plain']:.3f}x")
    if args.with_plain:
        print(f"TL decode path / fast path:       {summary['fast_vs_tl_path_steered']:.3f}x")
    print(f"identical greedy texts (to the first stop token): unsteered {same_plain}/{args.n}, "
          f"steered {same_steer}/{args.n}")
    missed = (summary["steered_vs_hf_steered"] < 0.9 or summary["unsteered_vs_hf_plain"] < 0.9
              or summary["steered_over_unsteered"] > 1.05)
    summary["targets_met"] = not missed
    if missed:
        short = min(args.tokens, 10)
        print(f"A target was missed; where steerlens' steered decode spends its time ({args.n} "
              f"prompts x {short} tokens, self CPU time by op):")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_sl(True, tokens=short)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    write("generate", {**{k: v for k, v in vars(args).items() if k != "out"},
                       "timing": "best and median of round-robin repeats"}, rows, summary,
          device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
