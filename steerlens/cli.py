"""Command-line interface: `steerlens models | extract | generate | demo | arena`.

`extract` and `generate` are a contract other tools rely on: `extract` writes
`DIR/vector.safetensors` + `DIR/vector.json`; `generate` prints the baseline and steered
continuations (or JSON with `--json`). `demo` is the main job: a sentiment vector on the embedded
model, baseline vs steered generations at several strengths, and a self-contained HTML report.
`arena` serves the live steering page on localhost (see `steerlens.arena`).
Bad input exits with status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers must be comma-separated ints, got {text!r}"
        ) from None
    if not layers:
        raise argparse.ArgumentTypeError("--layers needs at least one layer")
    return layers


def _read_pairs(spec: str):
    from .pairs import ContrastSet, list_behaviours, load_behaviour

    if spec.startswith("behaviour:"):
        return load_behaviour(spec.split(":", 1)[1]).train
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"--pairs {spec!r} is not a file. Give a .jsonl file, a CAA A/B .json file, or "
            f"behaviour:NAME with NAME in {list_behaviours()}."
        )
    if path.suffix == ".json":
        return ContrastSet.from_caa_json(path)
    return ContrastSet.from_jsonl(path)


def cmd_models(args) -> int:
    from .backend import EMBEDDED, TINY_MODEL

    for name, spec in EMBEDDED.items():
        print(f"{name:24s} {spec.description}")
    print(f"{TINY_MODEL:24s} tiny random model for tests (2 layers, d_model 64)")
    print("(any TransformerLens official name also works where a model hub is reachable)")
    return 0


def cmd_extract(args) -> int:
    from .backend import load_model
    from .methods import build_vector

    pairs = _read_pairs(args.pairs)
    model = load_model(args.model, device=args.device)
    vec = build_vector(model, pairs, args.layers, method=args.method, position=args.position,
                       component=args.component, batch_size=args.batch_size)
    out = vec.save(args.out)
    print(f"wrote {out / 'vector.safetensors'} and {out / 'vector.json'}: {vec!r}")
    return 0


def cmd_generate(args) -> int:
    from .backend import load_model
    from .generate import generate
    from .vectors import SteeringVector

    model = load_model(args.model, device=args.device)
    vec = SteeringVector.load(args.vector, model=model).layer(args.layer)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    base = generate(model, args.prompt, **kw)
    steered = generate(model, args.prompt, vec, strength=args.alpha, positions=args.positions, **kw)
    if args.json:
        print(json.dumps({
            "model": args.model, "vector": str(args.vector), "layer": args.layer,
            "alpha": args.alpha, "positions": args.positions, "prompt": args.prompt,
            "seed": args.seed, "max_new_tokens": args.max_new_tokens,
            "baseline": base.texts[0], "steered": steered.texts[0],
        }, ensure_ascii=False))
    else:
        print(f"prompt:   {args.prompt}\nbaseline: {base.texts[0]}\n"
              f"steered (layer {args.layer}, alpha {args.alpha}): {steered.texts[0]}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    path = run_demo(model_name=args.model, device=args.device, out_dir=Path(args.out),
                    layer=args.layer)
    print(f"report: {path}")
    return 0


def cmd_arena(args) -> int:
    from .arena.server import serve

    serve(args.model, args.host, args.port, args.device, allow_remote=args.allow_remote)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .backend import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="steerlens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
        sp.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")

    sub.add_parser("models", help="list the models that load without a hub")

    e = sub.add_parser("extract", help="build a steering vector from contrast pairs")
    common(e)
    e.add_argument("--pairs", required=True, help="JSONL, CAA A/B JSON, or behaviour:NAME")
    e.add_argument("--layers", required=True, type=_layers, help="comma-separated, e.g. 6,10,14")
    e.add_argument("--position", default="last", choices=["last", "first", "mean"])
    e.add_argument("--method", default="mean_diff", choices=["mean_diff", "pca", "probe"])
    e.add_argument("--component", default="resid_pre",
                   choices=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--out", required=True, help="output directory")

    g = sub.add_parser("generate", help="baseline vs steered continuation of a prompt")
    common(g)
    g.add_argument("--vector", required=True, help="directory written by `steerlens extract`")
    g.add_argument("--layer", required=True, type=int)
    g.add_argument("--alpha", required=True, type=float, help="steering strength")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--positions", default="all",
                   choices=["all", "prompt", "generated", "first", "last"])
    g.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser("demo", help="sentiment steering demo with an HTML report")
    common(d)
    d.add_argument("--layer", type=int, default=None, help="layer to steer (default: 1/3 depth)")
    d.add_argument("--out", default="figures", help="report directory (default figures/)")

    a = sub.add_parser("arena", help="live steering page in the browser (localhost)")
    common(a)
    a.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    a.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    a.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (the page runs the model for anyone who "
                        "can reach it)")
    return p


COMMANDS = {"models": cmd_models, "extract": cmd_extract, "generate": cmd_generate,
            "demo": cmd_demo, "arena": cmd_arena}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backend import ModelLoadError
    from .vectors import VectorFileError

    try:
        return COMMANDS[args.command](args)
    except (ValueError, KeyError, FileNotFoundError, ModelLoadError, VectorFileError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"steerlens {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
