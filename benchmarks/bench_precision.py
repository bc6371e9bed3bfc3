"""Half precision against float32: the tolerance table for bf16 and fp16 on the same weights.

One float32 model and one model per half dtype are loaded from the same cache (cast after the
load) and compared on: last-position logits (max |diff|, relative to the largest |logit|, and top-1
agreement), the next-token distribution (KL(fp32 || half) in bits), the steered next-token KL of a
CAA vector (|diff| in bits and relative), the CAA vector itself (cosine to the float32 vector, per
layer: minimum and mean), text perplexity (relative difference) and greedy text (rows identical,
and the mean length of the common token prefix). Every reduction (log-softmax, KL, means) runs
in float32/float64 in the library whatever the model dtype, so the table measures the model's own
rounding, not the measure's. Written to results/benchmarks/precision.json (`--out` elsewhere).
Run: python benchmarks/bench_precision.py [--model smollm2-135m-instruct] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _record import write

import steerlens
from steerlens.backend import load_model, runtime
from steerlens.generate import generate
from steerlens.measures import kl_bits, next_token_kl
from steerlens.measures.perplexity import text_perplexity
from steerlens.methods import build_vector
from steerlens.pairs import ContrastSet, load_behaviour

HELDOUT = Path(steerlens.__file__).parent / "data" / "heldout.txt"
HELDOUT_CHARS = 240  # fits the tiny model's 256-token context (byte tokens)


def last_logits(model, prompts: list[str]) -> torch.Tensor:
    """Last-position logits of each prompt (chat-templated), upcast to float64 for comparison."""
    batch = runtime.encode_prompts(model, prompts, chat=runtime.has_chat_template(model))
    resid = runtime.forward(model, batch, stop_at_layer=runtime.n_layers(model), return_type=None)
    return runtime.unembed(model, resid[:, -1]).double().cpu()


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure(model, pairs, prompts, texts, layers, steer_layer, strength, n_tokens):
    """Every quantity of the table for one model (the same calls for each dtype)."""
    chat = runtime.has_chat_template(model)
    vec = build_vector(model, pairs, layers, show_progress=False)
    return {
        "logits": last_logits(model, prompts),
        "vector": vec,
        "steered_kl": np.asarray(next_token_kl(model, prompts, vec.layer(steer_layer), strength,
                                               chat=chat).bits),
        "ppl": text_perplexity(model, texts).pooled_perplexity,
        "greedy": generate(model, prompts, chat=chat, max_new_tokens=n_tokens).tokens,
    }


def compare(ref: dict, got: dict, layers) -> dict:
    """The table's row: how far `got` (a half model) is from `ref` (float32)."""
    d = (got["logits"] - ref["logits"]).abs()
    cos = [float(torch.nn.functional.cosine_similarity(
        got["vector"][lay].double(), ref["vector"][lay].double(), dim=0)) for lay in layers]
    kl = kl_bits(ref["logits"], got["logits"]).numpy()
    dkl = np.abs(got["steered_kl"] - ref["steered_kl"])
    return {
        "logit_max_abs_diff": float(d.max()),
        "logit_rel_diff": float(d.max() / ref["logits"].abs().max()),
        "top1_agreement": float((got["logits"].argmax(-1) == ref["logits"].argmax(-1)).double()
                                .mean()),
        "next_token_kl_bits_mean": float(kl.mean()),
        "next_token_kl_bits_max": float(kl.max()),
        "steered_kl_ref_mean_bits": float(ref["steered_kl"].mean()),
        "steered_kl_max_abs_diff_bits": float(dkl.max()),
        "steered_kl_rel_diff_of_mean": float(abs(got["steered_kl"].mean() - ref["steered_kl"].mean())
                                             / ref["steered_kl"].mean()),
        "caa_cosine_min": float(min(cos)),
        "caa_cosine_mean": float(np.mean(cos)),
        "perplexity_ref": float(ref["ppl"]),
        "perplexity_rel_diff": float(abs(got["ppl"] - ref["ppl"]) / ref["ppl"]),
        "greedy_identical": float(np.mean([a == b for a, b in zip(got["greedy"], ref["greedy"])])),
        "greedy_common_prefix_mean": float(np.mean([common_prefix(a, b) for a, b in
                                                    zip(got["greedy"], ref["greedy"])])),
    }


COLUMNS = [("logit_rel_diff", "logit rel", ".2e"), ("top1_agreement", "top1", ".2f"),
           ("next_token_kl_bits_max", "KL max b", ".2e"),
           ("steered_kl_rel_diff_of_mean", "stKL rel", ".2e"),
           ("caa_cosine_min", "cos min", ".5f"), ("perplexity_rel_diff", "ppl rel", ".2e"),
           ("greedy_identical", "greedy =", ".2f"), ("greedy_common_prefix_mean", "prefix", ".1f")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", default=None,
                    help="model name (repeatable; default tiny-random and smollm2-135m-instruct)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", "--dtype", dest="dtypes", default="bf16,fp16",
                    help="half dtypes compared with float32, comma-separated (any load_model spelling)")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=24, help="greedy tokens per prompt")
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true", help="8 pairs, 4 prompts, 8 tokens")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.pairs, args.prompts, args.tokens = 8, 4, 8
    models = args.model or ["tiny-random", "smollm2-135m-instruct"]
    beh = load_behaviour("sentiment")
    pairs = ContrastSet(tuple(beh.train.pairs) + tuple(beh.test.pairs), "sentiment")[: args.pairs]
    prompts = (list(beh.eval_prompts) * 4)[: args.prompts]
    texts = [t[:HELDOUT_CHARS] for t in HELDOUT.read_text(encoding="utf-8").split("\n\n")
             if t.strip()][:4]
    rows = []
    header = f"{'model':<22} {'dtype':<6}" + "".join(f" {c[1]:>9}" for c in COLUMNS)
    print(header)
    for name in models:
        t0 = time.perf_counter()
        ref_model = load_model(name, device=args.device)
        # layer 0 reads the token embedding at the last token, the same in both texts of a pair
        # (a zero direction, no cosine): vectors are compared from layer 1 up
        layers = list(range(1, runtime.n_layers(ref_model)))
        steer_layer = layers[len(layers) // 2]
        ref = measure(ref_model, pairs, prompts, texts, layers, steer_layer, args.strength,
                      args.tokens)
        del ref_model
        for dt in args.dtypes.split(","):
            model = load_model(name, device=args.device, dtype=dt)
            got = measure(model, pairs, prompts, texts, layers, steer_layer, args.strength,
                          args.tokens)
            del model
            row = {"model": name, "dtype": dt, "n_prompts": len(prompts), "n_pairs": len(pairs),
                   "n_layers": len(layers), "steer_layer": steer_layer,
                   "strength": args.strength, "greedy_tokens": args.tokens,
                   **compare(ref, got, layers)}
            rows.append(row)
            print(f"{name:<22} {dt:<6}" + "".join(f" {row[k]:>9{f}}" for k, _, f in COLUMNS),
                  flush=True)
        print(f"  ({name}: {time.perf_counter() - t0:.0f} s)")
    summary = {f"{r['model']}/{r['dtype']}": {k: r[k] for k, _, _ in COLUMNS} for r in rows}
    write("precision", vars(args), rows, summary, device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
