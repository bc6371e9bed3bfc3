"""Figures: one function per result type, each returning a plotly Figure.

This is the only package that imports plotly (and circuitsvis). Figure functions take result
dataclasses, never a model, so drawing is kept apart from computing. `save_html` writes a
self-contained file (plotly.js inlined, no CDN), so figures open offline.
"""

from ._html import save_html

__all__ = ["save_html"]
