"""Package structure: every submodule imports, the module import graph has no cycle, only
steerlens/backend/ touches TransformerLens internals, and the version is stated once.

Both graph checks read the source with `ast` (no import needed to see an edge), so an import
inside a function, or under `if TYPE_CHECKING:`, counts like one at the top of a module.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import steerlens

ROOT = Path(steerlens.__file__).resolve().parent
PYPROJECT = ROOT.parent / "pyproject.toml"

# What only steerlens/backend/ may touch: the TransformerLens package itself, and the model
# internals that tie code to HookedTransformer's layout (use steerlens.backend.runtime instead:
# n_layers, d_model, n_ctx, d_vocab, unembed, direction_logits, ...).
MODEL_INTERNALS = frozenset({"W_U", "W_E", "b_U", "ln_final", "blocks"})


def _module_names() -> list[str]:
    names = ["steerlens"]
    for info in pkgutil.walk_packages(steerlens.__path__, prefix="steerlens."):
        names.append(info.name)
    return sorted(names)


def _sources() -> dict[str, Path]:
    """Module name -> source file, for every module under steerlens/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
              known: set[str]) -> set[str]:
    """The steerlens modules an import statement in `module` loads (by name, as written): the
    module named, plus `pkg.name` for `from pkg import name` when that is a submodule."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "steerlens"}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "steerlens":
        return set()
    return {target} | {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}


def import_graph(sources: dict[str, str], packages: set[str]) -> dict[str, set[str]]:
    """module -> the steerlens modules it imports anywhere in its source."""
    known = set(sources)
    graph = {}
    for module, text in sources.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _imported(module, module in packages, node, known)
        graph[module] = {d for d in deps if d in known and d != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def _model_expr(node: ast.expr) -> bool:
    """`model`, `self.model`, `hf_model`, `self._model`...: a name or attribute ending in model."""
    if isinstance(node, ast.Name):
        return node.id.endswith("model")
    return isinstance(node, ast.Attribute) and node.attr.endswith("model")


def boundary_violations(text: str) -> list[tuple[int, str]]:
    """(line, what) for every TransformerLens import and model-internals read in a source."""
    out = []
    for node in ast.walk(ast.parse(text)):
        what = None
        if isinstance(node, ast.Import):
            if any(a.name.split(".")[0] == "transformer_lens" for a in node.names):
                what = "imports transformer_lens"
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "transformer_lens":
                what = "imports transformer_lens"
        elif isinstance(node, ast.Attribute):
            if node.attr in MODEL_INTERNALS:
                what = f"reads .{node.attr}"
            elif node.attr == "cfg" and _model_expr(node.value):
                what = f"reads {ast.unparse(node.value)}.cfg"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in {"getattr", "hasattr", "setattr"} and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in MODEL_INTERNALS):
            what = f"{node.func.id}(..., {node.args[1].value!r})"
        if what:
            out.append((node.lineno, what))
    return out


# ----------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", _module_names())
def test_every_submodule_imports(name):
    importlib.import_module(name)


def test_module_import_graph_is_acyclic():
    paths = _sources()
    packages = {m for m, p in paths.items() if p.name == "__init__.py"}
    graph = import_graph({m: p.read_text(encoding="utf-8") for m, p in paths.items()}, packages)
    assert set(_module_names()) <= set(graph)  # the graph covers every importable module
    found = cycles(graph)
    detail = "\n".join(
        " <-> ".join(c) + "\n" + "\n".join(f"    {m} imports {sorted(graph[m] & set(c))}" for m in c)
        for c in found)
    assert not found, f"import cycles between steerlens modules:\n{detail}"


def test_only_the_backend_touches_transformer_lens():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        if rel.parts[1] == "backend":
            continue
        bad += [f"{rel}:{line}: {what}"
                for line, what in boundary_violations(path.read_text(encoding="utf-8"))]
    assert not bad, ("outside steerlens/backend/, use steerlens.backend.runtime instead of:\n"
                     + "\n".join(bad))


def test_version_is_stated_once():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    version = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    assert steerlens.__version__ == version


# ------------------------------------------------- the checkers can fail (planted examples)
def test_cycle_finder_finds_planted_cycles():
    graph = import_graph({
        "steerlens": "from .a import x\n",
        "steerlens.a": "from . import b\n",
        "steerlens.b": "def f():\n    from steerlens.a import x\n",  # inside a function
        "steerlens.c": "from .a import x\nimport steerlens.b\n",
        "steerlens.p": "from .q import y\n",
        "steerlens.p.q": "from .. import c\nfrom ..p import q\n",  # a package and its module
    }, packages={"steerlens", "steerlens.p"})
    assert graph["steerlens.p.q"] == {"steerlens", "steerlens.c", "steerlens.p"}
    assert graph["steerlens.a"] == {"steerlens", "steerlens.b"}
    assert cycles(graph) == [["steerlens", "steerlens.a", "steerlens.b"],
                             ["steerlens.p", "steerlens.p.q"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_boundary_checker_flags_planted_reads():
    src = ("import transformer_lens.utils as u\n"
           "from transformer_lens import HookedTransformer\n"
           "def f(model, sae, self):\n"
           "    a = model.W_U @ x.blocks[0].ln_final.w + m.b_U + model.W_E\n"
           "    b = model.cfg.d_vocab + self.model.cfg.n_ctx + hf_model.cfg.x\n"
           "    c = sae.cfg.d_in + sae.W_dec + runtime.d_vocab(model)\n"
           "    return getattr(model, 'W_U')\n")
    found = boundary_violations(src)
    assert [w for _, w in found].count("imports transformer_lens") == 2
    assert {w for _, w in found} >= {"reads .W_U", "reads .W_E", "reads .b_U", "reads .blocks",
                                     "reads .ln_final", "reads model.cfg", "reads self.model.cfg",
                                     "reads hf_model.cfg", "getattr(..., 'W_U')"}
    assert not any("sae" in w or "d_vocab" in w for _, w in found)
    assert len(found) == 11


def unannotated_models(text: str) -> list[tuple[int, str]]:
    """(line, function) of every `model` parameter not annotated with the `Model` alias."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.posonlyargs + args.args + args.kwonlyargs:
                if a.arg != "model":
                    continue
                ann = ast.unparse(a.annotation) if a.annotation is not None else ""
                if ann not in ("Model", "Model | None"):
                    out.append((a.lineno, node.name))
    return out


def test_model_is_annotated_with_one_alias_everywhere():
    bad = {name: hits for name, path in _sources().items()
           if (hits := unannotated_models(path.read_text(encoding="utf-8")))}
    assert not bad, f"`model` parameters without the Model annotation: {bad}"
    planted = "def f(model, x):\n    pass\n\ndef g(model: Model):\n    pass\n"
    assert unannotated_models(planted) == [(1, "f")]  # the checker can fail
