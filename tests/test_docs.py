"""The documentation site builds with `mkdocs build --strict` (zero warnings).

The site (mkdocs.yml, docs/) is mkdocs-material + mkdocstrings: the API reference pages are
generated from the docstrings, so a docstring parameter that does not match its signature, an
unresolved cross-reference or a broken link fails this test. The docs toolchain is the `docs`
extra; without it the test skips, unless STEERLENS_REQUIRE_DOCS=1 (CI), where a missing toolchain
is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLCHAIN = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _require_toolchain() -> None:
    missing = [m for m in TOOLCHAIN if _find(m) is None]
    if not missing:
        return
    problem = (f"the docs toolchain is not installed (missing {missing}); "
               "install it with `pip install -e '.[docs]'`")
    if os.environ.get("STEERLENS_REQUIRE_DOCS") == "1":
        pytest.fail(f"STEERLENS_REQUIRE_DOCS=1 but {problem}")
    pytest.skip(problem)


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    _require_toolchain()
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed (exit {proc.returncode}):\n" + "\n".join(warnings or
                                                                               log.splitlines()[-40:])
    )
    assert not warnings, "mkdocs build printed warnings:\n" + "\n".join(warnings)
    return out


def test_docs_build_strict(site: Path):
    for page in ("index.html", "glossary/index.html", "findings/index.html",
                 "api/index.html", "api/steering/index.html", "api/stats/index.html"):
        assert (site / page).is_file(), f"{page} was not built"


def test_api_pages_render_docstrings(site: Path):
    stats = (site / "api/stats/index.html").read_text(encoding="utf-8")
    assert 'id="steerlens.stats.bootstrap_ci"' in stats
    assert "Percentile bootstrap CI" in stats  # the docstring itself, not just the signature
    steering = (site / "api/steering/index.html").read_text(encoding="utf-8")
    assert 'id="steerlens.steer.steer"' in steering
    assert 'id="steerlens.generate.generate"' in steering


def test_findings_and_notebooks_are_included(site: Path):
    findings = (site / "findings/index.html").read_text(encoding="utf-8")
    assert "<!-- include" not in findings, "the findings include marker was not replaced"
    source = (ROOT / "results/FINDINGS.md").read_text(encoding="utf-8")
    heading = re.search(r"^#+\s+(.+)$", source, re.M)
    assert heading, "results/FINDINGS.md has no heading"
    words = re.sub(r"[`*_]", "", heading.group(1)).split()[:3]
    assert all(w in findings for w in words), f"the findings page lacks {heading.group(1)!r}"
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert (site / "notebooks" / nb.name).is_file(), f"{nb.name} is not part of the site"


def test_hook_rewrites_links_outside_the_site():
    _require_toolchain()
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts/mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    files = {"index.md", "glossary.md", "notebooks/01_steering_vectors.py", "kl_by_layer.png"}

    def rewrite(text: str) -> str:
        return hooks.LINK.sub(lambda m: hooks._rewrite_link(m, "results", "", ROOT, files), text)

    assert rewrite("[nb](../notebooks/01_steering_vectors.py)") == \
        "[nb](notebooks/01_steering_vectors.py)"
    assert rewrite("![kl](../docs/kl_by_layer.png)") == "![kl](kl_by_layer.png)"
    assert rewrite("[readme](../README.md#findings)") == "[readme](index.md#findings)"
    assert rewrite("[rows](mid_layer_sweep/findings.json)") == \
        "rows (`results/mid_layer_sweep/findings.json`)"
    assert rewrite("[web](https://example.org/x)") == "[web](https://example.org/x)"
