"""Finding rows: one writer for every analysis, and the findings table built from all of them.

    python -m analyses.findings [--results results]      # rebuild results/FINDINGS.md

An analysis records its headline numbers as `Finding` rows (measure, value, 95% CI, n, random
control, verdict) and saves them with `save_findings`, which writes `<out>/findings.json` (the
rows plus the run's settings and caveats) and, for a full (non `--quick`) run inside `results/`,
rebuilds `results/FINDINGS.md`. `build` gathers every `findings.json` under the results root, in
the order of the analysis registry (`analyses.ANALYSES`), into that one markdown file: the list
of analyses with their commands, the headline rows, every row per analysis, and each run's
settings and caveats. The table is therefore always regenerated from the numbers an analysis
actually computed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from steerlens.io import atomic_write_text

from . import ANALYSES, RESULTS
from ._common import Context, write_json

FINDINGS_MD = "FINDINGS.md"
FINDINGS_JSON = "findings.json"
COLUMNS = ("analysis", "measure", "value", "95% CI", "n", "random control", "verdict")


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a findings table: `digits` significant digits, "nan" for a missing value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "nan"
    return f"{x:.{digits}g}"


def fmt_ci(est: float, low: float, high: float, digits: int = 3) -> str:
    return f"{fmt(est, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


@dataclass(frozen=True)
class Finding:
    """One row of the findings table."""

    analysis: str
    measure: str
    value: float
    low: float | None
    high: float | None
    n: str
    random_control: str
    verdict: str
    headline: bool = False  # also listed in the short headline table

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def cells(self) -> tuple[str, ...]:
        """The row's cells as text, in `COLUMNS` order (no CI for a missing bound)."""
        bounds = (self.low, self.high)
        ci = ("" if any(b is None or not math.isfinite(b) for b in bounds)
              else f"[{fmt(self.low)}, {fmt(self.high)}]")
        return (self.analysis, self.measure, fmt(self.value), ci, str(self.n),
                str(self.random_control), str(self.verdict))

    def row(self) -> str:
        """The markdown table row."""
        return "| " + " | ".join(c.replace("|", "\\|") for c in self.cells()) + " |"


def save_findings(ctx: Context, findings: Sequence[Finding], settings: Mapping[str, Any],
                  notes: Sequence[str] = ()) -> Path:
    """Write the run's finding rows, settings and caveats to `<ctx.out>/findings.json`.

    A full run saved inside `results/` then rebuilds `results/FINDINGS.md`; quick (smoke-test)
    runs and runs saved elsewhere write only their own directory.
    """
    path = write_json(ctx.out / FINDINGS_JSON,
                      {"analysis": ctx.name, "quick": ctx.quick, "settings": dict(settings),
                       "notes": list(notes), "findings": [f.as_dict() for f in findings]})
    if not ctx.quick and RESULTS.resolve() in ctx.out.resolve().parents:
        build(RESULTS)
    return path


def load_findings(path: Path) -> list[Finding]:
    """The rows of one saved findings.json."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Finding(**{k: (math.nan if k == "value" and v is None else v) for k, v in f.items()})
            for f in data["findings"]]


def print_findings(findings: Sequence[Finding]) -> None:
    print("\nFindings (95% CIs):")
    for f in findings:
        print(f"- {f.measure}: {fmt_ci(f.value, f.low, f.high)} (n={f.n}); random: "
              f"{f.random_control}; verdict: {f.verdict}")


def _runs(results_root: Path) -> list[tuple[Path, dict]]:
    """Every full-run findings.json under results_root, in registry order (then by path)."""
    order = {a.name: i for i, a in enumerate(ANALYSES)}
    found = []
    for path in results_root.glob(f"**/{FINDINGS_JSON}"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not data.get("quick") and data.get("analysis") in order:
            rel = path.parent.relative_to(results_root)
            found.append(((order[data["analysis"]], len(rel.parts), str(rel)), path, data))
    return [(p, d) for _, p, d in sorted(found, key=lambda x: x[0])]


def headline(results_root: Path = RESULTS) -> list[Finding]:
    """The headline rows of every saved run, in registry order (the gallery shows them)."""
    return [f for path, _ in _runs(Path(results_root)) for f in load_findings(path) if f.headline]


def build(results_root: Path = RESULTS) -> Path:
    """Gather every `findings.json` under results_root into `results_root/FINDINGS.md`."""
    return atomic_write_text(Path(results_root) / FINDINGS_MD, render(results_root))


def render(results_root: Path = RESULTS) -> str:
    """The text of FINDINGS.md for the runs saved under results_root."""
    results_root = Path(results_root)
    header = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    runs = _runs(results_root)
    have = {d["analysis"] for _, d in runs}
    text = [
        "# Findings (steerlens analyses)",
        "",
        "Generated by `python -m analyses.findings` from every `results/<analysis>/**/findings.json`",
        "(each full analysis run also rebuilds it). Intervals are 95% (percentile bootstrap over",
        "prompts/items unless the measure says Wilson). n counts prompts or items. Null results are",
        "listed as null.",
        "",
        "## Analyses",
        "",
        "| analysis | question | command | results |",
        "|---|---|---|---|",
        *(f"| {a.name} | {a.question} | `{a.command}` | `results/{a.results_dir(Path()).name}/`"
          + ("" if a.name in have else " (no findings recorded)") + " |" for a in ANALYSES),
        "",
        "## Headline findings",
        "",
        *header,
        *(f.row() for f in headline(results_root)),
        "",
        "## All findings",
    ]
    notes = []
    for path, data in runs:
        rel = path.parent.relative_to(results_root).as_posix()
        text += ["", f"### {data['analysis']} (`results/{rel}/`)", "", *header,
                 *(f.row() for f in load_findings(path))]
        notes.append(f"- `results/{rel}/`: settings {json.dumps(data.get('settings', {}))}")
        notes.extend(f"  - {note}" for note in data.get("notes", []))
    text += ["", "## Settings and caveats", "", *notes, ""]
    return "\n".join(text)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="python -m analyses.findings",
                                description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS), help="results root (default results/)")
    args = p.parse_args(argv)
    path = build(Path(args.results))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
