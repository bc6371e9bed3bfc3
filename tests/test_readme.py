"""The README's Python examples run as written (on the embedded model), with at most two import
lines in the quick start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_quick_start_needs_at_most_two_imports():
    first = _python_blocks()[0]
    imports = [ln for ln in first.splitlines() if re.match(r"\s*(import|from)\s", ln)]
    assert 1 <= len(imports) <= 2, imports


@pytest.mark.embedded
def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()  # quick start, configs/sweep/named set, SAEs: in order, one namespace
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), ns)  # noqa: S102 - the README's own code
    assert ns["kl"].n == 3 and len(ns["out"].texts) == 3
    assert (tmp_path / "vectors" / "sentiment" / "vector.json").exists()
    res = ns["res"]
    assert res.settings.n_random == 20 and len(res.table) == 21 * 3 * 4 * 3
    assert len(ns["rows"].texts) == 3
    assert ns["fvec"].norms[12] == pytest.approx(ns["vec12"].norms[12], rel=1e-5)  # norm-matched
