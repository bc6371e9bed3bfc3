"""Peer comparison: steerlens vs steering-vectors 0.12.2 (and repeng 0.4.0) on the same weights.

Side by side in one run, on the same SmolLM2 weights (steerlens' Hugging Face export of the embedded
GGUF, `backend.loading.cached_hf_export`) and the very same token ids:

- CAA extraction of 48 contrast pairs (sentiment train + test) at every layer: steerlens
  `build_vector(component="resid_post")` against steering-vectors `train_steering_vector` (its
  default batch size 1, and the same batch size as steerlens), plus repeng `ControlVector.train`
  with `method="pca_center"` for timing only (repeng reads the same last-token hidden states but
  fits a PCA of pair-centred activations, a different direction, so only its time compares);
- the cosine between steerlens' and steering-vectors' vector at every layer. Layer-index mapping:
  steering-vectors layer i hooks the output of Hugging Face decoder layer i, which is steerlens
  `resid_post` i (= `resid_pre` i + 1); repeng layer i reads `hidden_states[i + 1]`, the same
  output, except the last layer, where Hugging Face's last hidden state is after the final norm;
- greedy generation, 16 prompts x 40 tokens (EOS suppressed on both sides): steerlens `generate`
  unsteered and steered against Hugging Face `generate` plain and steered through
  steering-vectors' `SteeringVector.apply`, with the same CAA vector (steerlens resid_post L =
  steering-vectors layer L) at strength/multiplier `--strength`; tokens/s, every ratio and how
  many greedy texts are identical.

The peers need transformers < 5 by their metadata but run on the main environment's transformers,
so they live in their own virtual environment (`--peer-env`, default /work/peerenv, created on
first use from the main environment's Python with the main environment's torch and transformers
versions and `--no-deps` steering-vectors/repeng, using the pip cache), and the peer side of this
script runs there as a subprocess (`--peer-side JOB`; it imports only torch, transformers and the
peers). The two sides alternate `--repeats` times and the median of each is reported, so a load
spike hits both. Token ids are fixed by steerlens and handed to the peers through a tokenizer
wrapper that returns those ids (the number of texts whose own re-tokenization differs is printed).
Device and dtype: `--device auto` takes CUDA when present; `--dtype bfloat16` runs both sides in
bf16. Results: results/benchmarks/peers.json with the machine (`--out` elsewhere).

    python benchmarks/bench_peers.py [--threads 2] [--repeats 2] [--quick] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEER_PACKAGES = ("steering-vectors==0.12.2", "repeng==0.4.0")
# the peers' own dependencies, minus torch/transformers (pinned to the main env's versions);
# repeng 0.4.0 uses np.float_, removed in numpy 2
PEER_DEPS = ("tqdm", "scikit-learn>=1.4", "gguf>=0.6.0", "numpy<2", "accelerate")
MARKER = "steerlens_peer_env.json"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


# ---------------------------------------------------------------- shared helpers (both sides)

def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cut(ids, stop) -> list[int]:
    out = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------- peer side (runs in --peer-env)

class _FixedIds:
    """A tokenizer stand-in for the peers: the given strings map to steerlens' token ids.

    Every call still runs the real tokenizer (so its cost is paid as the peers pay it) and then
    substitutes the fixed ids of known strings, padding like the real tokenizer (side and id).
    """

    def __init__(self, tok, table: dict[str, list[int]]):
        self.__dict__["tok"] = tok
        self.__dict__["table"] = table
        self.__dict__["mismatch"] = set()

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __setattr__(self, name, value):
        setattr(self.tok, name, value)

    def __call__(self, texts, return_tensors=None, padding=False, **kw):
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        own = self.tok(texts, add_special_tokens=False)["input_ids"]
        rows = []
        for text, ids in zip(texts, own):
            fixed = self.table.get(text, ids)
            if list(fixed) != list(ids):
                self.mismatch.add(text)
            rows.append(list(fixed))
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        left = self.tok.padding_side == "left"
        ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids_t[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        from transformers import BatchEncoding
        return BatchEncoding({"input_ids": ids_t, "attention_mask": mask})


def peer_main(job_path: str, out_path: str) -> None:
    """The peer side: steering-vectors / repeng / Hugging Face generate on the job's inputs."""
    job = torch.load(job_path)
    torch.set_num_threads(job["threads"])
    import steering_vectors as sv
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = job["device"], DTYPES[job["dtype"]]
    hf = AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(job["hf_dir"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    wrapped = _FixedIds(tok, dict(zip(job["texts"], job["text_ids"])))
    n = len(job["texts"]) // 2
    samples = list(zip(job["texts"][:n], job["texts"][n:]))
    n_layers = hf.config.num_hidden_layers
    res: dict = {"versions": {"torch": str(torch.__version__),
                              "transformers": str(transformers.__version__),
                              "steering_vectors": _version("steering-vectors"),
                              "repeng": _version("repeng")}, "times": {}}
    with torch.inference_mode():  # warm-up: one padded batch through the model
        hf(**wrapped(job["texts"][: job["batch_size"]], padding=True).to(device))

    def sv_extract(bs: int):
        return sv.train_steering_vector(hf, wrapped, samples, layers=list(range(n_layers)),
                                        layer_type="decoder_block", batch_size=bs,
                                        show_progress=False)

    if job["sv_batch1"]:
        res["times"]["sv_extract_b1"], vec1 = timed(lambda: sv_extract(1), device)
        res["sv_vectors_b1"] = torch.stack([vec1.layer_activations[i].float().cpu()
                                            for i in range(n_layers)])
    res["times"]["sv_extract"], vec = timed(lambda: sv_extract(job["batch_size"]), device)
    res["sv_vectors"] = torch.stack([vec.layer_activations[i].float().cpu()
                                     for i in range(n_layers)])
    if job["repeng"]:
        import repeng

        data = [repeng.DatasetEntry(positive=p, negative=q) for p, q in samples]
        import contextlib
        import io
        with contextlib.redirect_stderr(io.StringIO()):  # repeng's tqdm bars
            res["times"]["repeng_extract"], cv = timed(lambda: repeng.ControlVector.train(
                hf, wrapped, data, hidden_layers=list(range(n_layers)),
                batch_size=job["batch_size"], method="pca_center"), device)
        res["repeng_vectors"] = torch.stack([torch.as_tensor(cv.directions[i]).float()
                                             for i in range(n_layers)])

    gen_ids, gen_mask = job["gen_tokens"].to(device), job["gen_mask"].to(device)
    kw = dict(input_ids=gen_ids, attention_mask=gen_mask, do_sample=False,
              max_new_tokens=job["tokens"], min_new_tokens=job["tokens"],
              pad_token_id=job["pad_id"])
    width = gen_ids.shape[1]
    steer = sv.SteeringVector({job["layer"]: job["direction"].to(device, dtype)},
                              layer_type="decoder_block")
    with torch.inference_mode():
        hf.generate(**{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        res["times"]["hf_plain"], out = timed(lambda: hf.generate(**kw), device)
        res["hf_plain_ids"] = [cut(r, job["stop"]) for r in out[:, width:].tolist()]

        def steered():
            with steer.apply(hf, multiplier=job["strength"]):
                return hf.generate(**kw)

        res["times"]["hf_steered"], out = timed(steered, device)
        res["hf_steered_ids"] = [cut(r, job["stop"]) for r in out[:, width:].tolist()]
    res["retokenized_differently"] = len(wrapped.mismatch)
    torch.save(res, out_path)


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- peer environment

def base_python() -> str:
    """The interpreter the main venv was made from (a venv must not nest a venv's python)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_peer_env(path: Path) -> Path:
    """Create (or repair) the peer venv with the main env's torch/transformers versions.

    Returns the peer environment's python. A marker file records the versions it was built with;
    a mismatch (e.g. the main env upgraded torch) reinstalls.
    """
    import transformers

    torch_v = torch.__version__.split("+")[0]  # a local build tag (+cpu, +cu128) is pip's choice
    want = {"torch": torch_v, "transformers": transformers.__version__,
            "peers": list(PEER_PACKAGES), "deps": list(PEER_DEPS)}
    py = path / "bin" / "python"
    marker = path / MARKER
    if py.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == want:
                return py
        except (OSError, ValueError):
            pass
    print(f"preparing the peer environment {path} (torch {torch_v}, transformers "
          f"{transformers.__version__}, {', '.join(PEER_PACKAGES)}) ...", flush=True)
    if not py.exists():
        subprocess.run([base_python(), "-m", "venv", str(path)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"torch=={torch_v}", f"transformers=={want['transformers']}",
                    *PEER_DEPS], check=True)
    # both peers declare transformers<5 (steering-vectors) or numpy<2 only in metadata; their code
    # runs on the main env's transformers, so they go in without their pins
    subprocess.run([*pip, "--no-deps", *PEER_PACKAGES], check=True)
    marker.write_text(json.dumps(want))
    return py


# ---------------------------------------------------------------- steerlens side (main)

def steerlens_side(model, cs, layers, args, gen_prompts, vec) -> dict:
    from steerlens.backend import runtime
    from steerlens.generate import generate
    from steerlens.methods import build_vector

    stop = runtime.eos_ids(model)
    res: dict = {"times": {}}
    res["times"]["sl_extract"], v = timed(lambda: build_vector(
        model, cs, layers, component="resid_post", batch_size=args.batch_size,
        show_progress=False), args.device)
    res["vectors"] = torch.stack([v[i].float().cpu() for i in layers])
    settings = dict(max_new_tokens=args.tokens, stop_at_eos=False)
    res["times"]["sl_unsteered"], g = timed(
        lambda: generate(model, gen_prompts, chat=True, **settings), args.device)
    res["sl_unsteered_ids"] = [cut(t, stop) for t in g.tokens]
    res["times"]["sl_steered"], g = timed(
        lambda: generate(model, gen_prompts, vec, args.strength, chat=True, **settings),
        args.device)
    res["sl_steered_ids"] = [cut(t, stop) for t in g.tokens]
    return res


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=48, help="contrast pairs (sentiment train+test)")
    ap.add_argument("--batch-size", type=int, default=16, help="texts per forward (both sides)")
    ap.add_argument("--n", type=int, default=16, help="generation prompts")
    ap.add_argument("--tokens", type=int, default=40, help="greedy tokens per prompt")
    ap.add_argument("--layer", type=int, default=9,
                    help="steered layer: steerlens resid_post L = steering-vectors layer L")
    ap.add_argument("--strength", type=float, default=1.0, help="multiplier on the CAA vector")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (both sides)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--peer-env", default=os.environ.get("STEERLENS_PEER_ENV", "/work/peerenv"))
    ap.add_argument("--no-repeng", action="store_true", help="skip repeng")
    ap.add_argument("--no-batch1", action="store_true",
                    help="skip steering-vectors at its default batch size 1")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8 pairs, 4 prompts x 8 tokens, 1 repeat, no batch-1 run")
    ap.add_argument("--peer-side", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peer-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="results directory (default results/benchmarks)")
    args = ap.parse_args(argv)
    if args.peer_side:
        return peer_main(args.peer_side, args.peer_out)
    if args.quick:
        args.pairs, args.n, args.tokens, args.repeats, args.no_batch1 = 8, 4, 8, 1, True
    args.device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    peer_py = ensure_peer_env(Path(args.peer_env))

    sys.path.insert(0, str(HERE))
    from _record import write

    from steerlens.backend import load_model, runtime
    from steerlens.backend.loading import cached_hf_export
    from steerlens.pairs import as_contrast_set, load_behaviour

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    hf_dir = cached_hf_export(args.model)
    layers = list(range(runtime.n_layers(model)))
    beh = load_behaviour("sentiment")
    all_pairs = list(beh.train) + list(beh.test)
    if args.pairs > len(all_pairs):
        raise SystemExit(f"--pairs {args.pairs}: the sentiment behaviour has {len(all_pairs)}.")
    cs = as_contrast_set(all_pairs[: args.pairs])
    # the exact rows steerlens runs (chat-templated prompt + completion), handed to the peers
    texts_ids = [ids for ids in _row_ids(model, cs)]
    texts = [runtime.decode(model, ids, skip_special=False) for ids in texts_ids]
    gen_prompts = (list(beh.eval_prompts) * 8)[: args.n]
    gen_batch = runtime.encode_prompts(model, gen_prompts, chat=True, device="cpu")
    from steerlens.methods import build_vector
    caa = build_vector(model, cs, [args.layer], component="resid_post",
                       batch_size=args.batch_size, show_progress=False)
    direction = caa[args.layer].float().cpu()
    job = {"hf_dir": str(hf_dir), "texts": texts, "text_ids": texts_ids, "threads": threads,
           "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
           "sv_batch1": not args.no_batch1, "repeng": not args.no_repeng,
           "gen_tokens": gen_batch.tokens, "gen_mask": gen_batch.attention_mask,
           "tokens": args.tokens, "pad_id": runtime.pad_id(model), "stop": runtime.eos_ids(model),
           "layer": args.layer, "direction": direction, "strength": args.strength}
    print(f"model {args.model} ({len(layers)} layers), device {args.device}, dtype {args.dtype}, "
          f"torch threads {threads}; {args.pairs} pairs x {len(layers)} layers, batch "
          f"{args.batch_size}; generation {args.n} prompts x {args.tokens} greedy tokens, CAA "
          f"vector at resid_post {args.layer} x {args.strength}; {args.repeats} alternating "
          "repeats, medians", flush=True)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out_path = Path(tmp) / "job.pt", Path(tmp) / "peer.pt"
        torch.save(job, job_path)
        steerlens_side(model, as_contrast_set(all_pairs[:2]), layers[:2], _small(args),
                       gen_prompts[:2], caa)  # warm-up
        for r in range(args.repeats):
            ours = steerlens_side(model, cs, layers, args, gen_prompts, caa)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads),
                   "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run([str(peer_py), __file__, "--peer-side", str(job_path),
                                   "--peer-out", str(out_path)], env=env, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(f"peer side failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
            peer = torch.load(out_path)
            for k, v in {**ours["times"], **peer["times"]}.items():
                times.setdefault(k, []).append(v)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in
                                                  {**ours["times"], **peer["times"]}.items()),
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    report(args, layers, med, times, ours, peer, threads, write)


def _small(args):
    a = argparse.Namespace(**vars(args))
    a.tokens = 2
    return a


def _row_ids(model, cs) -> list[list[int]]:
    """The token ids of every text steerlens extracts from (positives then negatives), unpadded."""
    from steerlens.backend import runtime
    from steerlens.extract import resolve_chat

    chat = resolve_chat(model, None, True)
    batch = runtime.encode(model, list(cs.positives) + list(cs.negatives), list(cs.prompts) * 2,
                           chat=chat, device="cpu")
    return [row[mask.bool()].tolist() for row, mask in zip(batch.tokens, batch.attention_mask)]


def report(args, layers, med, times, ours, peer, threads, write) -> None:
    n_tok = args.n * args.tokens
    cos = torch.nn.functional.cosine_similarity(ours["vectors"], peer["sv_vectors"], dim=-1)
    rows = []
    print(f"\n{'case':<40}{'median s':>10}{'runs':>22}")
    names = {"sl_extract": "steerlens build_vector (CAA)",
             "sv_extract": f"steering-vectors, batch {args.batch_size}",
             "sv_extract_b1": "steering-vectors, batch 1 (its default)",
             "repeng_extract": f"repeng pca_center, batch {args.batch_size}",
             "sl_unsteered": "steerlens generate, unsteered",
             "sl_steered": "steerlens generate, steered",
             "hf_plain": "HF generate, plain",
             "hf_steered": "HF generate + steering-vectors"}
    for k, label in names.items():
        if k not in med:
            continue
        extra = {"tokens_per_s": n_tok / med[k]} if k in ("sl_unsteered", "sl_steered",
                                                          "hf_plain", "hf_steered") else {}
        print(f"{label:<40}{med[k]:>10.2f}{' '.join(f'{t:.2f}' for t in times[k]):>22}"
              + (f"   {extra['tokens_per_s']:.1f} tokens/s" if extra else ""))
        rows.append({"case": k, "label": label, "median_s": med[k], "runs_s": times[k], **extra})
    same_plain = sum(a == b for a, b in zip(ours["sl_unsteered_ids"], peer["hf_plain_ids"]))
    same_steer = sum(a == b for a, b in zip(ours["sl_steered_ids"], peer["hf_steered_ids"]))
    summary = {
        "extract_speedup_vs_sv_same_batch": med["sv_extract"] / med["sl_extract"],
        "steered_tokens_per_s_vs_hf_sv": med["hf_steered"] / med["sl_steered"],
        "unsteered_tokens_per_s_vs_hf": med["hf_plain"] / med["sl_unsteered"],
        "steerlens_steered_over_unsteered": med["sl_steered"] / med["sl_unsteered"],
        "hf_steered_over_plain": med["hf_steered"] / med["hf_plain"],
        "cosine_per_layer": [round(float(c), 7) for c in cos],
        "cosine_min": float(cos.min()), "cosine_median": float(cos.median()),
        "identical_texts_unsteered": f"{same_plain}/{args.n}",
        "identical_texts_steered": f"{same_steer}/{args.n}",
        "texts_retokenized_differently_by_hf": peer["retokenized_differently"],
        "layer_mapping": "steering-vectors layer i = output of HF decoder layer i = steerlens "
                         "resid_post i = resid_pre i+1",
        "peer_versions": peer["versions"], "n_repeats": args.repeats,
        "n_pairs": args.pairs, "n_layers": len(layers), "n_prompts": args.n,
        "tokens": args.tokens, "device": args.device, "dtype": args.dtype,
    }
    if "sv_extract_b1" in med:
        summary["extract_speedup_vs_sv_batch1"] = med["sv_extract_b1"] / med["sl_extract"]
    if "repeng_extract" in med:
        summary["extract_speedup_vs_repeng_pca_center"] = med["repeng_extract"] / med["sl_extract"]
        rc = torch.nn.functional.cosine_similarity(ours["vectors"], peer["repeng_vectors"], dim=-1)
        summary["repeng_pca_center_abs_cosine_to_caa_median"] = float(rc.abs().median())
    print("\nratios (> 1: steerlens faster for speedups; medians of "
          f"{args.repeats} alternating repeats)")
    for k, v in summary.items():
        if isinstance(v, float) and k not in ("cosine_min", "cosine_median"):
            print(f"  {k:<46}{v:>9.3f}")
    print(f"  cosine steerlens vs steering-vectors per layer (resid_post i vs layer i): min "
          f"{summary['cosine_min']:.7f}, median {summary['cosine_median']:.7f} over {len(layers)} "
          "layers")
    print("  " + " ".join(f"{i}:{c:.6f}" for i, c in enumerate(cos.tolist())))
    print(f"  identical greedy texts vs HF: unsteered {same_plain}/{args.n}, steered "
          f"{same_steer}/{args.n}; texts HF re-tokenizes differently: "
          f"{peer['retokenized_differently']} (steerlens' ids were used)")
    print("  repeng pca_center is a different direction (PCA of pair-centred activations): its "
          "time compares, its vector does not")
    write("peers", {**{k: v for k, v in vars(args).items()
                       if k not in ("out", "peer_side", "peer_out")}, "torch_threads": threads},
          rows, summary, device=args.device, out_dir=args.out)


if __name__ == "__main__":
    main()
