"""Do attention heads with small key-Gram eigengaps respond more to the same perturbation? (per head)

The eigengap claim (`steerlens.spectral.eigengap`) scores a layer by its weakest head. This
analysis tests it at the grain of the head itself, on SmolLM2-135M-Instruct:

1. Gaps. For every layer in `--layers` (default 6..23, the middle of the 30 blocks), the relative
   eigengap Δ = (λ1 - λ2)/λ1 of each key/value head's key Gram matrix (pre- and post-rotary),
   averaged over the prompts, and of each query head's attention pattern. SmolLM2 has 9 query
   heads sharing 3 key/value heads: query head h reads key/value head h // 3, so the key gap
   belongs to a key/value head (3 per layer) and the pattern gap to a query head (9 per layer).
2. Perturbation. Each query head's output z (before W_O) gets `HeadSteer(layer, head, v)` with v a
   seeded random unit vector times that head's typical |z| (the median over the prompts' real
   tokens), `--seeds` vectors per head; and, separately, the head is zero-ablated
   (`HeadAblation`). The edit is made at the last prompt position only (where the next token is
   predicted), on a frozen KV cache of the unedited prompt; the batch holds one copy of the
   prompts per head and per-row strengths switch each head's edit on for its own copy, so one
   single-token forward edits all 9 heads of a layer.
3. Response. Next-token KL(base || perturbed) in bits, averaged over prompts and seeds; also the
   size of the residual change it made (|Δ attn_out| at that position) and KL per unit squared
   change (KL grows ~quadratically with a small perturbation, and heads differ in |W_O|).
4. Test. Spearman correlation between gap and response across heads: (a) key/value heads (the
   unit that has a key Gram; response = mean over its 3 query heads), (b) query heads with their
   pattern gap. 95% bootstrap CI and a two-sided permutation p (`steerlens.stats.correlate`);
   a random-head control (gaps shuffled across heads, 2000 times: the band of r a random
   assignment gives); and the same within layers (gap and log response centred per layer,
   permutations within layers), since both vary with depth. The claim predicts r < 0.

Results in results/heads/: head_eigengap.json (settings, per-head rows, correlations, n),
head_rows.csv; figure figures/head_eigengap.html.

    python -m analyses.head_eigengap [--layers 6,...,23] [--n-prompts 12] [--seeds 3] [--threads 1]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from steerlens.backend import runtime
from steerlens.figures import save_html
from steerlens.figures.heads import head_gap_response
from steerlens.interventions.heads import HeadAblation, HeadSteer, kv_head
from steerlens.measures import kl_bits
from steerlens.pairs import load_behaviour
from steerlens.spectral.eigengap import eigengaps
from steerlens.stats import correlate
from steerlens.steer import steer, steered_forward

from . import command
from ._common import GalleryEntry, add_list, log, parser, start, write_csv, write_json
from .findings import Finding, print_findings, save_findings

NAME = "head_eigengap"
OUT_JSON = "head_eigengap.json"
DEFAULT_LAYERS = list(range(6, 24))
BEHAVIOURS = ("sentiment", "formality", "french")


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0], fresh=False)
    add_list(p, "--layers", int, DEFAULT_LAYERS, "layers whose heads are perturbed")
    p.add_argument("--n-prompts", type=int, default=12, help="evaluation prompts")
    p.add_argument("--seeds", type=int, default=3, help="random vectors per head")
    p.add_argument("--n-shuffle", type=int, default=2000, help="random-head shuffles")
    return p


def prompts_for(n: int) -> list[str]:
    """The first prompts of each behaviour's evaluation set, interleaved, n in all."""
    lists = [list(load_behaviour(b).eval_prompts) for b in BEHAVIOURS]
    out = [p for group in zip(*lists) for p in group]
    if n > len(out):
        raise ValueError(f"--n-prompts must be at most {len(out)}, got {n}.")
    return out[:n]


# ------------------------------------------------------------------------------ measurement


def z_norms(model, batch, layers) -> dict[int, np.ndarray]:
    """Median |z| per query head over the batch's real tokens, per layer."""
    got: dict[int, np.ndarray] = {}
    real = batch.attention_mask.bool().cpu()

    def grab(layer):
        def hook(act, hook):
            got[layer] = act.detach().float().cpu()[real].norm(dim=-1).median(0).values.numpy()
        return hook

    hooks = [(runtime.attention_hook_name(la, "z"), grab(la)) for la in layers]
    with runtime.attached(model, hooks):
        runtime.forward(model, batch, stop_at_layer=max(layers) + 1, return_type=None)
    return got


def _split(batch):
    """(prefix batch, last-token feed, offset) for editing only the last prompt position."""
    w = batch.tokens.shape[1]
    prefix = runtime.TokenBatch(batch.tokens[:, :-1], batch.attention_mask[:, :-1],
                                batch.span_start, batch.span_end)
    last = runtime.TokenBatch(batch.tokens[:, -1:], batch.attention_mask[:, -1:],
                              batch.span_start, batch.span_end)
    return prefix, last, w - 1


def repeat_batch(batch, k: int):
    """The batch stacked k times (block j holds copies of every prompt, for the j-th edit)."""
    return runtime.TokenBatch(*(torch.cat([t] * k) for t in (
        batch.tokens, batch.attention_mask, batch.span_start, batch.span_end)))


class LastPosition:
    """Runs the last prompt position on a frozen KV cache of the prefix (built once), with or
    without edits, returning next-token logits and attn_out at the last position per layer.

    The batch holds one block of rows per head; each head's edit gets strength 1 on its block and
    0 elsewhere (per-row strengths), so one forward edits every head of a layer at once.
    """

    def __init__(self, model, batch) -> None:
        self.model, self.batch = model, batch
        prefix, self.last, self.offset = _split(batch)
        self.cache = runtime.new_kv_cache(model, batch.tokens.shape[0])
        steered_forward(model, prefix, None, kv_cache=self.cache)
        self.cache.freeze()

    def run(self, layers, ivs=(), rows=None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        got = {}

        def grab(layer):
            def hook(act, hook):
                got[layer] = act[:, -1].detach().float().clone()
            return hook

        hooks = [(runtime.hook_name(la, "attn_out"), grab(la)) for la in layers]
        if not ivs:
            with runtime.attached(self.model, hooks):
                logits = steered_forward(self.model, self.batch, None, feed=self.last,
                                         offset=self.offset, kv_cache=self.cache)
        else:
            with steer(self.model, list(ivs)) as s, runtime.attached(self.model, hooks):
                for i, r in enumerate(rows):
                    s.set_strength(i, r)
                logits = steered_forward(self.model, self.batch, s, feed=self.last,
                                         offset=self.offset, kv_cache=self.cache)
        return logits[:, -1].float(), got


def unit_vectors(d_head: int, seeds: int, layer: int, head: int) -> list[torch.Tensor]:
    out = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(1_000_003 * layer + 1009 * head + s)
        v = torch.randn(d_head, generator=g, dtype=torch.float64)
        out.append((v / v.norm()).float())
    return out


def measure(model, prompts, layers, seeds: int, progress: bool) -> tuple[pd.DataFrame, dict]:
    """One row per (layer, query head): gaps, |z|, responses to the random vectors and ablation."""
    n_heads, n_kv, d_head = runtime.attention_shape(model)
    gaps = eigengaps(model, prompts, layers)
    keys, rkeys, pat = (gaps.table(k).head_gap for k in ("keys", "rotated_keys", "pattern"))
    batch = runtime.encode_prompts(model, prompts, chat=runtime.is_instruct(model))
    n = len(prompts)
    norms = z_norms(model, batch, layers)
    t0 = time.perf_counter()
    lp = LastPosition(model, repeat_batch(batch, n_heads))
    if progress:
        log(f"KV cache of {n_heads} x {n} prompt rows built ({time.perf_counter() - t0:.0f}s)")
    full = steered_forward(model, batch, None)[:, -1].float()
    base, a0 = lp.run(layers)
    cache_err = float((base[:n] - full).abs().max())
    rows_on = [[1.0 if j // n == h else 0.0 for j in range(n * n_heads)] for h in range(n_heads)]

    def per_head(logits, a1, layer):
        kl = kl_bits(base, logits).numpy().reshape(n_heads, n)
        d = (a1[layer] - a0[layer]).norm(dim=-1).numpy().reshape(n_heads, n)
        return kl, d

    rows = []
    for li, layer in enumerate(layers):
        kls, ds = [], []
        for s in range(seeds):
            ivs = [HeadSteer(layer, h, unit_vectors(d_head, seeds, layer, h)[s]
                             * float(norms[layer][h])) for h in range(n_heads)]
            kl, d = per_head(*lp.run([layer], ivs, rows_on), layer)
            kls.append(kl)
            ds.append(d)
        kl_abl, d_abl = per_head(*lp.run([layer], [HeadAblation(layer, h) for h in range(n_heads)],
                                         rows_on), layer)
        kls, ds = np.stack(kls), np.stack(ds)  # [seed, head, prompt]
        for head in range(n_heads):
            kv = kv_head(model, head)
            rows.append({
                "layer": layer, "head": head, "kv_head": kv,
                "key_gap": float(keys[li, kv]), "rotated_key_gap": float(rkeys[li, kv]),
                "pattern_gap": float(pat[li, head]), "z_norm": float(norms[layer][head]),
                "kl_bits": float(kls[:, head].mean()),
                "kl_bits_per_prompt": kls[:, head].mean(0).tolist(),
                "resid_change": float(ds[:, head].mean()),
                "kl_per_change2": float((kls[:, head] / np.maximum(ds[:, head] ** 2, 1e-12)).mean()),
                "ablation_kl_bits": float(kl_abl[head].mean()),
                "ablation_resid_change": float(d_abl[head].mean()),
            })
        if progress:
            log(f"layer {layer}: {n_heads} heads x ({seeds} vectors + ablation) "
                f"({time.perf_counter() - t0:.0f}s)")
    info = {"n_tokens": list(gaps.n_tokens), "cache_vs_full_max_abs_logit_diff": cache_err,
            "n_heads": n_heads, "n_kv_heads": n_kv, "d_head": d_head}
    return pd.DataFrame(rows), info


# ------------------------------------------------------------------------------ statistics


def shuffle_band(x: np.ndarray, y: np.ndarray, n: int, seed: int,
                 groups: np.ndarray | None = None) -> dict:
    """Spearman r of y against x shuffled across units (within groups when given): the band of r
    a random assignment of gaps to heads gives, and how often it reaches |r_observed|."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    rx, ry = rankdata(x), rankdata(y)
    r_obs = float(np.corrcoef(rx, ry)[0, 1])
    rs = np.empty(n)
    for i in range(n):
        if groups is None:
            perm = rng.permutation(len(x))
        else:
            perm = np.arange(len(x))
            for g in np.unique(groups):
                idx = np.flatnonzero(groups == g)
                perm[idx] = rng.permutation(idx)
        rs[i] = np.corrcoef(rankdata(x[perm]), ry)[0, 1]
    return {"r": r_obs, "band_low": float(np.quantile(rs, 0.025)),
            "band_high": float(np.quantile(rs, 0.975)),
            "p_perm": float((1 + np.sum(np.abs(rs) >= abs(r_obs) - 1e-12)) / (1 + n)),
            "n_shuffles": n}


def _centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = values.astype(float).copy()
    for g in np.unique(groups):
        m = groups == g
        out[m] -= out[m].mean()
    return out


def correlations(df: pd.DataFrame, n_shuffle: int, seed: int) -> dict:
    """Gap vs response at the key/value-head and query-head grain, pooled and within layers."""
    kvdf = df.groupby(["layer", "kv_head"], as_index=False).agg(
        key_gap=("key_gap", "first"), rotated_key_gap=("rotated_key_gap", "first"),
        kl_bits=("kl_bits", "mean"), kl_per_change2=("kl_per_change2", "mean"),
        ablation_kl_bits=("ablation_kl_bits", "mean"))
    tests = {
        "kv_keygap_vs_kl": (kvdf, "key_gap", "kl_bits"),
        "kv_rotkeygap_vs_kl": (kvdf, "rotated_key_gap", "kl_bits"),
        "kv_keygap_vs_kl_per_change2": (kvdf, "key_gap", "kl_per_change2"),
        "kv_keygap_vs_ablation_kl": (kvdf, "key_gap", "ablation_kl_bits"),
        "q_patterngap_vs_kl": (df, "pattern_gap", "kl_bits"),
        "q_keygap_vs_kl": (df, "key_gap", "kl_bits"),
        "q_patterngap_vs_ablation_kl": (df, "pattern_gap", "ablation_kl_bits"),
    }
    out = {}
    for i, (name, (t, gx, ry)) in enumerate(tests.items()):
        x, y = t[gx].to_numpy(float), t[ry].to_numpy(float)
        c = correlate(x, y, method="spearman", n_boot=2000, n_perm=2000, seed=seed + i)
        layers = t["layer"].to_numpy()
        logy = np.log(np.maximum(y, 1e-12))
        xc, yc = _centred(x, layers), _centred(logy, layers)
        cw = correlate(xc, yc, method="spearman", n_boot=2000, n_perm=2, seed=seed + i)
        out[name] = {
            "gap": gx, "response": ry, "unit": "kv head" if t is kvdf else "query head",
            "n": int(len(t)), "spearman_r": c.r, "ci_low": c.ci_low, "ci_high": c.ci_high,
            "p_perm": c.p_perm,
            "random_head_control": shuffle_band(x, y, n_shuffle, seed + 100 + i),
            "within_layer": {"spearman_r": cw.r, "ci_low": cw.ci_low, "ci_high": cw.ci_high,
                             **{k: v for k, v in shuffle_band(xc, yc, n_shuffle, seed + 200 + i,
                                                              groups=layers).items()
                                if k != "r"}},
        }
    return out


def verdict(c: dict) -> str:
    lo, hi = c["ci_low"], c["ci_high"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "undefined"
    if hi < 0:
        return "negative: small gaps respond more (as the claim predicts)"
    if lo > 0:
        return "POSITIVE: small gaps respond LESS (against the claim)"
    return "CI includes 0 (null)"


def findings_for(corr: dict) -> list[Finding]:
    out = []
    for name, c in corr.items():
        rc = c["random_head_control"]
        w = c["within_layer"]
        out.append(Finding(
            NAME, f"Spearman r, {c['gap']} vs {c['response']} ({c['unit']}s)", c["spearman_r"],
            c["ci_low"], c["ci_high"], str(c["n"]),
            f"shuffled heads: 95% band [{rc['band_low']:+.2f}, {rc['band_high']:+.2f}], "
            f"p={rc['p_perm']:.3f}",
            f"{verdict(c)}; within layers r={w['spearman_r']:+.2f} [{w['ci_low']:+.2f}, "
            f"{w['ci_high']:+.2f}], within-layer shuffle p={w['p_perm']:.3f}",
            headline=name in ("kv_keygap_vs_kl", "q_patterngap_vs_kl")))
    return out


# ------------------------------------------------------------------------------ figures


def draw(out: Path, fig_dir: Path, cmd: str | None = None) -> list[GalleryEntry]:
    data = json.loads((out / OUT_JSON).read_text(encoding="utf-8"))
    fig = head_gap_response(data["rows"], data["correlations"], model_name=data["model"])
    path = save_html(fig, Path(fig_dir) / "head_eigengap.html")
    return [GalleryEntry(NAME, path, "Per-head eigengap vs response to a same-norm perturbation",
                         "Key/value-head key-Gram gap and query-head pattern gap against next-token "
                         f"KL after a random edit of the head's output (n={len(data['rows'])} "
                         "query heads).", cmd or command(NAME))]


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    out = Path(results_dir)
    return draw(out, figures_dir) if (out / OUT_JSON).exists() else []


# ------------------------------------------------------------------------------ main


def main(argv=None, model=None) -> dict:
    args, ctx, model = start(NAME, build_parser(), argv, model)
    layers = [2, 3] if ctx.quick else sorted(set(args.layers))
    n_prompts, seeds = (3, 1) if ctx.quick else (args.n_prompts, args.seeds)
    n_shuffle = 200 if ctx.quick else args.n_shuffle
    bad = [la for la in layers if not 0 <= la < runtime.n_layers(model)]
    if bad:
        raise ValueError(f"--layers {bad} out of range 0..{runtime.n_layers(model) - 1}.")
    prompts = prompts_for(n_prompts)
    t0 = time.perf_counter()
    log(f"{runtime.model_id(model)}: {len(layers)} layers, {n_prompts} prompts, {seeds} seeds")
    df, info = measure(model, prompts, layers, seeds, ctx.progress)
    corr = correlations(df, n_shuffle, ctx.seed)
    settings = {"model": runtime.model_id(model), "layers": layers, "n_prompts": n_prompts,
                "seeds": seeds, "n_shuffle": n_shuffle, "position": "last prompt token",
                "perturbation": "random unit vector x median |z| of the head, added to z",
                "ablation": "zero", "behaviour_prompts": list(BEHAVIOURS), **info,
                "seconds": time.perf_counter() - t0}
    result = {"model": runtime.model_id(model), "settings": settings, "prompts": prompts,
              "correlations": corr, "rows": df.to_dict(orient="records"),
              "head_mapping": "query head h reads key/value head h // (n_heads / n_kv_heads); "
                              "key gaps are per key/value head, pattern gaps per query head"}
    write_json(ctx.out / OUT_JSON, result)
    write_csv(ctx.out / "head_rows.csv", df.drop(columns=["kl_bits_per_prompt"]))
    findings = findings_for(corr)
    print_findings(findings)
    notes = ["The edit is at the last prompt position only (frozen KV cache of the prompt), so "
             "it bypasses the head's own attention: a gap effect must come through what the "
             "head's output does downstream.",
             "Key gaps are per key/value head (3 per layer in SmolLM2); each is shared by 3 query "
             "heads, so query-head correlations with the key gap have ties."]
    save_findings(ctx, findings, settings, notes)
    if not ctx.quick:
        draw(ctx.out, ctx.fig_dir)
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return result


if __name__ == "__main__":
    main()
