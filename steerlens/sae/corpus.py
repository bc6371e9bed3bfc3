"""An offline English-prose corpus for SAE training, built from text that is already installed.

SAEs need a few million tokens of ordinary text, and the machines steerlens targets reach no
dataset hub. Installed Python packages carry a surprising amount of prose: the interpreter's
`pydoc_data.topics` (the language reference as plain text), docstrings of the standard library and
of every installed distribution, and each distribution's long description (its PyPI README). We
walk these in a fixed order (sources, then distributions and files sorted by name), keep prose
paragraphs and drop code (doctest lines, fenced or indented blocks, lines that are mostly
punctuation), deduplicate paragraphs exactly after normalising whitespace, and group the paragraphs
of one file into documents of up to `max_doc_chars`. The filter is line-based: an indented code
block that starts after a blank line and reads like words (>= 60% letters) slips through. The
result is deterministic for a given environment, and `CorpusProvenance` records where every
character came from (source, package, version, files, chars, tokens); it is shipped with the SAE.
The corpus is cached as JSON lines under the steerlens cache dir, written atomically. steerlens'
own distribution is excluded so its held-out texts never leak into training.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import json
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..backend.loading import cache_root
from ..io import atomic_write_text

SOURCES = ("pydoc_topics", "stdlib_docstrings", "package_descriptions", "package_docstrings")
EXCLUDED_DISTRIBUTIONS = frozenset({"steerlens"})
CORPUS_VERSION = 1


@dataclass(frozen=True)
class Document:
    """One training document: prose paragraphs from one file of one package.

    Attributes:
        source: one of `SOURCES` (or the label of user texts).
        package: the distribution the text came from ("python" for the stdlib).
        text: the paragraphs, joined by blank lines.
    """

    source: str
    package: str
    text: str


@dataclass(frozen=True)
class SourceRecord:
    """How much text one (source, package) contributed.

    Attributes:
        source: the source.
        package: the distribution.
        version: the distribution's version.
        files: number of files that contributed text.
        documents: number of documents.
        chars: number of characters.
        tokens: number of tokens under the corpus's tokenizer.
    """

    source: str
    package: str
    version: str
    files: int
    documents: int
    chars: int
    tokens: int


@dataclass(frozen=True)
class CorpusProvenance:
    """Where the corpus came from; `records` has one row per (source, package).

    Attributes:
        version: the corpus format version.
        python: the Python version whose stdlib was read.
        tokenizer: the tokenizer that counted tokens.
        n_documents: number of documents.
        n_chars: number of characters.
        n_tokens: number of tokens.
        dropped_duplicate_paragraphs: paragraphs dropped as exact duplicates.
        cleaning: a description of the cleaning rules.
        records: one `SourceRecord` per (source, package).
    """

    version: int
    python: str
    tokenizer: str
    n_documents: int
    n_chars: int
    n_tokens: int
    dropped_duplicate_paragraphs: int
    cleaning: str
    records: tuple[SourceRecord, ...]

    def to_dict(self) -> dict:
        """The provenance as a JSON-ready dict.

        Returns:
            A dict of every field, records as dicts.
        """
        d = asdict(self)
        d["records"] = [asdict(r) for r in self.records]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CorpusProvenance:
        """Rebuild provenance from `to_dict()` output.

        Args:
            d: the dict.

        Returns:
            The provenance.
        """
        return cls(**{**d, "records": tuple(SourceRecord(**r) for r in d["records"])})

    def tokens_by_source(self) -> dict[str, int]:
        """Tokens contributed by each source.

        Returns:
            source -> number of tokens.
        """
        out: dict[str, int] = {}
        for r in self.records:
            out[r.source] = out.get(r.source, 0) + r.tokens
        return out


@dataclass(frozen=True)
class Corpus:
    """Documents plus the provenance of every character in them.

    Attributes:
        documents: the documents, in build order.
        provenance: where they came from.
    """
    documents: tuple[Document, ...]
    provenance: CorpusProvenance

    def texts(self) -> list[str]:
        """The documents' texts, in order.

        Returns:
            One string per document.
        """
        return [d.text for d in self.documents]


CLEANING = (
    "paragraphs split on blank lines; dropped: doctest/prompt lines, fenced and indented code "
    "blocks, rst directives, tables, URLs-only lines, lines with <60% letters+spaces; kept "
    "paragraphs with >= 8 words and >= 40 chars; exact dedupe of whitespace-normalised paragraphs"
)

_WORD = re.compile(r"[A-Za-z][a-z]+")


def _prose_line(line: str) -> bool:
    s = line.strip()
    if not s:
        return False
    if s.startswith((">>>", "...", "$ ", "%", "|", "+--", "==", "--", "..", ":", "#", "{", "}", "<")):
        return False
    if s.startswith(("http://", "https://")) or set(s) <= set("=-~^*_+#`. "):
        return False
    letters = sum(c.isalpha() or c == " " for c in s)
    return letters / len(s) >= 0.6


def _paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a docstring/README/reference text, code removed."""
    in_fence = False
    para: list[str] = []
    base_indent: int | None = None

    def flush() -> Iterator[str]:
        if para:
            p = " ".join(para)
            if len(p) >= 40 and len(_WORD.findall(p)) >= 8:
                yield p
        para.clear()

    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw.strip().startswith(("```", "~~~")):
            in_fence = not in_fence
            yield from flush()
            continue
        if in_fence:
            continue
        if not raw.strip():
            yield from flush()
            continue
        indent = len(raw) - len(raw.lstrip())
        if base_indent is None or not para:
            base_indent = indent if not para else base_indent
        # lines indented beyond the paragraph's start are literal/code blocks
        if para and indent >= (base_indent or 0) + 4:
            yield from flush()
            continue
        if not _prose_line(raw):
            yield from flush()
            continue
        if not para:
            base_indent = indent
        para.append(raw.strip())
    yield from flush()


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


# ---------------------------------------------------------------- raw sources, in a fixed order
# Each yields (source, package, version, file_id, text).

RawItem = tuple[str, str, str, str, str]


def _pydoc_topics() -> Iterator[RawItem]:
    from pydoc_data import topics

    ver = sys.version.split()[0]
    for key in sorted(topics.topics):
        yield "pydoc_topics", "python", ver, f"topics:{key}", topics.topics[key]


def _stdlib_docstrings(max_chars: int) -> Iterator[RawItem]:
    root = Path(sysconfig.get_paths()["stdlib"])
    ver = sys.version.split()[0]
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("test/", "idlelib/", "lib2to3/tests", "site-packages/")) or "/test" in rel:
            continue
        for doc in _docstrings(path):
            total += len(doc)
            yield "stdlib_docstrings", "python", ver, rel, doc
        if total >= max_chars:
            return


def _distributions() -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    for d in md.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name and name not in EXCLUDED_DISTRIBUTIONS and name not in seen:
            seen[name] = d
    return [seen[k] for k in sorted(seen)]


def _package_descriptions() -> Iterator[RawItem]:
    for d in _distributions():
        desc = d.metadata.get("Description") or d.metadata.get_payload() or ""
        if desc.strip():
            yield "package_descriptions", d.metadata["Name"], d.version, "METADATA", str(desc)


def _package_docstrings(max_chars_per_package: int) -> Iterator[RawItem]:
    for d in _distributions():
        files = sorted(str(f) for f in (d.files or []) if str(f).endswith(".py"))
        total = 0
        for f in files:
            if "/tests/" in f or "/test/" in f or f.startswith(("tests/", "test/")):
                continue
            path = Path(d.locate_file(f))
            if not path.is_file():
                continue
            for doc in _docstrings(path):
                total += len(doc)
                yield "package_docstrings", d.metadata["Name"], d.version, f, doc
            if total >= max_chars_per_package:
                break


# ---------------------------------------------------------------------------------- building


def build_corpus(
    tokenizer,
    *,
    sources: Sequence[str] = SOURCES,
    max_doc_chars: int = 2000,
    stdlib_max_chars: int = 3_000_000,
    package_max_chars: int = 400_000,
    min_tokens: int = 1,
) -> Corpus:
    """Collect, clean, dedupe and chunk the installed text; count tokens with `tokenizer`.

    `tokenizer` is a Hugging Face tokenizer (`runtime.tokenizer(model)`). Raises ValueError if
    the result is empty or below `min_tokens`.

    Args:
        tokenizer (transformers.PreTrainedTokenizerBase): counts the tokens.
        sources: which of `SOURCES` to read, always in `SOURCES` order.
        max_doc_chars: most characters per document (paragraphs are not split).
        stdlib_max_chars: stop reading stdlib docstrings after this many characters.
        package_max_chars: most docstring characters per installed distribution.
        min_tokens: fail if the corpus has fewer tokens than this.

    Returns:
        The `Corpus`, deterministic for a given environment.

    Raises:
        ValueError: for unknown sources, or an empty or too small corpus.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"Unknown corpus sources {unknown}; valid sources are {list(SOURCES)}.")
    gens = {
        "pydoc_topics": lambda: _pydoc_topics(),
        "stdlib_docstrings": lambda: _stdlib_docstrings(stdlib_max_chars),
        "package_descriptions": lambda: _package_descriptions(),
        "package_docstrings": lambda: _package_docstrings(package_max_chars),
    }
    seen: set[bytes] = set()
    dropped = 0
    docs: list[Document] = []
    stats: dict[tuple[str, str], dict] = {}
    for source in SOURCES:
        if source not in sources:
            continue
        cur_key: tuple[str, str, str] | None = None
        buf: list[str] = []

        def emit(key, buf=buf) -> None:
            if buf and key is not None:
                docs.append(Document(key[0], key[1], "\n\n".join(buf)))
                stats[(key[0], key[1])]["documents"] += 1
            buf.clear()

        for src, pkg, ver, file_id, text in gens[source]():
            key = (src, pkg, file_id)
            if key != cur_key:
                emit(cur_key)
                cur_key = key
            st = stats.setdefault((src, pkg), {"version": ver, "files": set(), "documents": 0})
            for p in _paragraphs(text):
                h = hashlib.blake2b(" ".join(p.split()).lower().encode(), digest_size=16).digest()
                if h in seen:
                    dropped += 1
                    continue
                seen.add(h)
                st["files"].add(file_id)
                if buf and sum(len(b) for b in buf) + len(p) > max_doc_chars:
                    emit(cur_key)
                buf.append(p)
        emit(cur_key)
    if not docs:
        raise ValueError(
            f"The corpus is empty: sources {list(sources)} yielded no prose paragraphs. Valid "
            f"sources are {list(SOURCES)}; check that the Python installation has its stdlib."
        )
    enc = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    counts = [len(ids) for ids in enc]
    chars: dict[tuple[str, str], int] = {}
    toks: dict[tuple[str, str], int] = {}
    for d, n in zip(docs, counts):
        chars[(d.source, d.package)] = chars.get((d.source, d.package), 0) + len(d.text)
        toks[(d.source, d.package)] = toks.get((d.source, d.package), 0) + n
    records = tuple(
        SourceRecord(src, pkg, st["version"], len(st["files"]), st["documents"],
                     chars[(src, pkg)], toks[(src, pkg)])
        for (src, pkg), st in stats.items() if st["documents"]
    )
    total = sum(counts)
    if total < min_tokens:
        raise ValueError(f"The corpus has {total} tokens but at least {min_tokens} are required.")
    prov = CorpusProvenance(
        version=CORPUS_VERSION,
        python=sys.version.split()[0],
        tokenizer=getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        n_documents=len(docs),
        n_chars=sum(len(d.text) for d in docs),
        n_tokens=total,
        dropped_duplicate_paragraphs=dropped,
        cleaning=CLEANING,
        records=records,
    )
    return Corpus(tuple(docs), prov)


def corpus_from_texts(texts: Sequence[str], tokenizer, source: str = "user") -> Corpus:
    """A corpus from user texts (one document each); empty input raises ValueError.

    Args:
        texts: the texts; blank ones are skipped.
        tokenizer (transformers.PreTrainedTokenizerBase): counts the tokens.
        source: the label recorded as source and package.

    Returns:
        The `Corpus`, with a single provenance record.

    Raises:
        ValueError: if no text is non-blank.
    """
    docs = tuple(Document(source, source, t) for t in texts if t and t.strip())
    if not docs:
        raise ValueError("The corpus is empty: pass at least one non-blank text.")
    enc = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    counts = [len(x) for x in enc]
    rec = SourceRecord(source, source, "", len(docs), len(docs), sum(len(d.text) for d in docs),
                       sum(counts))
    prov = CorpusProvenance(CORPUS_VERSION, sys.version.split()[0],
                            getattr(tokenizer, "name_or_path", ""), len(docs), rec.chars,
                            rec.tokens, 0, "none (user texts)", (rec,))
    return Corpus(docs, prov)


def heldout_split(texts: Sequence[str], every: int = 50) -> tuple[list[str], list[str]]:
    """Split documents into training and held-out ones by a hash of each text (order-free).

    A text is held out when blake2b(text) % every == 0, so the split of a document does not
    depend on which other documents are present or on their order.

    Args:
        texts: the documents.
        every: about one in `every` documents is held out (>= 2).

    Returns:
        (training texts, held-out texts), each in input order.

    Raises:
        ValueError: if every < 2.
    """
    if every < 2:
        raise ValueError(f"every must be >= 2 (one in `every` documents is held out), got {every}.")
    train: list[str] = []
    held: list[str] = []
    for t in texts:
        h = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
        (held if h % every == 0 else train).append(t)
    return train, held


# ---------------------------------------------------------------------------------- caching


def corpus_dir() -> Path:
    """The cache directory for built corpora (under the steerlens cache root).

    Returns:
        The directory path (not created).
    """
    return cache_root() / "sae" / "corpus"


def save_corpus(corpus: Corpus, path: str | Path) -> Path:
    """Write documents as JSON lines and provenance beside it (`<name>.provenance.json`).

    Both files are written atomically.

    Args:
        corpus: the corpus.
        path: the JSON-lines file to write.

    Returns:
        The path written.
    """
    path = Path(path)
    lines = "".join(json.dumps(asdict(d), ensure_ascii=False) + "\n" for d in corpus.documents)
    atomic_write_text(path, lines)
    atomic_write_text(provenance_path(path), json.dumps(corpus.provenance.to_dict(), indent=1))
    return path


def provenance_path(path: str | Path) -> Path:
    """The provenance file that belongs to a corpus file.

    Args:
        path: the corpus's JSON-lines file.

    Returns:
        `<stem>.provenance.json` beside it.
    """
    path = Path(path)
    return path.with_name(path.stem + ".provenance.json")


def load_corpus(path: str | Path) -> Corpus:
    """Read a corpus written by `save_corpus`; a corrupt file raises ValueError naming it.

    Args:
        path: the corpus's JSON-lines file (its provenance file must sit beside it).

    Returns:
        The `Corpus`.

    Raises:
        ValueError: if either file is unreadable or corrupt, or holds no documents.
    """
    path = Path(path)
    try:
        docs = tuple(Document(**json.loads(line)) for line in
                     path.read_text(encoding="utf-8").splitlines() if line.strip())
        prov = CorpusProvenance.from_dict(json.loads(provenance_path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"Corpus file {path} (or its provenance) is unreadable or corrupt: {e}. "
                         "Delete it to rebuild.") from e
    if not docs:
        raise ValueError(f"Corpus file {path} holds no documents.")
    return Corpus(docs, prov)


def cached_corpus(tokenizer, name: str = "installed", rebuild: bool = False, **kwargs) -> Corpus:
    """Build the installed-text corpus once and reuse it from the cache.

    The cache key covers the corpus version, the Python version and the build options.

    Args:
        tokenizer (transformers.PreTrainedTokenizerBase): counts the tokens.
        name: the cache file's name prefix.
        rebuild: build again even if a cached copy exists.
        **kwargs (Any): options for `build_corpus`.

    Returns:
        The `Corpus`.

    Raises:
        ValueError: as `build_corpus` / `load_corpus`.
    """
    key = hashlib.sha256(json.dumps([CORPUS_VERSION, sys.version, sorted(kwargs.items())],
                                    default=str).encode()).hexdigest()[:10]
    path = corpus_dir() / f"{name}-{key}.jsonl"
    if path.exists() and provenance_path(path).exists() and not rebuild:
        return load_corpus(path)
    corpus = build_corpus(tokenizer, **kwargs)
    save_corpus(corpus, path)
    return corpus
