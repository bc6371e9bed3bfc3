"""The figure gallery: every figure redrawn from the committed results, self-contained, indexed.

Runs `analyses/gallery.py` on results/ into a temporary directory (no model is loaded) and checks
that each analysis with saved results produced its figures, that no HTML file loads a script from
the network, and that index.html links exactly the figures that exist.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))

import gallery  # noqa: E402

REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
REMOTE_LINK = re.compile(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    entries, skipped = gallery.build(ROOT / "results", out, verbose=False)
    return out, entries, skipped


def test_every_analysis_with_results_is_drawn(built):
    out, entries, skipped = built
    have = {name for name in gallery.ANALYSES
            if gallery.results_dir(name, ROOT / "results").is_dir()}
    assert have, "no committed results to draw"
    drawn = {e.analysis for e in entries}
    assert have <= drawn, f"analyses with results but no figures: {have - drawn}"
    assert set(skipped) == set(gallery.ANALYSES) - have
    for e in entries:
        assert Path(e.path).parent == out and Path(e.path).stat().st_size > 0
        assert e.title and e.caption and "\n" not in e.caption
        assert e.results_command.startswith(("python analyses/", "./scripts/"))


def test_figures_are_self_contained(built):
    out, entries, _ = built
    files = sorted(out.glob("*.html"))
    assert len(files) == len(entries) + 1  # + index.html
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert not REMOTE_SCRIPT.search(text), f"{f.name} loads a script from the network"
        assert not REMOTE_LINK.search(text), f"{f.name} loads a stylesheet from the network"
        if f.name == gallery.INDEX:
            continue
        assert len(text) > 1_000_000, f"{f.name}: its JavaScript library is not inlined"
        # a plotly figure, or a circuitsvis token view (its React bundle inlined)
        assert "Plotly.newPlot" in text or "CircuitsVis" in text, f.name


def test_index_links_exactly_the_existing_figures(built):
    out, entries, _ = built
    parser = _Links()
    parser.feed((out / gallery.INDEX).read_text(encoding="utf-8"))
    local = [h for h in parser.hrefs if not h.startswith("#")]
    assert local, "index.html links no figures"
    for href in local:
        assert "://" not in href and not href.startswith("/"), f"non-local link {href}"
        assert (out / href).is_file(), f"index.html links a missing file: {href}"
    assert sorted(local) == sorted(Path(e.path).name for e in entries)


def test_index_carries_the_headline_findings(built):
    out, _, _ = built
    rows = gallery.headline_rows(ROOT / "results" / "FINDINGS_measurement.md")
    assert len(rows) > 1 and rows[0][:3] == ["analysis", "measure", "value"]
    text = (out / gallery.INDEX).read_text(encoding="utf-8")
    assert "Headline findings" in text
    import html

    assert html.escape(rows[1][1]) in text


def test_redraw_is_deterministic_and_matches_main_output(built, tmp_path):
    """Drawing one analysis twice gives the same figures (up to plotly's random div ids)."""
    out, _, _ = built
    again, _ = gallery.build(ROOT / "results", tmp_path, only=["outcome_direction"],
                             verbose=False)
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    for e in again:
        a = uuid.sub("", Path(e.path).read_text(encoding="utf-8"))
        b = uuid.sub("", (out / Path(e.path).name).read_text(encoding="utf-8"))
        assert a == b


def test_unknown_analysis_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="registered analyses are"):
        gallery.build(ROOT / "results", tmp_path, only=["no_such_analysis"], verbose=False)
