"""Train the shipped SAE: corpus -> activation cache -> SAELens training, one resumable command.

Builds the offline corpus from installed text (~2.7M SmolLM2 tokens), caches 520K activations of
`blocks.12.hook_resid_pre` of SmolLM2-135M-Instruct (position 0 excluded; see
steerlens.sae.activations; 4 shards held out for evaluation), trains a standard (L1) SAE with 8x
expansion (4608 features) on 1,024,000 samples (about two epochs over the cached activations) and,
for the sparsity trade-off, two extra L1 settings on the same samples. bf16 autocast (AMX) is on by
default for the model forward and the SAE matmuls. Every stage is cached and resumable: re-running
the same command skips finished work. Writes results/sae_training/results.json and, with --ship,
the main SAE (fp16, SAELens format) under steerlens/data/saes/<name>/.

    python -m analyses.train_sae --threads 2 --ship
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from steerlens.backend import runtime
from steerlens.backend.loading import cache_root
from steerlens.figures import save_html
from steerlens.figures.sae import sparsity_tradeoff
from steerlens.io import atomic_write_text
from steerlens.sae.activations import cache_activations
from steerlens.sae.corpus import cached_corpus
from steerlens.sae.train import SAEMetrics, SAETrainConfig, result_dict, save_sae, train_sae
from steerlens.sites import Site

from . import ROOT, command
from ._common import Context, GalleryEntry, add_list, parser, start
from .findings import Finding, save_findings

NAME = "train_sae"
SHIP_ROOT = ROOT / "steerlens" / "data" / "saes"
COMMAND = command(NAME, "--threads 2 --ship")  # the command that made the shipped SAE


def draw(out: Path, fig_dir: Path) -> list[GalleryEntry]:
    """The sparsity trade-off figure from a saved results.json (no model, no training)."""
    data = json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))
    runs = {f"L1={r['config']['l1_coefficient']:g}": SAEMetrics(**r["metrics"])
            for r in data["runs"]}
    ood = {f"L1={r['config']['l1_coefficient']:g}": SAEMetrics(**r["heldout_check"])
           for r in data["runs"] if r.get("heldout_check")}
    path = save_html(sparsity_tradeoff(runs, ood), Path(fig_dir) / "sae_training_tradeoff.html")
    return [GalleryEntry(
        "train_sae", path, "SAE sparsity trade-off",
        f"Explained variance vs L0 of the SAEs trained at {len(runs)} L1 settings on "
        f"{data['hook_name']} of {data['model']}, on held-out corpus activations and on general "
        "prose.", COMMAND)]


make_figures = draw  # the gallery hook: the saved training results in results_dir


def findings_from_results(data: dict) -> list[Finding]:
    """One row per trained L1 setting, from a saved results.json: explained variance on held-out
    corpus activations (with MSE, L0 and dead features) and on general prose."""
    rows = []
    for r in data["runs"]:
        m, held = r["metrics"], r.get("heldout_check") or {}
        l1 = r["config"]["l1_coefficient"]
        healthy = m["explained_variance"] > 0.7 and m["dead_fraction"] < 0.1
        rows.append(Finding(
            NAME, f"SAE at L1={l1:g} ({r['config']['d_sae']} features on {data['hook_name']}): "
            "explained variance on held-out corpus activations", m["explained_variance"], None,
            None, f"{m['n_tokens']} activations", "-",
            f"MSE {m['mse']:.3g}, L0 {m['l0']:.0f}, dead {m['dead_fraction']:.1%}; "
            + ("healthy in distribution" if healthy else "not healthy in distribution")
            + (f"; EV on general prose {held['explained_variance']:.2f} ({held['n_tokens']} "
               "tokens)" if held else ""), headline=True))
    return rows


def save_run_findings(ctx: Context) -> Path:
    """Write `ctx.out`/findings.json from the training results saved there (results.json)."""
    results = json.loads((ctx.out / "results.json").read_text(encoding="utf-8"))
    return save_findings(ctx, findings_from_results(results),
                         {k: results[k] for k in ("model", "hook_name", "activations")},
                         notes=["Rules of thumb for a healthy SAE: explained variance > 0.7, L0 "
                                "in the tens to low hundreds, < 10% dead features."])


def build_parser():
    ap = parser(NAME, __doc__.splitlines()[0], quick=False, fresh=False)
    ap.set_defaults(threads=2)
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--component", default="resid_pre")
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--cache-tokens", type=int, default=520_000)
    ap.add_argument("--train-tokens", type=int, default=1_024_000)
    ap.add_argument("--l1", type=float, default=5.0, help="L1 coefficient of the main SAE")
    add_list(ap, "--extra-l1", float, [10.0, 2.0], "L1 coefficients of the trade-off SAEs "
             "(none: --extra-l1 with no value)", nargs="*")
    ap.add_argument("--extra-train-tokens", type=int, default=1_024_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--eval-shards", type=int, default=4)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast for the model forward and SAE training (AMX CPUs)")
    ap.add_argument("--ship", action="store_true", help="copy the main SAE into steerlens/data/saes")
    ap.add_argument("--ship-l1", type=float, default=None, help="ship this L1 setting instead")
    ap.add_argument("--name", default="smollm2-135m-instruct-l12-resid_pre-4608")
    return ap


def main(argv=None, model=None) -> dict:
    """Run the training; `model` reuses an already loaded model (it must match --model)."""
    t_all = time.perf_counter()
    args, ctx, model = start(NAME, build_parser(), argv, model)
    timings: dict[str, float] = {}
    site = Site(args.layer, args.component).validate(model)
    t = time.perf_counter()
    corpus = cached_corpus(runtime.tokenizer(model))
    timings["corpus_s"] = time.perf_counter() - t
    print(f"corpus: {corpus.provenance.n_tokens} tokens, {corpus.provenance.n_documents} docs",
          flush=True)
    t = time.perf_counter()
    cache = cache_activations(model, corpus.texts(), site, n_tokens=args.cache_tokens,
                              context_size=128, batch_size=16, seqs_per_shard=64, seed=ctx.seed,
                              autocast_bf16=args.bf16)
    timings["activations_s"] = time.perf_counter() - t
    print(f"activations: {cache.n_tokens} tokens in {cache.n_shards} shards, "
          f"{cache.n_outliers} outliers dropped, {timings['activations_s']:.0f}s", flush=True)

    d_model = runtime.d_model(model)
    base = SAETrainConfig(
        d_in=d_model, d_sae=args.expansion * d_model, hook_name=site.hook_name(model),
        model_name=runtime.model_id(model), l1_coefficient=args.l1, lr=args.lr,
        batch_size=args.batch_size, train_tokens=args.train_tokens,
        eval_shards=args.eval_shards, checkpoint_every=100,
        lr_decay_steps=(args.train_tokens // args.batch_size) // 5, autocast_bf16=args.bf16,
    )
    configs = [base] + [
        SAETrainConfig.from_dict({**base.to_dict(), "l1_coefficient": l1,
                                  "train_tokens": args.extra_train_tokens,
                                  "lr_decay_steps": (args.extra_train_tokens // args.batch_size) // 5})
        for l1 in args.extra_l1
    ]
    runs = []
    for cfg in configs:
        run_dir = cache_root() / "sae" / "runs" / cfg.key()
        t = time.perf_counter()
        res = train_sae(cache, cfg, run_dir)
        dt = time.perf_counter() - t
        print(f"l1={cfg.l1_coefficient}: {asdict(res.metrics)} ({dt:.0f}s)", flush=True)
        held = heldout_metrics(model, site, run_dir / "sae")
        print(f"  held-out texts (fp32 model): {held}", flush=True)
        runs.append({**result_dict(res), "wall_seconds_this_call": dt, "run_dir": str(run_dir),
                     "heldout_check": held})
        timings[f"train_l1_{cfg.l1_coefficient}_s"] = dt
        timings["total_s"] = time.perf_counter() - t_all
        results = _results(ctx.out, args, model, site, timings, corpus, cache, runs)
        if args.ship and cfg.l1_coefficient == (args.l1 if args.ship_l1 is None else args.ship_l1):
            ship(runs[-1], corpus.provenance.to_dict(), results, SHIP_ROOT / args.name)
    save_run_findings(ctx)
    draw(ctx.out, ctx.fig_dir)
    return results


def _results(out: Path, args, model, site, timings, corpus, cache, runs) -> dict:
    results = {
        "model": runtime.model_id(model), "hook_name": site.hook_name(model),
        "threads": args.threads, "bf16_autocast": args.bf16, "timings": timings,
        "corpus": {"n_tokens": corpus.provenance.n_tokens,
                   "tokens_by_source": corpus.provenance.tokens_by_source()},
        "activations": {"n_tokens": cache.n_tokens, "n_shards": cache.n_shards,
                        "n_outliers_dropped": cache.n_outliers, "context_size": 128,
                        "excluded": "position 0 (BOS, massive norm) of every window"},
        "runs": runs,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "corpus_provenance.json",
                      json.dumps(corpus.provenance.to_dict(), indent=1))
    return results


def heldout_metrics(model, site: Site, sae_dir: Path, n_rows: int = 8) -> dict:
    """SAE metrics on steerlens/data/heldout.txt (never in the corpus), fp32 model, no autocast."""
    from steerlens.sae import load_sae, sae_metrics
    from steerlens.sae.activations import site_activations

    text = (ROOT / "steerlens" / "data" / "heldout.txt").read_text()
    tok = runtime.tokenizer(model)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = [[tok.bos_token_id] + ids[i * 127:(i + 1) * 127] for i in range(min(n_rows, len(ids) // 127))]
    acts = site_activations(model, torch.tensor(rows), site)[:, 1:].reshape(-1, runtime.d_model(model))
    return asdict(sae_metrics(load_sae(sae_dir), acts))


def ship(run: dict, provenance: dict, results: dict, dest: Path) -> Path:
    """Copy a trained SAE into the package as fp16 SAELens format with its records."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(Path(run["run_dir"]) / "sae")
    save_sae(sae, dest, dtype=torch.float16)
    atomic_write_text(dest / "metrics.json", json.dumps({
        "metrics": run["metrics"], "heldout_check": run.get("heldout_check"),
        "n_train_tokens": run["n_train_tokens"],
        "n_unique_activations_cached": results["activations"]["n_tokens"],
        "n_eval_tokens": run["metrics"]["n_tokens"],
        "steps": run["steps"], "activations": results["activations"],
        "timings_of_this_invocation": results["timings"], "threads": results["threads"],
        "timing_note": "stages already cached in earlier invocations take ~0 s here; see "
                       "results/sae_training/README.md for the measured cost of each stage",
    }, indent=1))
    atomic_write_text(dest / "training_config.json", json.dumps(run["config"], indent=1))
    atomic_write_text(dest / "corpus_provenance.json", json.dumps(provenance, indent=1))
    print(f"shipped {dest}", flush=True)
    return dest


if __name__ == "__main__":
    main()
