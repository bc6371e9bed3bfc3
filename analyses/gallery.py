"""Regenerate every analysis figure from the saved results, and write figures/index.html.

    ./scripts/figures                 # = python -m analyses.gallery
    python -m analyses.gallery --results results --out figures [--only mid_layer_sweep ...]

No model is run: each registered analysis (`analyses.ANALYSES`) has

    make_figures(results_dir: Path, figures_dir: Path) -> list[GalleryEntry]

which reads only the JSON/CSV its `main()` saved under `results/<name>/` and writes its figures
(self-contained HTML, plotly.js inlined) into `figures_dir`; `main()` calls the same drawing code
after saving, so a figure looks the same whether the analysis or the gallery drew it. Each
`GalleryEntry` (analyses/_common.py) carries a title, a one-line caption, the command that produced
the underlying results and the command that redraws it. An analysis whose results directory does
not exist is skipped (and listed as such in the index).

`figures/index.html` links each figure with its caption and commands, and shows the headline
finding rows (`analyses.findings.headline`, the same rows as results/FINDINGS.md). It uses no
external scripts or styles. Like the figures it links, it is a build output and is not committed.
A `figures/demo.html` written by `steerlens demo` is listed too when present (the demo keeps no
saved results, so the gallery cannot redraw it).
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

from steerlens.io import atomic_write_text

from . import ANALYSES, FIGURES, RESULTS, command, get, names
from ._common import GalleryEntry
from .findings import COLUMNS, FINDINGS_MD, headline

INDEX = "index.html"


def build(results_root: Path = RESULTS, figures_dir: Path = FIGURES,
          only: list[str] | None = None, verbose: bool = True
          ) -> tuple[list[GalleryEntry], list[str]]:
    """Redraw the figures of every registered analysis with saved results; write index.html.

    Returns the entries written and the names of analyses skipped for lack of results.
    """
    selected = [get(n) for n in only] if only else list(ANALYSES)
    results_root, figures_dir = Path(results_root), Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    entries: list[GalleryEntry] = []
    skipped: list[str] = []
    for analysis in selected:
        t0 = time.perf_counter()
        rdir = analysis.results_dir(results_root)
        if not rdir.is_dir():
            skipped.append(analysis.name)
            if verbose:
                print(f"[gallery] {analysis.name}: no results in {rdir}; run {analysis.command}")
            continue
        new = analysis.load().make_figures(rdir, figures_dir)
        entries.extend(new)
        if verbose:
            print(f"[gallery] {analysis.name}: {len(new)} figures "
                  f"({time.perf_counter() - t0:.1f} s)")
    demo = figures_dir / "demo.html"
    if demo.exists():
        entries.append(GalleryEntry("demo", demo, "steerlens demo",
                                    "Sentiment steering demo: continuations and mean VADER score "
                                    "by strength, with a random direction (not redrawn by the "
                                    "gallery: the demo keeps no saved results).",
                                    "./scripts/steerlens demo", "./scripts/steerlens demo"))
    write_index(entries, skipped, results_root, figures_dir)
    if verbose:
        print(f"[gallery] wrote {len(entries)} figures and {figures_dir / INDEX}")
    return entries, skipped


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.doc{color:#555;margin:.2rem 0 1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;background:#fafafa}
.card h3{margin:.1rem 0 .4rem;font-size:1.02rem} .card p{margin:.3rem 0}
code{background:#eee;padding:1px 4px;border-radius:3px;font-size:.85em;word-break:break-all}
table{border-collapse:collapse;font-size:.82rem;margin-top:.5rem}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top} th{background:#f0f0f0}
.skip{color:#a00}
"""


def _question(name: str) -> str:
    return "The `steerlens demo` report." if name == "demo" else get(name).question


def write_index(entries: list[GalleryEntry], skipped: list[str], results_root: Path,
                figures_dir: Path) -> Path:
    """Write figures_dir/index.html: one card per figure, grouped by analysis."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>steerlens figure gallery</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>steerlens figure gallery</h1>",
             '<p class="doc">Every figure is redrawn from the saved results in <code>results/'
             "</code> by <code>./scripts/figures</code> (no model is run). Each card names the "
             "command that produced its results. Figures are self-contained HTML (plotly.js "
             "inlined) and open offline.</p>"]
    heads = headline(results_root)
    if heads:
        parts.append("<h2>Headline findings</h2>")
        parts.append(f'<p class="doc">As in <code>results/{e(FINDINGS_MD)}</code> (95% CIs; n '
                     "counts prompts or items; null results are listed as null).</p><table>")
        parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
        for f in heads:
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in f.cells()) + "</tr>")
        parts.append("</table>")
    groups: dict[str, list[GalleryEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.analysis, []).append(entry)
    for analysis, group in groups.items():
        parts.append(f'<h2 id="{e(analysis)}">{e(analysis)}</h2>')
        parts.append(f'<p class="doc">{e(_question(analysis))}</p><div class="grid">')
        for entry in group:
            href = Path(entry.path).resolve().relative_to(figures_dir.resolve()).as_posix()
            parts.append(
                f'<div class="card"><h3><a href="{e(href)}">{e(entry.title)}</a></h3>'
                f"<p>{e(entry.caption)}</p>"
                f"<p>results: <code>{e(entry.results_command)}</code></p>"
                f"<p>redraw: <code>{e(entry.redraw_command)}</code></p></div>")
        parts.append("</div>")
    if skipped:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(
            f'<li class="skip">{e(n)}: no results; run <code>{e(command(n))}</code></li>'
            for n in skipped) + "</ul>")
    parts.append("</body></html>")
    return atomic_write_text(figures_dir / INDEX, "\n".join(parts) + "\n")


def main(argv=None) -> list[GalleryEntry]:
    p = argparse.ArgumentParser(prog=command("gallery"), description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS), help="results root (default results/)")
    p.add_argument("--out", default=str(FIGURES), help="figures directory (default figures/)")
    p.add_argument("--only", nargs="+", default=None, metavar="ANALYSIS",
                   help=f"redraw only these analyses (registered: {', '.join(names())})")
    args = p.parse_args(argv)
    entries, _ = build(Path(args.results), Path(args.out), args.only)
    return entries


if __name__ == "__main__":
    main()
