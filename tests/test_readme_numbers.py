"""Every number in the README's findings table can be traced to a saved result.

The table under "## Findings on the embedded models" is parsed row by row; every number in a row
(signed, with the decimals it is shown with; layer names such as L17 count as 17) must appear in
the recorded findings of the analysis the row names in backticks (every
`results/<analysis>/**/findings.json`, the rows `results/FINDINGS.md` is rebuilt from; the previous
row's analysis when a row names none), after rounding the file's number to the decimals shown.
Only findings.json files are searched, not the raw per-cell logs or summaries: those hold
thousands of values, among which almost any two-decimal number would match by chance (measured:
every 2-decimal value in [-1, 1] occurs in eigengap_layers' summaries, 40% in its findings.json).
Model names (SmolLM2, Gemma 3 270M) are not numbers. The planted-number tests show the check
fails when a number is not in the files.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "results"
SECTION = "## Findings on the embedded models"
MODEL_NAMES = ("SmolLM2-135M-Instruct", "SmolLM2-135M", "SmolLM2", "Gemma-3-270M", "Gemma 3 270M",
               "Gemma 3", "GPT-2")

# a README number: not glued to a word or a decimal point before it, nor to a word after it; the
# sign only when it is a real minus (ASCII or U+2212) or plus, so "1.04–1.75" (en dash) is a range
_README_NUMBER = re.compile(r"(?<![\w.])([-+]?)(\d+(?:\.\d+)?)(?![\w.]*\d)(?![A-Za-z_])")
_LAYER = re.compile(r"\bL(\d+)\b")
_FILE_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def readme_numbers(text: str) -> list[tuple[float, int]]:
    """(value, decimals shown) of every number in a table cell's text, in order of appearance.

    Layer names (L17) count as the layer number; model names are removed first.
    """
    text = text.replace("\u2212", "-")
    for name in MODEL_NAMES:
        text = text.replace(name, " ")
    found = []
    for m in _LAYER.finditer(text):
        found.append((m.start(), float(m.group(1)), 0))
    for m in _README_NUMBER.finditer(text):
        digits = m.group(2)
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        found.append((m.start(), float(m.group(1) + digits), decimals))
    return [(v, d) for _, v, d in sorted(found)]


def findings_rows(readme: str) -> list[list[str]]:
    """The findings table's body rows, as lists of cells."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start:end if end >= 0 else None]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: ") or cells[0] == "question":
            continue  # the separator and the header row
        rows.append(cells)
    return rows


def analysis_dirs(row_text: str, previous: list[Path]) -> list[Path]:
    """The results directories of the analyses a row names in backticks (else the previous row's)."""
    named = [RESULTS / n for n in re.findall(r"`([a-z_][a-z0-9_]*)`", row_text)
             if (RESULTS / n).is_dir()]
    return named or previous


_FILE_CACHE: dict[Path, list[float]] = {}


def file_numbers(directory: Path) -> list[float]:
    """Every number written in the findings.json files under `directory` (sorted)."""
    if directory not in _FILE_CACHE:
        values = []
        for f in sorted(directory.rglob("findings.json")):
            for m in _FILE_NUMBER.finditer(f.read_text(encoding="utf-8", errors="replace")):
                try:
                    values.append(float(m.group(0)))
                except ValueError:
                    continue
        _FILE_CACHE[directory] = sorted(values)
    return _FILE_CACHE[directory]


def traced(value: float, decimals: int, dirs: list[Path]) -> bool:
    """Whether some number in `dirs`' files rounds to `value` at `decimals` places."""
    half = 0.5 * 10.0 ** -decimals * (1 + 1e-9) + 1e-12
    for d in dirs:
        nums = file_numbers(d)
        i = bisect.bisect_left(nums, value - half)
        if i < len(nums) and nums[i] <= value + half:
            return True
    return False


def untraced(rows: list[list[str]]) -> list[tuple[str, float]]:
    """(row question, number) for every number no file of the row's analysis contains."""
    missing, dirs = [], []
    for cells in rows:
        text = " | ".join(cells)
        dirs = analysis_dirs(text, dirs)
        assert dirs, f"the first findings row names no analysis in backticks: {cells[0]!r}"
        for value, decimals in readme_numbers(text):
            if not traced(value, decimals, dirs):
                missing.append((cells[0][:60], value))
    return missing


@pytest.fixture(scope="module")
def rows() -> list[list[str]]:
    return findings_rows(README.read_text(encoding="utf-8"))


def test_the_number_parser_reads_signs_ranges_layers_and_skips_model_names():
    cell = ("L2 +0.01 [−0.24, 0.23]; ratios 1.04–1.75; SmolLM2 ×2.53 at 0.3 × resid norm; "
            "Gemma 3 270M top-20 (p = 0.00025), 10% of 40")
    assert readme_numbers(cell) == [
        (2.0, 0), (0.01, 2), (-0.24, 2), (0.23, 2), (1.04, 2), (1.75, 2), (2.53, 2), (0.3, 1),
        (20.0, 0), (0.00025, 5), (10.0, 0), (40.0, 0)]


def test_findings_table_is_found_and_every_row_has_numbers(rows):
    assert len(rows) >= 7
    assert all(len(cells) == 4 for cells in rows), [len(c) for c in rows]
    for cells in rows:
        assert readme_numbers(" | ".join(cells[1:3])), cells[0]


def test_every_readme_finding_number_is_in_a_results_file(rows):
    missing = untraced(rows)
    assert not missing, ("README findings numbers not found (rounded as shown) in the row's "
                         f"results/<analysis>/ files: {missing}")


def test_a_planted_number_is_caught(rows):
    """The check can fail: numbers that are in no file, or a changed digit, are reported."""
    i = next(i for i, c in enumerate(rows) if "`eigengap_layers`" in c[0])
    planted = [list(c) for c in rows]
    planted[i][1] += "; planted 0.12345 and −7.654"
    assert untraced(planted) == [(rows[i][0][:60], 0.12345), (rows[i][0][:60], -7.654)]
    changed = [list(c) for c in rows]
    assert "+0.39 [−0.29, +0.74]" in changed[i][1]
    changed[i][1] = changed[i][1].replace("+0.39 [−0.29, +0.74]", "+0.39 [−0.29, +9.74]")
    assert untraced(changed) == [(rows[i][0][:60], 9.74)]


def test_a_number_from_another_analysis_does_not_count(rows):
    """Scoping: the KL ratio 3.57 is in kl_diversity_by_layer's findings, not eigengap_layers'."""
    assert traced(3.57, 2, [RESULTS / "kl_diversity_by_layer"])
    assert not traced(3.57, 2, [RESULTS / "eigengap_layers"])


def test_benchmarks_record_their_numbers_and_the_machine(tmp_path, monkeypatch):
    """benchmarks/_record.write: the JSON the README's benchmark numbers are traced to."""
    import importlib.util
    import json
    import os

    import torch

    spec = importlib.util.spec_from_file_location("_record", ROOT / "benchmarks" / "_record.py")
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    monkeypatch.setattr("sys.argv", ["bench_x.py", "--n", "2"])
    path = record.write("x", {"n": 2}, [{"case": "a", "ratio": 3.8}], {"speedup": 3.8},
                        out_dir=tmp_path)
    assert path == tmp_path / "x.json" and not list(tmp_path.glob("*.tmp"))
    saved = json.loads(path.read_text())
    assert saved["command"] == "bench_x.py --n 2" and saved["summary"] == {"speedup": 3.8}
    assert saved["rows"] == [{"case": "a", "ratio": 3.8}] and saved["settings"] == {"n": 2}
    m = saved["machine"]
    assert m["cpu_count"] == os.cpu_count() and m["torch"] == torch.__version__
    assert m["torch_threads"] == torch.get_num_threads() and m["device"] == "cpu"
    assert m["gpu"] is None and m["platform"]
    for name in ("bench_sweep", "bench_kl", "bench_eigengap"):  # every benchmark writes one
        assert "from _record import write" in (ROOT / "benchmarks" / f"{name}.py").read_text()
