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


def cmd_models(args: argparse.Namespace) -> int:
    """`steerlens models`: list the models that load without a hub.

    Args:
        args: the parsed arguments (unused).

    Returns:
        The exit status, 0.
    """
    from .backend import EMBEDDED, TINY_MODEL

    for name, spec in EMBEDDED.items():
        print(f"{name:24s} {spec.description}")
    print(f"{TINY_MODEL:24s} tiny random model for tests (2 layers, d_model 64)")
    print("(any TransformerLens official name also works where a model hub is reachable)")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """`steerlens extract`: build a vector from contrast pairs and save it to `--out`.

    Args:
        args: the parsed arguments (model, device, pairs, layers, read_at, method, component,
            batch_size, out).

    Returns:
        The exit status, 0.
    """
    from .backend import load_model
    from .methods import build_vector

    pairs = _read_pairs(args.pairs)
    model = load_model(args.model, device=args.device)
    vec = build_vector(model, pairs, args.layers, method=args.method, read_at=args.read_at,
                       component=args.component, batch_size=args.batch_size)
    out = vec.save(args.out)
    print(f"wrote {out / 'vector.safetensors'} and {out / 'vector.json'}: {vec!r}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """`steerlens generate`: print the baseline and steered continuation of one prompt.

    Args:
        args: the parsed arguments (model, device, vector, layer, strength, prompt, max_new_tokens,
            seed, temperature, positions, json).

    Returns:
        The exit status, 0.
    """
    from .backend import load_model
    from .config import GenerationConfig
    from .generate import generate
    from .vectors import SteeringVector

    model = load_model(args.model, device=args.device)
    vec = SteeringVector.load(args.vector, model=model).layer(args.layer)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              seed=args.seed)
    base = generate(model, args.prompt, config=config)
    steered = generate(model, args.prompt, vec, args.strength, positions=args.positions,
                       config=config)
    if args.json:
        print(json.dumps({
            "model": args.model, "vector": str(args.vector), "layer": args.layer,
            "strength": args.strength, "positions": args.positions, "prompt": args.prompt,
            "seed": args.seed, "max_new_tokens": args.max_new_tokens,
            "baseline": base.texts[0], "steered": steered.texts[0],
        }, ensure_ascii=False))
    else:
        print(f"prompt:   {args.prompt}\nbaseline: {base.texts[0]}\n"
              f"steered (layer {args.layer}, strength {args.strength}): {steered.texts[0]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`steerlens demo`: run the sentiment demo and write its HTML report.

    Args:
        args: the parsed arguments (model, device, layer, out).

    Returns:
        The exit status, 0.
    """
    from .demo import run_demo

    path = run_demo(model_name=args.model, device=args.device, out_dir=Path(args.out),
                    layer=args.layer)
    print(f"report: {path}")
    return 0


def cmd_arena(args: argparse.Namespace) -> int:
    """`steerlens arena`: serve the live steering page until Ctrl-C.

    Args:
        args: the parsed arguments (model, device, host, port, allow_remote).

    Returns:
        The exit status, 0.
    """
    from .arena.server import serve

    serve(args.model, args.host, args.port, args.device, allow_remote=args.allow_remote)
    return 0


class _DeprecatedAlias(argparse.Action):
    """An old flag that still works: stores into the new flag's dest and prints a notice."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"steerlens: {option_string} is deprecated; use {self.new} (same meaning).",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """The `steerlens` argument parser; every `choices=` comes from the library's constants.

    Returns:
        The parser (subcommands models, extract, generate, demo, arena).
    """
    from .backend import DEFAULT_MODEL
    from .backend.runtime import COMPONENTS
    from .config import POSITION_MODES, READ_AT
    from .methods import METHODS

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
    pair_reads = [r for r in READ_AT if r != "all"]  # "all" cannot align the two sides of a pair
    e.add_argument("--read-at", default="last", choices=pair_reads,
                   help="where activations are read in each completion (default last)")
    e.add_argument("--position", dest="read_at", choices=pair_reads, action=_DeprecatedAlias,
                   new="--read-at", help=argparse.SUPPRESS)
    e.add_argument("--method", default="mean_diff", choices=list(METHODS))
    e.add_argument("--component", default="resid_pre", choices=list(COMPONENTS))
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--out", required=True, help="output directory")

    g = sub.add_parser("generate", help="baseline vs steered continuation of a prompt")
    common(g)
    g.add_argument("--vector", required=True, help="directory written by `steerlens extract`")
    g.add_argument("--layer", required=True, type=int)
    g.add_argument("--strength", type=float, default=None,
                   help="steering strength: the multiplier on the vector")
    g.add_argument("--alpha", dest="strength", type=float, action=_DeprecatedAlias,
                   new="--strength", help=argparse.SUPPRESS)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--positions", default="all", choices=list(POSITION_MODES),
                   help="where the vector is written (default all)")
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
    """Run the CLI.

    Args:
        argv: arguments (default `sys.argv[1:]`).

    Returns:
        The exit status: 0, or 2 for bad input (one line on stderr, no traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and args.strength is None:
        parser.error("generate: the following arguments are required: --strength")
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
