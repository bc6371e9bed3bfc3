"""Command-line interface: `steerlens models | extract | generate | export | import | demo | arena`.

`extract` and `generate` are a contract other tools rely on: `extract` writes
`DIR/vector.safetensors` + `DIR/vector.json`; `generate` prints the baseline and steered
continuations (or JSON with `--json`). `export --format gguf` turns a saved vector into a llama.cpp
control vector (`direction.N` is added to the output of block N: steerlens `resid_post` N =
`resid_pre` N+1; `--strength` is baked into the file) and `import` reads one (ours, repeng's or
llama.cpp's) back into a vector directory. `demo` is the main job: a sentiment vector on the embedded
model, baseline vs steered generations at several strengths, and a self-contained HTML report.
`arena` serves the live steering page on localhost (see `steerlens.arena`).

Bad input exits with status 2 and a one-line message naming the argument or file at fault, never
a traceback, and a command that fails writes nothing. Everything that can be checked without the
model (arguments and their ranges, the device, the output path, the pairs or vector file, the
arena's address) is checked before the model is loaded; outputs are built in a hidden temp
directory and moved into place only when complete. Warnings print as one line each.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from .backend import Model

# the weights dtypes `load_model(dtype=)` takes (backend.loading.DTYPE_NAMES; a test keeps them equal)
DTYPE_CHOICES = ("float32", "bfloat16", "float16", "float64", "fp32", "bf16", "fp16", "fp64")

SEED_LIMIT = 2**63  # GenerationConfig's seed range is [0, 2**63)


class CLIError(Exception):
    """A user error: reported as `steerlens CMD: error: MESSAGE` (one line), exit status 2."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and reach `main`."""

    def error(self, message: str):  # noqa: D102 (argparse hook)
        raise CLIError(f"{message} (see `{self.prog} --help`)", prog=self.prog)


def _show(text: str, limit: int = 40) -> str:
    """`repr(text)`, shortened for a one-line message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


# ------------------------------------------------------------------------------ argument types


def _int_type(minimum: int, maximum: int | None = None, what: str = "an integer"
              ) -> Callable[[str], int]:
    """An argparse type: an int in [minimum, maximum] (the message gives the valid range)."""
    valid = (f"{what} >= {minimum}" if maximum is None
             else f"{what} in [{minimum}, {maximum}]")

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {_show(text)}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {_show(text)}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [0, 2**63) (0 to {SEED_LIMIT - 1}), got {_show(text)}")
    return value


def _float_type(minimum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float (>= minimum when given)."""
    valid = "a finite number" + ("" if minimum is None else f" >= {minimum:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {_show(text)}") from None
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"must be {valid}, got {_show(text)}")
        return value

    return parse


def _layers(text: str) -> list[int]:
    parse = _int_type(0, what="a layer index (an integer)")
    items = [x for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"needs at least one layer, e.g. 6,10,14; got {_show(text)}")
    try:
        layers = [parse(x) for x in items]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated layer indices >= 0, e.g. 6,10,14; got {_show(text)}"
        ) from None
    dup = sorted({x for x in layers if layers.count(x) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"lists layer(s) {dup} more than once")
    return layers


def _device(text: str) -> str:
    """An argparse type: a device this machine has (cpu, cuda, cuda:N, mps)."""
    import torch

    hint = "use cpu, cuda or cuda:N"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{_show(text)} is not a device; {hint}") from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise argparse.ArgumentTypeError(f"{_show(text)} is not available: {why}; use cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(
                f"{_show(text)} does not exist: this machine has {n} CUDA device(s), "
                f"cuda:0..cuda:{n - 1}")
        return text
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise argparse.ArgumentTypeError(f"{_show(text)} is not available here; {hint}")
        return text
    raise argparse.ArgumentTypeError(f"steerlens does not run on {_show(text)}; {hint}")


def _utf8(text: str) -> str:
    """An argparse type: text that is valid Unicode (a terminal can pass undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise argparse.ArgumentTypeError(
            f"is not valid UTF-8 text (undecodable byte at character {err.start}); check the "
            "terminal's encoding") from None
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return _utf8(text)


# ------------------------------------------------------------------------------ files


def _check_out_dir(text: str, flag: str, files: tuple[str, ...]) -> Path:
    """Check, before any work, that directory `text` can be created or written into.

    Nothing is created. `files` are the names the command will write in it: each must be absent or
    a regular file.
    """
    path = Path(text)
    if _lexists(path, flag, text):
        if not path.is_dir():
            raise CLIError(f"{flag} {text!r} is an existing file, not a directory; give a "
                           "directory (it is created if missing).")
        for name in files:
            f = path / name
            if _lexists(f, flag, text) and not f.is_file():
                raise CLIError(f"{flag} {text!r} already holds {name}, which is not a "
                               "regular file (a directory?), so it cannot be replaced.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CLIError(f"{flag} {text!r}: permission denied (cannot write in it).")
        return path
    missing = [path]
    ancestor = path.parent
    while not _lexists(ancestor, flag, text):
        missing.append(ancestor)
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CLIError(f"{flag} {text!r} cannot be created: {ancestor} is a file (or a broken "
                       "link), not a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {text!r} cannot be created: permission denied in {ancestor}.")
    try:
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for m in missing:
        if len(os.fsencode(m.name)) > name_max:
            raise CLIError(f"{flag}: the path component {_show(m.name)} is longer than the "
                           f"{name_max} bytes this filesystem allows.")
    return path


def _lexists(path: Path, flag: str, text: str) -> bool:
    """Whether `path` exists (a dangling symlink counts); unusable paths raise CLIError."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        raise CLIError(f"{flag} {text!r}: {err.strerror or err}.") from None
    return True


@contextlib.contextmanager
def _staged_dir(path: Path, flag: str) -> Iterator[Path]:
    """Yield a directory to write `path`'s content into; it appears at `path` only on success.

    A missing `path` (and any missing parents) is built in a hidden temp directory beside its
    topmost missing component and moved into place with one rename when the block succeeds; on
    failure nothing is left. An existing directory is yielded as is: its writers replace their
    own files atomically. OS errors become one-line `CLIError`s naming `flag`.
    """
    try:
        if path.is_dir():
            yield path
            return
        top = path
        while not top.parent.exists():
            top = top.parent
        tmp = Path(tempfile.mkdtemp(prefix=f".{top.name}.", suffix=".tmp", dir=top.parent))
        try:
            staged = tmp / top.name / path.relative_to(top)
            staged.mkdir(parents=True)
            yield staged
            os.rename(tmp / top.name, top)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        raise CLIError(f"{flag} {str(path)!r}: cannot write there "
                       f"({err.strerror or err}).") from err


def _read_pairs(spec: str):
    """The contrast pairs of `--pairs` (file or behaviour:NAME), each problem as one CLIError."""
    from .pairs import ContrastSet, IdenticalPairWarning, list_behaviours, load_behaviour

    if spec.startswith("behaviour:"):
        return load_behaviour(spec.split(":", 1)[1]).train
    path = Path(spec)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as err:  # e.g. a name too long for the filesystem
        raise CLIError(f"--pairs {spec!r}: {err.strerror or err}.") from None
    if not spec or not exists:
        raise CLIError(
            f"--pairs {spec!r} is not a file. Give a .jsonl file, a CAA A/B .json file, or "
            f"behaviour:NAME with NAME in {list_behaviours()}."
        )
    if is_dir:
        raise CLIError(f"--pairs {spec!r} is a directory; give a .jsonl or CAA .json file.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IdenticalPairWarning)
        try:
            if path.suffix.lower() == ".json":
                pairs = ContrastSet.from_caa_json(path)
            else:
                pairs = ContrastSet.from_jsonl(path)
        except OSError as err:
            raise CLIError(f"--pairs {spec!r}: cannot read it ({err.strerror or err}).") \
                from err
    if all(p.positive == p.negative for p in pairs):
        raise CLIError(f"--pairs {path}: every pair has identical positive and negative texts, "
                       "so the vector would be zero.")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return pairs


def _load_vector(spec: str, model: Model | None = None):
    """`SteeringVector.load`, with read errors as one CLIError naming the file."""
    from .vectors import SteeringVector, VectorFileError

    try:
        return SteeringVector.load(spec, model=model)
    except VectorFileError:
        raise  # its message names the file
    except ValueError as err:  # the vector does not fit the model
        raise CLIError(f"--vector {spec}: {err}") from None
    except OSError as err:
        raise CLIError(f"--vector {spec!r}: cannot read "
                       f"{err.filename or spec} ({err.strerror or err}).") from None


def _load_model(args: argparse.Namespace):
    from .backend import load_model

    return load_model(args.model, device=args.device, dtype=getattr(args, "dtype", None))


def _tty() -> bool:
    return sys.stderr.isatty()


def _layer_arg(model: Model, layer: int, flag: str) -> None:
    from .sites import check_layer

    try:
        check_layer(model, layer)
    except ValueError as err:
        raise CLIError(f"{flag}: {err}") from None


# ------------------------------------------------------------------------------ commands


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

    The output path and the pairs file are checked before the model loads; the vector's
    directory appears only once both files are complete.

    Args:
        args: the parsed arguments (model, device, pairs, layers, read_at, method, component,
            batch_size, out).

    Returns:
        The exit status, 0.

    Raises:
        CLIError: for an unusable --out, --pairs or --layers (one line, nothing written).
    """
    from .methods import build_vector
    from .pairs import IdenticalPairWarning
    from .vectors import META_FILE, VECTOR_FILE

    out = _check_out_dir(args.out, "--out", (VECTOR_FILE, META_FILE))
    pairs = _read_pairs(args.pairs)
    model = _load_model(args)
    for layer in args.layers:
        _layer_arg(model, layer, "--layers")
    with warnings.catch_warnings():
        # identical pairs were already reported, naming their file and lines, by _read_pairs
        warnings.filterwarnings("ignore", category=IdenticalPairWarning)
        warnings.filterwarnings("ignore", message=r".*identical positive and negative texts")
        try:
            vec = build_vector(model, pairs, args.layers, method=args.method,
                               read_at=args.read_at, component=args.component,
                               batch_size=args.batch_size, show_progress=_tty())
        except ValueError as err:  # pairs that do not fit the model or give no direction
            raise CLIError(f"--pairs {args.pairs}: {err}") from None
    with _staged_dir(out, "--out") as staged:
        vec.save(staged)
    print(f"wrote {out / VECTOR_FILE} and {out / META_FILE}: {vec!r}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """`steerlens generate`: print the baseline and steered continuation of one prompt.

    The settings, the vector file and `--layer` are checked before the model loads.

    Args:
        args: the parsed arguments (model, device, vector, layer, strength, prompt, max_new_tokens,
            seed, temperature, positions, json).

    Returns:
        The exit status, 0.

    Raises:
        CLIError: for a missing --strength, a --layer the vector lacks, or a prompt that does
            not fit the context.
    """
    if args.strength is None:
        raise CLIError("the following arguments are required: --strength "
                       "(see `steerlens generate --help`)")
    from .config import GenerationConfig
    from .generate import generate

    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              seed=args.seed)
    layers = _load_vector(args.vector).layers
    if args.layer not in layers:
        raise CLIError(f"--layer {args.layer}: the vector in {args.vector} has no direction "
                       f"there; its layers are {layers}.")
    model = _load_model(args)
    vec = _load_vector(args.vector, model=model).layer(args.layer)
    try:
        base = generate(model, args.prompt, config=config)
    except ValueError as err:  # a prompt that does not fit the context with --max-new-tokens
        raise CLIError(f"--prompt / --max-new-tokens: {err}") from None
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


def _check_out_file(text: str, flag: str) -> Path:
    """Check, before any work, that file `text` can be written (its directory may be missing)."""
    path = Path(text)
    if _lexists(path, flag, text) and path.is_dir():
        raise CLIError(f"{flag} {text!r} is a directory; give a file name, e.g. "
                       f"{str(path / 'vector.gguf')!r}.")
    _check_out_dir(str(path.parent), flag, (path.name,))
    return path


def cmd_export(args: argparse.Namespace) -> int:
    """`steerlens export`: write a saved vector in another tool's format (llama.cpp GGUF).

    Everything is checked before the file is written, and no model is loaded: the vector file,
    `--layers`, whether llama.cpp can express the vector's component and layers, and `--out`.

    Args:
        args: the parsed arguments (vector, format, out, layers, strength, model_hint).

    Returns:
        The exit status, 0.

    Raises:
        CLIError: for an unusable --vector, --layers or --out, or a vector llama.cpp cannot
            express (the message names the valid components or layers).
    """
    from .interop.gguf import gguf_index

    out = _check_out_file(args.out, "--out")
    vec = _load_vector(args.vector)
    if args.layers is not None:
        missing = [x for x in args.layers if x not in vec.layers]
        if missing:
            raise CLIError(f"--layers {missing}: the vector in {args.vector} has no direction "
                           f"there; its layers are {vec.layers}.")
        vec = vec.select(args.layers)
    try:
        for layer in vec.layers:
            gguf_index(layer, vec.component)
    except ValueError as err:
        raise CLIError(f"--vector {args.vector}: {err}") from None
    with _staged_dir(out.parent, "--out") as staged:
        vec.to_gguf(staged / out.name, strength=args.strength, model_hint=args.model_hint)
    indices = ", ".join(f"direction.{gguf_index(x, vec.component)}" for x in vec.layers)
    print(f"wrote {out}: {vec.component} layers {vec.layers} as {indices}, strength "
          f"{args.strength:g} baked in (llama.cpp scale S steers like steerlens strength "
          f"S x {args.strength:g})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """`steerlens import`: read another tool's vector file (llama.cpp GGUF) into a vector directory.

    The output directory and the file are checked first; with `--model` the vector is also
    checked against that model (d_model, layers).

    Args:
        args: the parsed arguments (source, format, out, component, model, device).

    Returns:
        The exit status, 0.

    Raises:
        CLIError: for an unusable --out, or a vector that does not fit --model.
    """
    from .vectors import META_FILE, VECTOR_FILE, SteeringVector

    out = _check_out_dir(args.out, "--out", (VECTOR_FILE, META_FILE))
    vec = SteeringVector.from_gguf(args.source, component=args.component)  # VectorFileError
    if args.model is not None:
        model = _load_model(args)
        try:
            vec = SteeringVector.from_gguf(args.source, model=model, component=args.component)
        except ValueError as err:
            raise CLIError(f"{args.source}: {err}") from None
    with _staged_dir(out, "--out") as staged:
        vec.save(staged)
    print(f"wrote {out / VECTOR_FILE} and {out / META_FILE}: {vec!r}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`steerlens demo`: run the sentiment demo and write its HTML report.

    The report directory is checked before the model loads; the report appears only when the
    demo has run to the end.

    Args:
        args: the parsed arguments (model, device, layer, out).

    Returns:
        The exit status, 0.
    """
    from .demo import REPORT_FILE, print_summary, run_demo_result, write_report

    out = _check_out_dir(args.out, "--out", (REPORT_FILE,))
    model = _load_model(args)
    if args.layer is not None:
        _layer_arg(model, args.layer, "--layer")
    result = run_demo_result(model, layer=args.layer)
    print_summary(result)
    with _staged_dir(out, "--out") as staged:
        write_report(result, staged)
    print(f"report: {out / REPORT_FILE}")
    return 0


def _check_listen(host: str, port: int) -> None:
    """Bind (host, port) once and release it, so a bad address fails before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as err:
        raise CLIError(f"--host {host!r} is not an address this machine can listen on "
                       f"({err.strerror}).") from None
    except OSError as err:
        raise CLIError(_listen_message(host, port, err)) from None


def _listen_message(host: str, port: int, err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return (f"--port {port} is already in use on {host}; pick another port, or --port 0 "
                "for any free one.")
    if err.errno == errno.EACCES:
        return f"--port {port} needs privileges on {host}; use a port above 1023."
    return f"--host {host} --port {port}: cannot listen there ({err.strerror or err})."


def cmd_arena(args: argparse.Namespace) -> int:
    """`steerlens arena`: serve the live steering page until Ctrl-C.

    The host and port are checked (and bound once) before the model loads.

    Args:
        args: the parsed arguments (model, device, host, port, allow_remote).

    Returns:
        The exit status, 0.

    Raises:
        CLIError: when the address cannot be listened on (in use, privileged, unresolvable).
        OSError: for other socket failures while serving.
    """
    from .arena.server import check_host, serve

    check_host(args.host, args.allow_remote)
    _check_listen(args.host, args.port)
    try:
        serve(args.model, args.host, args.port, args.device, allow_remote=args.allow_remote)
    except OSError as err:
        if err.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise CLIError(_listen_message(args.host, args.port, err)) from None
        raise
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

    Argument types check ranges (counts >= 1, seeds in [0, 2**63), finite strengths, ports,
    devices this machine has), and parse errors raise `CLIError` (one line) instead of printing
    a usage block.

    Returns:
        The parser (subcommands models, extract, generate, export, import, demo, arena).
    """
    from .backend import DEFAULT_MODEL
    from .backend.runtime import COMPONENTS
    from .config import POSITION_MODES, READ_AT
    from .methods import METHODS

    p = _Parser(prog="steerlens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--model", default=DEFAULT_MODEL, type=_nonempty,
                        help=f"model name (default {DEFAULT_MODEL})")
        sp.add_argument("--device", default=None, type=_device,
                        help="cpu / cuda / cuda:N (default: cuda if available)")
        sp.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                        help="model weights' dtype (default float32); measures reduce in float32/64")

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
    e.add_argument("--batch-size", type=_int_type(1), default=16)
    e.add_argument("--out", required=True, type=_nonempty,
                   help="output directory (created if missing)")

    g = sub.add_parser("generate", help="baseline vs steered continuation of a prompt")
    common(g)
    g.add_argument("--vector", required=True, type=_nonempty,
                   help="directory written by `steerlens extract`")
    g.add_argument("--layer", required=True, type=_int_type(0, what="a layer index"))
    g.add_argument("--strength", type=_float_type(), default=None,
                   help="steering strength: the multiplier on the vector")
    g.add_argument("--alpha", dest="strength", type=_float_type(), action=_DeprecatedAlias,
                   new="--strength", help=argparse.SUPPRESS)
    g.add_argument("--prompt", required=True, type=_utf8)
    g.add_argument("--max-new-tokens", type=_int_type(1), default=40)
    g.add_argument("--seed", type=_seed, default=0, help="sampling seed, in [0, 2**63)")
    g.add_argument("--temperature", type=_float_type(0.0), default=0.0)
    g.add_argument("--positions", default="all", choices=list(POSITION_MODES),
                   help="where the vector is written (default all)")
    g.add_argument("--json", action="store_true", help="machine-readable output")

    x = sub.add_parser("export", help="write a saved vector as a llama.cpp control vector (GGUF)")
    x.add_argument("--vector", required=True, type=_nonempty,
                   help="directory written by `steerlens extract`")
    x.add_argument("--format", default="gguf", choices=["gguf"],
                   help="gguf: llama.cpp control vector (--control-vector FILE)")
    x.add_argument("--out", required=True, type=_nonempty, help="the .gguf file to write")
    x.add_argument("--layers", type=_layers, default=None,
                   help="export only these layers (default: all of the vector's)")
    x.add_argument("--strength", type=_float_type(), default=1.0,
                   help="steering strength baked into the file (default 1): llama.cpp at scale S "
                        "then steers like steerlens at strength S x this")
    x.add_argument("--model-hint", default=None, type=_utf8,
                   help="controlvector.model_hint (default: the vector's model id)")

    i = sub.add_parser("import", help="read a llama.cpp control vector (GGUF) into a vector "
                                      "directory")
    i.add_argument("source", type=_nonempty, help="the .gguf control-vector file")
    i.add_argument("--format", default="gguf", choices=["gguf"])
    i.add_argument("--out", required=True, type=_nonempty,
                   help="output directory (created if missing)")
    i.add_argument("--component", default=None, choices=["resid_post", "resid_pre"],
                   help="read direction.N as resid_post N or resid_pre N+1 (the same tensor; "
                        "default: as recorded by steerlens, else resid_post)")
    i.add_argument("--model", default=None, type=_nonempty,
                   help="check the vector against this model (d_model, layers); default: no check")
    i.add_argument("--device", default=None, type=_device, help="device for --model")

    d = sub.add_parser("demo", help="sentiment steering demo with an HTML report")
    common(d)
    d.add_argument("--layer", type=_int_type(0, what="a layer index"), default=None,
                   help="layer to steer (default: 1/3 depth)")
    d.add_argument("--out", default="figures", type=_nonempty,
                   help="report directory (default figures/)")

    a = sub.add_parser("arena", help="live steering page in the browser (localhost)")
    common(a)
    a.add_argument("--host", default="127.0.0.1", type=_nonempty,
                   help="address to listen on (default 127.0.0.1; others need --allow-remote)")
    a.add_argument("--port", type=_int_type(0, 65535, what="a port number"), default=8765,
                   help="port (default 8765; 0 = any free port)")
    a.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (the page runs the model for anyone who "
                        "can reach it)")
    return p


COMMANDS = {"models": cmd_models, "extract": cmd_extract, "generate": cmd_generate,
            "export": cmd_export, "import": cmd_import, "demo": cmd_demo, "arena": cmd_arena}


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _warning_printer(prog: str):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {_one_line(message)}", file=sys.stderr)

    return show


def _gpu_oom() -> type[BaseException]:
    import torch

    return getattr(torch.cuda, "OutOfMemoryError", MemoryError)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: arguments (default `sys.argv[1:]`).

    Returns:
        The exit status: 0; 2 for bad input (one line on stderr, no traceback, nothing written);
        130 when interrupted with Ctrl-C.

    Unexpected exceptions (bugs, not input errors) propagate with their traceback.
    """
    from .backend import ModelLoadError

    prog = "steerlens"
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(prog)
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            prog = f"steerlens {args.command}"
            warnings.showwarning = _warning_printer(prog)
            return COMMANDS[args.command](args)
        except SystemExit as exit_:  # --help
            return exit_.code if isinstance(exit_.code, int) else 0
        except CLIError as err:
            print(f"{err.prog or prog}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except (ValueError, KeyError, FileNotFoundError, ModelLoadError) as err:
            # library input checks (VectorFileError and NonFiniteError are ValueErrors)
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"{prog}: error: {_one_line(msg)}", file=sys.stderr)
            return 2
        except _gpu_oom() as err:
            print(f"{prog}: error: out of GPU memory ({_one_line(err)[:200]}); try a smaller "
                  "--batch-size, a shorter prompt or --device cpu.", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{prog}: interrupted.", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
