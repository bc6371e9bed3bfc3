"""MkDocs hooks for the steerlens docs site (listed under `hooks:` in mkdocs.yml).

Two things the site needs live outside `docs/`, and MkDocs only reads `docs/`:

- the tutorial notebooks (`notebooks/NN_*.py`, jupytext percent scripts): added to the site as
  downloadable files at `notebooks/NAME.py`, so the topic pages can link them and `--strict`
  checks those links;
- the findings (`results/FINDINGS.md`, written by `analyses/`): `docs/findings.md` holds the
  marker `<!-- include results/FINDINGS.md -->`, which is replaced by that file's text. Relative
  links in it are rewritten from `results/` to the site: links into `docs/`, to the notebooks or
  to the README become site links, and links to anything else in the repository (results
  directories, figures) become the repository path in code font, since those files are not part
  of the site.

Nothing here runs a model or imports steerlens.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

INCLUDE = re.compile(r"<!--\s*include\s+(\S+)\s*-->")
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))


def on_files(files, config):
    """Add the notebooks to the site as static files under `notebooks/`."""
    for path in _notebooks(_root(config)):
        files.append(File.generated(config, f"notebooks/{path.name}", abs_src_path=str(path)))
    return files


def _rewrite_link(match: re.Match, source_dir: str, page_dir: str, root: Path, site_files) -> str:
    bang, text, target = match.groups()
    if SCHEME.match(target) or target.startswith(("#", "/")):
        return match.group(0)
    path, _, anchor = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join(source_dir, path))
    if repo_path == "README.md":
        site_path = "index.md"
    elif repo_path.startswith("docs/"):
        site_path = repo_path[len("docs/"):]
    else:
        site_path = repo_path
    if site_path in site_files:
        rel = posixpath.relpath(site_path, page_dir or ".")
        return f"{bang}[{text}]({rel}{'#' + anchor if anchor else ''})"
    # Not part of the site: name the repository path instead of linking to it.
    return f"{text} (`{repo_path}`)" if text and text != repo_path else f"`{repo_path}`"


def on_page_markdown(markdown, page, config, files):
    """Replace `<!-- include PATH -->` markers with the file at PATH (relative to the repo root)."""
    if "<!-- include" not in markdown:
        return markdown
    root = _root(config)
    site_files = {f.src_uri for f in files}
    page_dir = posixpath.dirname(page.file.src_uri)

    def include(match: re.Match) -> str:
        rel = match.group(1)
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{page.file.src_uri}: included file {rel} does not exist.")
        text = path.read_text(encoding="utf-8")
        source_dir = posixpath.dirname(rel)
        return LINK.sub(
            lambda m: _rewrite_link(m, source_dir, page_dir, root, site_files), text
        )

    return INCLUDE.sub(include, markdown)
