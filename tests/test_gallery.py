"""The figure gallery: every figure redrawn from the committed results, self-contained, indexed;
and no committed file links to a build output that git ignores.

Runs `analyses.gallery` on results/ into a temporary directory (no model is loaded) and checks
that each registered analysis with saved results produced its figures, that no HTML file loads a
script from the network, and that index.html links exactly the figures that exist.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from analyses import ANALYSES, findings, gallery

ROOT = Path(__file__).resolve().parents[1]

REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
REMOTE_LINK = re.compile(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)
MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


class _Links(HTMLParser):
    """Every href / src in a document (only `<a href>` with `anchors_only`)."""

    def __init__(self, anchors_only: bool = False) -> None:
        super().__init__()
        self.anchors_only = anchors_only
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if self.anchors_only and tag != "a":
            return
        self.hrefs.extend(v for k, v in attrs if k in ("href", "src") and v)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    entries, skipped = gallery.build(ROOT / "results", out, verbose=False)
    return out, entries, skipped


def test_every_analysis_with_results_is_drawn(built):
    out, entries, skipped = built
    have = {a.name for a in ANALYSES if a.results_dir(ROOT / "results").is_dir()}
    assert have, "no committed results to draw"
    drawn = {e.analysis for e in entries}
    assert have <= drawn, f"analyses with results but no figures: {have - drawn}"
    assert set(skipped) == {a.name for a in ANALYSES} - have
    for e in entries:
        assert Path(e.path).parent == out and Path(e.path).stat().st_size > 0
        assert e.title and e.caption and "\n" not in e.caption
        assert e.results_command.startswith(("python -m analyses.", "./scripts/"))


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
    parser = _Links(anchors_only=True)
    parser.feed((out / gallery.INDEX).read_text(encoding="utf-8"))
    local = [h for h in parser.hrefs if not h.startswith("#")]
    assert local, "index.html links no figures"
    for href in local:
        assert "://" not in href and not href.startswith("/"), f"non-local link {href}"
        assert (out / href).is_file(), f"index.html links a missing file: {href}"
    assert sorted(local) == sorted(Path(e.path).name for e in entries)


def test_index_carries_the_headline_findings(built):
    out, _, _ = built
    rows = findings.headline(ROOT / "results")
    assert rows, "no headline finding rows"
    text = (out / gallery.INDEX).read_text(encoding="utf-8")
    assert "Headline findings" in text
    for f in rows:
        assert html.escape(f.measure) in text
    # every analysis that saved findings contributes at least one headline row
    with_findings = {a.name for a in ANALYSES
                     if any(a.results_dir(ROOT / "results").glob("**/findings.json"))}
    assert with_findings <= {f.analysis for f in rows}


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


# ------------------------------------------------------------------------------ committed files


def _git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, capture_output=True,
                          text=True, check=False)


@pytest.fixture(scope="module")
def committed() -> list[Path]:
    """The files a commit of this tree holds: tracked plus untracked ones git does not ignore."""
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    return [ROOT / p for p in listed.split("\0") if p and (ROOT / p).is_file()]


def _local_targets(path: Path) -> list[str]:
    """Relative link targets (href/src, markdown links) in one HTML or markdown file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    parser = _Links()
    parser.feed(text)
    links = parser.hrefs + (MD_LINK.findall(text) if path.suffix == ".md" else [])
    out = []
    for link in links:
        parts = urlsplit(link)
        if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
            continue  # a URL, an anchor in the same page, or a server path (the arena's /static)
        out.append(unquote(parts.path))
    return out


def test_committed_files_link_no_ignored_path(committed):
    """A committed page must not link to a build output (figures/*.html etc.): in a fresh
    clone the link would be dead until the build is run."""
    pages = [p for p in committed if p.suffix in (".md", ".html")]
    assert any(p.name == "README.md" for p in pages)
    targets: dict[str, list[str]] = {}
    for page in pages:
        for link in _local_targets(page):
            target = (page.parent / link).resolve()
            if ROOT.resolve() in target.parents:
                rel = target.relative_to(ROOT.resolve()).as_posix()
                targets.setdefault(rel, []).append(page.relative_to(ROOT).as_posix())
    assert targets, "no local links found (the link parser is broken)"
    res = _git("check-ignore", "--no-index", "--stdin", stdin="\n".join(targets) + "\n")
    ignored = [line for line in res.stdout.splitlines() if line]
    assert not ignored, {t: targets[t] for t in ignored}


def test_committed_links_checker_catches_an_ignored_target(committed, tmp_path):
    """The check above can fail: a link into figures/ (ignored) is found and flagged."""
    page = ROOT / "figures" / "README.md"
    fake = tmp_path / "README.md"
    fake.write_text("[gallery](index.html) and <a href='mid_layer_sweep_zones.html'>z</a>\n")
    links = _local_targets(fake)
    assert sorted(links) == ["index.html", "mid_layer_sweep_zones.html"]
    rel = [(page.parent / link).resolve().relative_to(ROOT.resolve()).as_posix() for link in links]
    res = _git("check-ignore", "--no-index", "--stdin", stdin="\n".join(rel) + "\n")
    assert sorted(res.stdout.split()) == sorted(rel)


def test_index_html_is_not_committed(committed):
    """figures/index.html links only build outputs, so it is a build output itself."""
    assert ROOT / "figures" / gallery.INDEX not in committed
    assert _git("check-ignore", "-q", "--no-index", "figures/index.html").returncode == 0
