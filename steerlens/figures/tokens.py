"""Token views (circuitsvis): per-token KL coloured along the text, saved as offline HTML.

`circuitsvis` renders each view twice: `local_src` with its JavaScript bundle (~1.3 MB) inlined,
and `cdn_src`, which imports the bundle from unpkg.com. In a notebook, `RenderedHTML` picks the CDN
version when it can reach the internet (it probes google.com first, with a 1 s timeout). The files
written by `save_token_view` always use the inlined `local_src`, so they open offline.
"""

from __future__ import annotations

import html as _html
import re
from pathlib import Path

from ..io import atomic_write_text
from ..measures.kl import TokenKL

_SCRIPT_END = re.compile(r"</(script)", re.IGNORECASE)


def _safe(token: str) -> str:
    # A token containing "</script" would end the inline <script> block that holds the props.
    return _SCRIPT_END.sub("<\u200b/\\1", token)


def token_kl_view(result: TokenKL, max_value: float | None = None):
    """circuitsvis `colored_tokens` of per-token KL (bits): white at 0, darker = more disturbed.

    Args:
        result: the output of `per_token_kl`.
        max_value: the KL that gets the darkest colour (default: the text's maximum).

    Returns:
        (circuitsvis.utils.render.RenderedHTML): A circuitsvis render object.
    """
    from circuitsvis.tokens import colored_tokens

    values = list(result.bits)
    top = max_value if max_value is not None else max(max(values), 1e-9)
    return colored_tokens(tokens=[_safe(t) for t in result.tokens], values=values,
                          min_value=0.0, max_value=float(top))


def save_token_view(view, path: str | Path, title: str = "steerlens token view") -> Path:
    """Write a circuitsvis view as a self-contained HTML page (JavaScript inlined; no CDN).

    Args:
        view (circuitsvis.utils.render.RenderedHTML): a circuitsvis render object.
        path: the file to write.
        title: the page title.

    Returns:
        The path written.

    Raises:
        ValueError: if `view` is not a circuitsvis render object.
    """
    src = getattr(view, "local_src", None)
    if not isinstance(src, str):
        raise ValueError(
            f"Expected a circuitsvis RenderedHTML (with .local_src), got {type(view).__name__}."
        )
    page = (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_html.escape(title)}</title>\n</head>\n<body>\n"
        f"<h3>{_html.escape(title)}</h3>\n{src}\n</body>\n</html>\n"
    )
    return atomic_write_text(Path(path), page)
