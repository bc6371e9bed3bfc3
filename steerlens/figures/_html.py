"""Self-contained HTML output for figures (plotly.js inlined; no CDN script tags)."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text


def save_html(fig, path: str | Path, title: str | None = None) -> Path:
    """Write a plotly figure as standalone HTML (atomically) and return the path.

    plotly.js is inlined (no CDN), so the file opens offline.

    Args:
        fig (plotly.graph_objects.Figure): the figure.
        path: the file to write.
        title: replaces the figure's title when given.

    Returns:
        The path written.
    """
    path = Path(path)
    if title is not None:
        fig.update_layout(title=title)
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    return atomic_write_text(path, html)
