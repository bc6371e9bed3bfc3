"""Does real llama.cpp steer like steerlens? A steerlens vector exported as a GGUF control vector.

Steps (SmolLM2-135M-Instruct, the embedded Q4_1 GGUF):
1. The CAA mean-difference vector of a behaviour (default: sentiment) at `resid_pre` of one mid
   layer (default 12), built by steerlens on the dequantized float32 weights, exported with
   `SteeringVector.to_gguf` (`resid_pre` L is `direction.(L-1)`: llama.cpp adds `direction.N` to
   the output of block N) and read back bit-exactly.
2. The same GGUF model file runs in llama.cpp (llama-cpp-python, CPU, `--llama-threads`) on the
   held-out prompts, fed the exact token ids steerlens uses (chat template applied by steerlens),
   unsteered and with the exported file applied through llama.cpp's control-vector API
   (`llama_set_adapter_cvec`, the buffer laid out as `common_control_vector_load` does: direction
   N at offset (N - 1) * n_embd, times the strength; checked bit-identical to what llama.cpp's
   own GGUF reader `gguf_init_from_file` reads from the file, laid out as its loader does). Each
   configuration gets a fresh llama.cpp context with the vector set before its first decode.
3. Per prompt, the next-token distribution after the prompt from both engines: KL(base || steered)
   in bits, and the top-k tokens by log-probability increase. Agreement = Pearson r of the
   per-prompt KLs (bootstrap CI over prompts), top-k promoted-token overlap (bootstrap CI), the
   per-prompt correlation of the log-probability changes over the vocabulary ("delta r"), and
   KL between the two engines' steered distributions relative to the base disagreement
   (llama.cpp runs the Q4_1 weights, steerlens their float32 dequantization: KL between the
   unsteered distributions). The check (`CHECK`) needs all four above thresholds.
4. The same file applied one block too late and one block too early (the off-by-one mappings:
   `direction.L` or `direction.(L-2)` for `resid_pre` L) must fail the check. (The per-prompt
   KL correlation alone is a weak test of the mapping: the same vector one block away still
   disturbs the same prompts most; what it promotes, and the steered distribution itself, differ.)

Saved in results/interop/: `llama_cpp_agreement.json` (settings, per-prompt values, summaries,
the check), `vector.gguf` (the exported control vector), `per_prompt.csv`; the figure
`figures/llama_cpp_agreement.html`. Needs `pip install steerlens[llama]` (llama-cpp-python).

    python -m analyses.llama_cpp_agreement [--layer 12] [--strengths 2,4,8] [--n-prompts 16]
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from steerlens.backend import EMBEDDED, runtime
from steerlens.backend.loading import fetch_gguf
from steerlens.extract import resolve_chat
from steerlens.figures import save_html
from steerlens.figures.interop import llama_cpp_agreement_figure
from steerlens.interop.gguf import control_vector_buffer, read_control_vector
from steerlens.measures import next_token_kl
from steerlens.pairs import load_behaviour
from steerlens.stats import bootstrap_ci, correlate
from steerlens.steer import steer, steered_forward
from steerlens.vectors import SteeringVector

from . import command
from ._common import (
    GalleryEntry,
    add_strengths,
    cached_vector,
    heldout_prompts,
    log,
    parser,
    start,
    write_csv,
    write_json,
)
from .findings import Finding, fmt, print_findings, save_findings

NAME = "llama_cpp_agreement"
RESULT_FILE = "llama_cpp_agreement.json"
MAPPINGS = {"correct": 0, "off_by_one_late": 1, "off_by_one_early": -1}
# The check, thresholds set from the first full run (16 prompts, strengths 2/4/8) with margin:
# the correct mapping must meet all four, an off-by-one mapping fails the check by missing any.
# Measured: correct r 0.94-0.995, overlap 0.71-0.88, delta r 0.975-0.996, cross/base 0.9-1.2;
# off by one r 0.67-0.94, overlap 0.28-0.45, delta r 0.81-0.93, cross/base 5.8-140.
CHECK = {
    "kl_pearson_r": 0.8,        # Pearson r of per-prompt KL(base || steered), llama.cpp vs steerlens
    "topk_overlap": 0.6,        # mean top-k promoted-token overlap
    "delta_r": 0.95,            # mean per-prompt r of the log-prob changes over the vocabulary
    "cross_kl_over_base": 3.0,  # KL(steerlens steered || llama.cpp steered) / base disagreement
}


def build_parser():
    p = parser(NAME, __doc__.splitlines()[0], fresh=True)
    p.add_argument("--behaviour", default="sentiment", help="behaviour whose CAA vector is used")
    p.add_argument("--layer", type=int, default=12, help="resid_pre layer of the vector")
    add_strengths(p, [2.0, 4.0, 8.0], "strengths (multiples of the mean-difference vector)")
    p.add_argument("--headline-strength", type=float, default=4.0,
                   help="the strength reported as the headline (one of --strengths)")
    p.add_argument("--n-prompts", type=int, default=16, help="held-out prompts (>= 12)")
    p.add_argument("--top-k", type=int, default=10, help="promoted tokens compared per prompt")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--llama-threads", type=int, default=1, help="llama.cpp CPU threads")
    return p


# ------------------------------------------------------------------------------ the two engines


def prompt_token_ids(model, prompts: list[str]) -> tuple[list[list[int]], bool]:
    """The token ids steerlens runs for each prompt (chat-templated for instruct models)."""
    chat = resolve_chat(model, None, True)
    return [runtime.prompt_ids(model, p, chat) for p in prompts], chat


def steerlens_logits(model, ids: list[list[int]], vec: SteeringVector | None = None,
                     strength: float = 0.0) -> np.ndarray:
    """float64 next-token logits [n_prompts, vocab] after each prompt, one prompt per forward."""
    bos = runtime.tokenizer(model).bos_token_id
    n_layers = runtime.n_layers(model)
    out = []
    for row in ids:
        batch = runtime.batch_from_ids(model, [(row, 1 if row[0] == bos and len(row) > 1 else 0)])
        with contextlib.ExitStack() as stack:
            steerer = None if vec is None else stack.enter_context(steer(model, vec, strength))
            resid = steered_forward(model, batch, steerer, stop_at_layer=n_layers,
                                    return_type=None)
        out.append(runtime.unembed(model, resid[:, -1])[0].double().cpu().numpy())
    return np.stack(out)


@contextlib.contextmanager
def llama_model(gguf_path: Path):
    """The GGUF model loaded in llama.cpp (CPU, through llama-cpp-python's C API), freed on exit.

    llama.cpp's extra weight buffers (AMX tiles, runtime repacking) are turned off: on machines
    whose kernel does not grant AMX tile state (containers, some VMs) the AMX kernels die with
    SIGILL, and the stock Q4_1 kernels are what every CPU runs.
    """
    import llama_cpp

    # llama.cpp's log goes through this logger; its level map predates ggml's reordered enum
    # (info arrives as WARNING), so silence it: failures are caught from the return codes
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL + 1)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    if hasattr(params, "use_extra_bufts"):
        params.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {gguf_path}.")
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


def set_control_vector(ctx, buffer: np.ndarray | None, n_embd: int, n_layers: int) -> None:
    """Apply llama.cpp's control vector (`buffer` laid out from block 1; None clears it)."""
    import llama_cpp

    apply = getattr(llama_cpp, "llama_set_adapter_cvec", None) \
        or llama_cpp.llama_apply_adapter_cvec  # the name before llama.cpp's 2025 rename
    if buffer is None:
        rc = apply(ctx, None, 0, n_embd, -1, -1)
    else:
        data = np.ascontiguousarray(buffer, dtype=np.float32)  # llama.cpp copies it at once
        rc = apply(ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size, n_embd,
                   1, n_layers)
    if rc != 0:
        raise RuntimeError(f"llama.cpp refused the control vector (status {rc}).")


def llama_logits(llm, ids: list[list[int]], buffer: np.ndarray | None, threads: int) -> np.ndarray:
    """float64 next-token logits [n_prompts, vocab] from llama.cpp (`llm` from `llama_model`),
    with `buffer` as its control vector (None: unsteered). A fresh context per call, the vector
    set before its first decode, the KV cache cleared before each prompt; the token ids are fed
    as given (no BOS added)."""
    import llama_cpp

    n_embd, n_layers = llama_cpp.llama_model_n_embd(llm), llama_cpp.llama_model_n_layer(llm)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm))
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = max(64, max(len(r) for r in ids) + 8)
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(llm, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context.")
    try:
        if buffer is not None:
            set_control_vector(ctx, buffer, n_embd, n_layers)
        memory = llama_cpp.llama_get_memory(ctx)
        out = []
        for row in ids:
            llama_cpp.llama_memory_clear(memory, True)
            tokens = (llama_cpp.llama_token * len(row))(*row)
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, len(row)))
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with status {rc}.")
            logits = llama_cpp.llama_get_logits_ith(ctx, -1)
            out.append(np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64))
        return np.stack(out)
    finally:
        llama_cpp.llama_free(ctx)


class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def llama_cpp_loader_buffer(path: Path, strength: float = 1.0) -> tuple[int, np.ndarray]:
    """(n_embd, buffer) for a control-vector file as llama.cpp's loader builds it, parsed by
    llama.cpp's own GGUF reader (`gguf_init_from_file` in the ggml library llama-cpp-python ships).

    `common_control_vector_load_one` (llama.cpp common/common.cpp) is not in that library, so its
    few lines are mirrored here over the C parser's view of the file: tensor names `direction.N`
    (N parsed like `std::stoi`, N = 0 refused), F32, 1-D, one width; direction N at offset
    (N - 1) * n_embd of a buffer n_embd * max(N) long, times `strength`, summed.
    """
    import glob
    import os

    import llama_cpp

    libs = sorted(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib",
                                         "*ggml-base*")))
    if not libs:
        raise RuntimeError("llama-cpp-python ships no ggml-base library here.")
    ggml = ctypes.CDLL(libs[0])
    ggml.gguf_init_from_file.restype = ctypes.c_void_p
    ggml.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GGUFInitParams]
    ggml.gguf_get_n_tensors.restype = ctypes.c_int64
    ggml.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    ggml.gguf_get_tensor_name.restype = ctypes.c_char_p
    ggml.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    ggml.ggml_get_tensor.restype = ctypes.c_void_p
    ggml.ggml_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.gguf_get_tensor_type.restype = ctypes.c_int
    ggml.gguf_get_tensor_type.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    ggml.ggml_n_dims.restype = ctypes.c_int
    ggml.ggml_n_dims.argtypes = [ctypes.c_void_p]
    ggml.ggml_nelements.restype = ctypes.c_int64
    ggml.ggml_nelements.argtypes = [ctypes.c_void_p]
    ggml.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    ggml.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    ggml.gguf_free.argtypes = [ctypes.c_void_p]
    ggml.ggml_free.argtypes = [ctypes.c_void_p]
    ctx = ctypes.c_void_p()
    gguf = ggml.gguf_init_from_file(str(path).encode(), _GGUFInitParams(False, ctypes.pointer(ctx)))
    if not gguf:
        raise ValueError(f"llama.cpp's GGUF reader cannot read {path}.")
    try:
        n_embd, data = -1, np.zeros(0, np.float32)
        for i in range(ggml.gguf_get_n_tensors(gguf)):
            name = ggml.gguf_get_tensor_name(gguf, i)
            prefix, _, rest = name.decode().partition(".")
            digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
            index = int(digits) if prefix == "direction" and digits else -1
            if index <= 0:
                raise ValueError(f"{path}: llama.cpp refuses tensor {name!r} (index {index}).")
            tensor = ggml.ggml_get_tensor(ctx, name)
            if ggml.gguf_get_tensor_type(gguf, i) != 0 or ggml.ggml_n_dims(tensor) != 1:
                raise ValueError(f"{path}: llama.cpp refuses {name!r} (non-F32 or not 1-D).")
            n = ggml.ggml_nelements(tensor)
            if n_embd not in (-1, n):
                raise ValueError(f"{path}: {name!r} has another width than the others.")
            n_embd = n
            if data.size < n * index:
                data = np.concatenate([data, np.zeros(n * index - data.size, np.float32)])
            src = np.ctypeslib.as_array(ggml.ggml_get_data_f32(tensor), shape=(n,))
            data[(index - 1) * n:index * n] += src * np.float32(strength)
        return n_embd, data
    finally:
        ggml.gguf_free(gguf)
        if ctx:
            ggml.ggml_free(ctx)


# ------------------------------------------------------------------------------ comparisons


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_bits(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(P || Q) in bits per row (float64)."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return np.clip((np.exp(lp) * (lp - lq)).sum(-1), 0.0, None) / np.log(2.0)


def promoted(base: np.ndarray, steered: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k tokens whose log-probability rises most, per row [n, k]."""
    delta = log_softmax(steered) - log_softmax(base)
    return np.argsort(-delta, axis=-1, kind="stable")[:, :k]


def rows_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def compare(sl_base, sl_steer, ll_base, ll_steer, k: int, n_boot: int, seed: int) -> dict:
    """Agreement between the steerlens and llama.cpp effects of one steering configuration."""
    kl_sl, kl_ll = kl_bits(sl_base, sl_steer), kl_bits(ll_base, ll_steer)
    top_sl, top_ll = promoted(sl_base, sl_steer, k), promoted(ll_base, ll_steer, k)
    overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top_sl, top_ll)])
    delta_r = rows_pearson(log_softmax(sl_steer) - log_softmax(sl_base),
                           log_softmax(ll_steer) - log_softmax(ll_base))
    cross = kl_bits(sl_steer, ll_steer)
    r = correlate(kl_sl, kl_ll, "pearson", n_boot=n_boot, n_perm=n_boot, seed=seed)
    rho = correlate(kl_sl, kl_ll, "spearman", n_boot=n_boot, n_perm=n_boot, seed=seed)

    def ci(v):
        c = bootstrap_ci(v, n_boot=n_boot, seed=seed)
        return {"mean": c.estimate, "low": c.low, "high": c.high, "n": c.n}

    return {
        "kl_pearson": {"r": r.r, "low": r.ci_low, "high": r.ci_high, "p_perm": r.p_perm, "n": r.n},
        "kl_spearman": {"r": rho.r, "low": rho.ci_low, "high": rho.ci_high, "n": rho.n},
        "kl_steerlens": ci(kl_sl),
        "kl_llama": ci(kl_ll),
        "kl_ratio_llama_over_steerlens": float(kl_ll.mean() / kl_sl.mean()),
        "topk_overlap": ci(overlap),
        "delta_r": ci(delta_r),
        "cross_kl_steered": ci(cross),
        "per_prompt": {"kl_steerlens": kl_sl, "kl_llama": kl_ll, "topk_overlap": overlap,
                       "delta_r": delta_r, "cross_kl_steered": cross},
    }


def criteria(summary: dict, base_kl: float) -> dict[str, bool]:
    """Each criterion of the agreement check (`CHECK`), met or not."""
    return {
        "kl_pearson_r": bool(summary["kl_pearson"]["r"] >= CHECK["kl_pearson_r"]),
        "topk_overlap": bool(summary["topk_overlap"]["mean"] >= CHECK["topk_overlap"]),
        "delta_r": bool(summary["delta_r"]["mean"] >= CHECK["delta_r"]),
        "cross_kl_over_base": bool(summary["cross_kl_steered"]["mean"]
                                   <= CHECK["cross_kl_over_base"] * base_kl),
    }


def shifted_buffer(directions: dict[int, np.ndarray], shift: int, n_layers: int,
                   strength: float) -> np.ndarray:
    """llama.cpp's buffer with every direction.N moved to N + shift (the off-by-one mappings)."""
    return control_vector_buffer({n + shift: d for n, d in directions.items()}, "resid_post",
                                 n_layers, strength)


# ------------------------------------------------------------------------------ main


def main(argv=None, model=None) -> dict:
    p = build_parser()
    args, ctx, model = start(NAME, p, argv, model)
    if args.n_prompts < (3 if ctx.quick else 12):
        p.error("--n-prompts must be at least 12 (3 with --quick)")
    try:
        import llama_cpp
    except ImportError as err:
        raise SystemExit(f"{command(NAME)} needs llama-cpp-python: pip install 'steerlens[llama]' "
                         f"({err}).") from None
    name = runtime.model_id(model)
    if name not in EMBEDDED:
        p.error(f"--model must be an embedded GGUF model ({sorted(EMBEDDED)}), got {name!r}")
    strengths = [float(s) for s in args.strengths]
    if args.headline_strength not in strengths:
        p.error(f"--headline-strength {args.headline_strength} is not among --strengths "
                f"{strengths}")
    n_layers = runtime.n_layers(model)
    gguf_path = fetch_gguf(EMBEDDED[name])
    behaviour = load_behaviour(args.behaviour)
    vec = cached_vector(model, behaviour, [args.layer], ctx)
    prompts = heldout_prompts(behaviour, args.n_prompts)
    ids, chat = prompt_token_ids(model, prompts)
    log(f"{name}: {args.behaviour} vector at resid_pre {args.layer}, {len(prompts)} prompts, "
        f"strengths {strengths}, llama-cpp-python {llama_cpp.__version__}")

    # 1. export, read back bit-exactly, and take llama.cpp's directions from the file itself
    path = vec.to_gguf(ctx.out / "vector.gguf")
    back = SteeringVector.from_gguf(path, model=model)
    round_trip = all(np.array_equal(back[x].numpy(), vec[x].numpy()) for x in vec.layers)
    directions = read_control_vector(path).directions  # {N: array}, llama.cpp numbering
    # llama.cpp's own GGUF reader + its loader's layout give the very buffer we apply
    loader_same = {}
    for s in strengths:
        width, loader = llama_cpp_loader_buffer(path, s)
        ours = shifted_buffer(directions, 0, n_layers, s)
        loader_same[s] = bool(width == vec.d_model and np.array_equal(loader, ours[:loader.size])
                              and not ours[loader.size:].any())

    # 2. both engines, unsteered and steered
    t0 = time.perf_counter()
    sl_base = steerlens_logits(model, ids)
    sl_steer = {s: steerlens_logits(model, ids, vec, s) for s in strengths}
    t_sl = time.perf_counter() - t0
    t0 = time.perf_counter()
    with llama_model(gguf_path) as llm:
        ll_base = llama_logits(llm, ids, None, args.llama_threads)
        ll_steer = {(m, s): llama_logits(llm, ids, shifted_buffer(directions, shift, n_layers, s),
                                         args.llama_threads)
                    for m, shift in MAPPINGS.items() for s in strengths}
    t_ll = time.perf_counter() - t0
    vocab = min(sl_base.shape[1], ll_base.shape[1])
    if sl_base.shape[1] != ll_base.shape[1]:
        log(f"vocabularies differ ({sl_base.shape[1]} vs {ll_base.shape[1]}); comparing the "
            f"first {vocab} logits")
    sl_base, ll_base = sl_base[:, :vocab], ll_base[:, :vocab]
    sl_steer = {s: v[:, :vocab] for s, v in sl_steer.items()}
    ll_steer = {key: v[:, :vocab] for key, v in ll_steer.items()}

    # sanity: our per-prompt KL is steerlens' own next_token_kl
    lib = {s: next_token_kl(model, prompts, vec, s).values for s in strengths}
    lib_diff = max(float(np.max(np.abs(lib[s] - kl_bits(sl_base, sl_steer[s])))) for s in strengths)

    # 3. base disagreement and agreement per (mapping, strength)
    base_kl = kl_bits(sl_base, ll_base)
    base_ci = bootstrap_ci(base_kl, n_boot=args.n_boot, seed=args.seed)
    base_top1 = float(np.mean(sl_base.argmax(-1) == ll_base.argmax(-1)))
    results = {m: {} for m in MAPPINGS}
    for (m, s), ll in ll_steer.items():
        r = compare(sl_base, sl_steer[s], ll_base, ll, args.top_k, args.n_boot, args.seed)
        r["cross_kl_over_base"] = r["cross_kl_steered"]["mean"] / base_ci.estimate
        r["criteria"] = criteria(r, base_ci.estimate)
        r["passes"] = all(r["criteria"].values())
        results[m][s] = r
    check = {
        "thresholds": CHECK,
        "correct_passes_at_every_strength": all(results["correct"][s]["passes"]
                                                for s in strengths),
        "off_by_one_fails_at_every_strength": all(not results[m][s]["passes"]
                                                  for m in MAPPINGS if m != "correct"
                                                  for s in strengths),
    }
    out = {
        "analysis": NAME,
        "settings": {
            "model": name, "gguf": Path(gguf_path).name, "behaviour": args.behaviour,
            "layer": args.layer, "component": vec.component,
            "gguf_direction": args.layer - 1, "strengths": strengths,
            "headline_strength": args.headline_strength, "n_prompts": len(prompts),
            "top_k": args.top_k, "n_boot": args.n_boot, "seed": args.seed, "chat": chat,
            "llama_cpp_python": llama_cpp.__version__, "llama_threads": args.llama_threads,
            "vector_norm": vec.norms[args.layer], "n_pairs": vec.n_pairs,
            "mappings": {m: f"direction.N applied at block N{'+' if s > 0 else '-'}{abs(s)}"
                         if s else "direction.N applied at block N (llama.cpp's own loader)"
                         for m, s in MAPPINGS.items()},
        },
        "round_trip_bit_exact": round_trip,
        "llama_cpp_reader_buffer_identical": loader_same,
        "steerlens_next_token_kl_max_abs_diff_bits": lib_diff,
        "base_disagreement": {
            "kl_steerlens_fp32_vs_llama_q4_1": {"mean": base_ci.estimate, "low": base_ci.low,
                                                "high": base_ci.high, "n": base_ci.n},
            "top1_agreement": base_top1,
            "per_prompt": base_kl,
        },
        "results": {m: {str(s): v for s, v in r.items()} for m, r in results.items()},
        "check": check,
        "prompts": prompts,
        "n_tokens": [len(r) for r in ids],
        "wall_s": {"steerlens": t_sl, "llama_cpp": t_ll},
    }
    write_json(ctx.out / RESULT_FILE, out)
    rows = [{"mapping": m, "strength": s, "prompt": i, **{k: float(v[i]) for k, v in
                                                         r["per_prompt"].items()}}
            for m, by_s in results.items() for s, r in by_s.items() for i in range(len(prompts))]
    write_csv(ctx.out / "per_prompt.csv", pd.DataFrame(rows))
    _findings(ctx, out, args)
    make_figures(ctx.out, ctx.fig_dir)
    h = out["results"]["correct"][str(args.headline_strength)]
    log(f"correct mapping @ {args.headline_strength}: r = {h['kl_pearson']['r']:.3f} "
        f"[{h['kl_pearson']['low']:.3f}, {h['kl_pearson']['high']:.3f}], top-{args.top_k} overlap "
        f"{h['topk_overlap']['mean']:.2f}; check: {check}")
    return out


def _findings(ctx, out: dict, args) -> None:
    s = str(args.headline_strength)
    n = f"{out['settings']['n_prompts']} prompts"
    found = []
    for m in MAPPINGS:
        r = out["results"][m][s]
        found.append(Finding(
            NAME, f"llama.cpp vs steerlens per-prompt KL, Pearson r ({m} mapping, strength {s})",
            r["kl_pearson"]["r"], r["kl_pearson"]["low"], r["kl_pearson"]["high"], n,
            "off-by-one mappings" if m == "correct" else "correct mapping",
            "passes the check" if r["passes"] else
            "fails the check (" + ", ".join(k for k, ok in r["criteria"].items() if not ok) + ")",
            headline=m == "correct"))
        found.append(Finding(
            NAME, f"top-{args.top_k} promoted-token overlap ({m} mapping, strength {s})",
            r["topk_overlap"]["mean"], r["topk_overlap"]["low"], r["topk_overlap"]["high"], n,
            "-", f"delta-logprob r {fmt(r['delta_r']['mean'])}"))
    b = out["base_disagreement"]["kl_steerlens_fp32_vs_llama_q4_1"]
    found.append(Finding(NAME, "base disagreement KL(steerlens fp32 || llama.cpp Q4_1), bits",
                         b["mean"], b["low"], b["high"], n, "-",
                         f"top-1 agreement {fmt(out['base_disagreement']['top1_agreement'])}"))
    print_findings(found)
    save_findings(ctx, found, out["settings"],
                  notes=["llama.cpp runs the Q4_1 GGUF weights; steerlens their float32 "
                         "dequantization, so the base distributions differ slightly."])


def make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]:
    """Redraw the agreement figure from `results_dir/llama_cpp_agreement.json` (no model)."""
    path = Path(results_dir) / RESULT_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    fig = llama_cpp_agreement_figure(data)
    out = save_html(fig, Path(figures_dir) / "llama_cpp_agreement.html")
    s = data["settings"]
    return [GalleryEntry(
        NAME, out, "llama.cpp steers like steerlens (and an off-by-one mapping does not)",
        f"{s['behaviour']} vector at resid_pre {s['layer']} exported as direction.{s['layer'] - 1}; "
        f"per-prompt next-token KL in llama.cpp vs steerlens (n={s['n_prompts']} prompts)",
        command(NAME))]


if __name__ == "__main__":
    main()
