"""Every public def in steerlens is documented in Google style (the API reference is built from it).

Public means: a function, class or method whose name has no leading underscore, in a module whose
path has no part with a leading underscore (`__init__.py` counts as public). The checks read the
source with `ast`, so they need no model and import nothing:

- every public class, function and method has a docstring;
- a public function or method with parameters (besides self/cls) has an `Args:` section that
  names every parameter (`*args` / `**kwargs` by their names) and nothing else;
- one that returns or yields a value has a `Returns:` or `Yields:` section (properties are exempt:
  their docstring is the attribute's description);
- one whose own body raises an exception has a `Raises:` section;
- the core entry points have an `Example:` section.

`mkdocs build --strict` (tests/test_docs.py) checks the same sections against the signatures
through griffe; these checks name every offender at once, without the docs toolchain.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "steerlens"

# (module path relative to the package, qualified name) of the entry points that need an Example.
CORE_WITH_EXAMPLES = [
    ("backend/__init__.py", "load_model"),
    ("methods.py", "build_vector"),
    ("steer.py", "steer"),
    ("generate.py", "generate"),
    ("sweep/engine.py", "sweep"),
    ("measures/kl.py", "next_token_kl"),
    ("measures/logit_lens.py", "vector_lens"),
    ("spectral/eigengap.py", "eigengaps"),
    ("stats.py", "bootstrap_ci"),
    ("vectors.py", "SteeringVector.save"),
    ("vectors.py", "SteeringVector.load"),
]

PROPERTY_DECORATORS = {"property", "cached_property", "setter", "getter", "deleter"}


@dataclass(frozen=True)
class Def:
    module: str  # path relative to the package
    qualname: str
    node: ast.AST
    is_method: bool

    @property
    def where(self) -> str:
        return f"steerlens/{self.module}:{self.node.lineno} {self.qualname}"

    @property
    def doc(self) -> str | None:
        return ast.get_docstring(self.node)


def _public_modules() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if any(part.startswith("_") and part != "__init__.py" for part in rel.parts):
            continue
        out.append(path)
    return out


def _collect() -> list[Def]:
    defs: list[Def] = []

    def visit(body, module: str, prefix: str, in_class: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_"):
                    continue
                defs.append(Def(module, prefix + node.name, node, in_class))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, module, prefix + node.name + ".", True)

    for path in _public_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        visit(tree.body, str(path.relative_to(PACKAGE)), "", False)
    return defs


DEFS = _collect()
FUNCTIONS = [d for d in DEFS if isinstance(d.node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _decorators(node) -> set[str]:
    names = set()
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call):
            dec = dec.func
        if isinstance(dec, ast.Attribute):
            names.add(dec.attr)
        elif isinstance(dec, ast.Name):
            names.add(dec.id)
    return names


def _is_property(d: Def) -> bool:
    return bool(_decorators(d.node) & PROPERTY_DECORATORS)


def _params(d: Def) -> list[str]:
    a = d.node.args
    names = [p.arg for p in a.posonlyargs + a.args]
    bound = d.is_method and "staticmethod" not in _decorators(d.node)
    if bound and names and names[0] in ("self", "cls"):
        names = names[1:]
    names += [p.arg for p in a.kwonlyargs]
    if a.vararg:
        names.append(a.vararg.arg)
    if a.kwarg:
        names.append(a.kwarg.arg)
    return names


def _section(doc: str, name: str) -> str | None:
    """The body of a Google-style section (its indented lines), or None when absent."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{name}:":
            indent = len(line) - len(line.lstrip())
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            return "\n".join(body)
    return None


def _documented_args(section: str) -> list[str]:
    lines = [ln for ln in section.splitlines() if ln.strip()]
    if not lines:
        return []
    indent = min(len(ln) - len(ln.lstrip()) for ln in lines)
    names = []
    for ln in lines:
        if len(ln) - len(ln.lstrip()) != indent:
            continue
        m = re.match(r"\s*\**([A-Za-z_][A-Za-z0-9_]*)\s*(\([^)]*\))?\s*:", ln)
        if m:
            names.append(m.group(1))
    return names


def _own_nodes(node):
    """The nodes of a function body, without nested functions, lambdas and classes."""
    stack = list(node.body)
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                stack.append(child)


def _returns_value(d: Def) -> bool:
    if d.node.name == "__init__":
        return False
    ann = d.node.returns
    if ann is not None:
        text = ast.unparse(ann)
        return text not in ("None", "NoReturn", "typing.NoReturn")
    for n in _own_nodes(d.node):
        if isinstance(n, (ast.Yield, ast.YieldFrom)):
            return True
        if (isinstance(n, ast.Return) and n.value is not None
                and not (isinstance(n.value, ast.Constant) and n.value.value is None)):
            return True
    return False


def _raises(d: Def) -> bool:
    return any(isinstance(n, ast.Raise) and n.exc is not None for n in _own_nodes(d.node))


def _report(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{len(problems)} public def(s) {what}:\n  " + "\n  ".join(problems))


def test_collects_the_public_api():
    names = {d.qualname for d in DEFS}
    for expected in ("load_model", "SteeringVector.save", "bootstrap_ci", "eigengaps", "generate"):
        assert expected in names, f"{expected} not found: the docstring checks would be vacuous"


def test_public_defs_have_docstrings():
    _report([d.where for d in DEFS if not d.doc], "without a docstring")


def test_public_functions_document_args():
    problems = []
    for d in FUNCTIONS:
        params = _params(d)
        if not params or not d.doc:
            continue
        section = _section(d.doc, "Args")
        if section is None:
            problems.append(f"{d.where}: no Args section for {params}")
            continue
        documented = _documented_args(section)
        missing = [p for p in params if p not in documented]
        unknown = [p for p in documented if p not in params]
        if missing or unknown:
            problems.append(f"{d.where}: Args missing {missing}, unknown {unknown}")
    _report(problems, "with an incomplete Args section")


def test_public_functions_document_returns():
    problems = []
    for d in FUNCTIONS:
        if not d.doc or _is_property(d) or not _returns_value(d):
            continue
        if _section(d.doc, "Returns") is None and _section(d.doc, "Yields") is None:
            problems.append(d.where)
    _report(problems, "that return a value without a Returns/Yields section")


def test_raising_functions_document_raises():
    problems = []
    for d in FUNCTIONS:
        if d.doc and _raises(d) and _section(d.doc, "Raises") is None:
            problems.append(d.where)
    _report(problems, "that raise without a Raises section")


@pytest.mark.parametrize("module,qualname", CORE_WITH_EXAMPLES)
def test_core_entry_points_have_examples(module, qualname):
    found = [d for d in DEFS if d.module == module and d.qualname == qualname]
    assert found, f"steerlens/{module}: {qualname} not found"
    doc = found[0].doc or ""
    assert _section(doc, "Example") is not None or _section(doc, "Examples") is not None, (
        f"{found[0].where} has no Example section"
    )
