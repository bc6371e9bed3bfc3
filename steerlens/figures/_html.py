"""Self-contained HTML output for figures (plotly.js inlined; no CDN script tags)."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text


def save_html(fig, path: str | Path, title: str | None = None) -> Path:
    """Write a plotly figure as standalone HTML (atomically) and return the path."""
    path = Path(path)
    if title is not None:
        fig.update_layout(title=title)
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    return atomic_write_text(path, html)
