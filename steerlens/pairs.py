"""Contrast pairs: the data a steering vector is built from.

A `ContrastPair` is two completions that differ only in the behaviour of interest (positive vs
negative), optionally after a shared prompt. A `ContrastSet` is an immutable, named sequence of
pairs with readers and writers for JSONL (`{"positive", "negative", "prompt"}` per line) and for
the A/B multiple-choice JSON used by the CAA datasets (Rimsky et al. 2024), where the prompt is a
question listing options and the completions are the matching / non-matching answer letters.
Shipped behaviours (`load_behaviour`) carry a fixed train/test split and evaluation prompts.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .io import atomic_write_text


class IdenticalPairWarning(UserWarning):
    """Some contrast pairs have identical positive and negative texts.

    Such a pair adds nothing to the contrast; a set made only of them gives a zero vector, which
    `build_vector` refuses.
    """


@dataclass(frozen=True)
class ContrastPair:
    """Two completions differing only in the behaviour, with an optional shared prompt.

    Attributes:
        positive: the completion that shows the behaviour.
        negative: the completion that does not (or shows its opposite).
        prompt: the shared prompt both completions follow, or None for bare texts.
    """

    positive: str
    negative: str
    prompt: str | None = None

    def __post_init__(self) -> None:
        for key in ("positive", "negative"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"ContrastPair.{key} must be a non-empty string, got {value!r}.")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"ContrastPair.prompt must be a string or None, got {self.prompt!r}.")

    def to_dict(self) -> dict[str, str]:
        """The pair as a JSON-ready dict (`prompt` only when set).

        Returns:
            A dict with "positive", "negative" and, when set, "prompt".
        """
        d = {"positive": self.positive, "negative": self.negative}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        return d


@dataclass(frozen=True)
class ContrastSet:
    """An immutable, named collection of contrast pairs.

    Slicing returns a `ContrastSet`; indexing returns a `ContrastPair`.

    Attributes:
        pairs: the pairs, in order.
        name: a label carried into results (a behaviour's sets are named "NAME/train", "NAME/test").
    """

    pairs: tuple[ContrastPair, ...]
    name: str = "pairs"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        if not self.pairs:
            raise ValueError(f"ContrastSet {self.name!r} is empty; it needs at least one pair.")
        bad = [p for p in self.pairs if not isinstance(p, ContrastPair)]
        if bad:
            raise ValueError(f"ContrastSet items must be ContrastPair, got {type(bad[0]).__name__}.")

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ContrastPair]:
        return iter(self.pairs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ContrastSet(self.pairs[i], self.name)
        return self.pairs[i]

    @property
    def positives(self) -> list[str]:
        """The positive completions, in order."""
        return [p.positive for p in self.pairs]

    @property
    def negatives(self) -> list[str]:
        """The negative completions, in order."""
        return [p.negative for p in self.pairs]

    @property
    def prompts(self) -> list[str | None]:
        """The shared prompts, in order (None where a pair has none)."""
        return [p.prompt for p in self.pairs]

    def flipped(self) -> ContrastSet:
        """The same pairs with positive and negative swapped (prompts kept).

        A vector built from the flipped set points the other way (for `mean_diff`, exactly the
        negation), so it steers towards the opposite behaviour. The name gains "/flipped";
        flipping twice gives back the original set, name included.

        Returns:
            A new `ContrastSet`.
        """
        pairs = tuple(ContrastPair(p.negative, p.positive, p.prompt) for p in self.pairs)
        suffix = "/flipped"
        name = self.name[: -len(suffix)] if self.name.endswith(suffix) else self.name + suffix
        return ContrastSet(pairs, name)

    @classmethod
    def from_dicts(cls, rows: Iterable[dict[str, Any]], name: str = "pairs") -> ContrastSet:
        """Build a set from dicts with "positive", "negative" and optionally "prompt".

        Args:
            rows: one dict per pair.
            name: the set's name.

        Returns:
            The contrast set.

        Raises:
            ValueError: naming the first row that is not a dict, lacks "positive" or "negative",
                or has a non-string or empty completion (or a non-string prompt).

        Warns:
            IdenticalPairWarning: naming the pairs whose positive and negative texts are identical.
        """
        pairs = [_pair_from_row(row, f"Pair {i} of {name!r}") for i, row in enumerate(rows)]
        _warn_identical(pairs, [f"set {name!r}"] * len(pairs))
        return cls(tuple(pairs), name)

    @classmethod
    def from_jsonl(cls, path: str | Path, name: str | None = None) -> ContrastSet:
        """Read a JSONL file with one `{"positive", "negative", "prompt"}` object per line.

        Args:
            path: the file; blank lines are skipped.
            name: the set's name (default: the file's stem).

        Returns:
            The contrast set.

        Raises:
            FileNotFoundError: if the file does not exist.
            IsADirectoryError: if it is a directory.
            ValueError: naming the file and line that is not valid UTF-8, not a valid JSON
                object, or lacks a required key or has a bad value; naming the file when it is not
                a regular file or holds no pairs.

        Warns:
            IdenticalPairWarning: naming the file, lines and pair indices of pairs whose positive
                and negative texts are identical.
        """
        path = Path(path)
        pairs, where = [], []
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({err.msg}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno} must be a JSON object, got "
                                 f"{_short(row)}.")
            pairs.append(_pair_from_row(row, f"{path}:{lineno}"))
            where.append(f"{path}:{lineno}")
        if not pairs:
            raise ValueError(f"{path} holds no contrast pairs (it is empty or only blank lines); "
                             'each line needs {"positive": ..., "negative": ...}.')
        _warn_identical(pairs, where)
        return cls(tuple(pairs), name or path.stem)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write the pairs as JSONL (one object per line), atomically.

        Args:
            path: the file to write.

        Returns:
            The path written.
        """
        text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in self.pairs)
        return atomic_write_text(Path(path), text)

    @classmethod
    def from_caa_json(
        cls, path: str | Path, name: str | None = None, strip_paren: bool = True
    ) -> ContrastSet:
        """Read the CAA A/B format: a JSON list of {question, answer_matching_behavior,
        answer_not_matching_behavior}.

        With `strip_paren`, "(A)" becomes "(A" so the answer letter is the last token, as in CAA's
        extraction.

        Args:
            path: the JSON file.
            name: the set's name (default: the file's stem).
            strip_paren: drop the closing parenthesis of single-letter answers.

        Returns:
            The contrast set, with the question as each pair's prompt.

        Raises:
            FileNotFoundError: if the file does not exist.
            IsADirectoryError: if it is a directory.
            ValueError: naming the file (and item) if it is not valid UTF-8 JSON, not a non-empty
                list of objects with the three keys, or an item's question or answers are not
                strings (an answer may be a one-element list holding a string).

        Warns:
            IdenticalPairWarning: naming the items whose two answers are identical.
        """
        path = Path(path)
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}).") \
                from err
        if not isinstance(data, list):
            raise ValueError(f"{path}: the CAA format is a JSON list of objects, got a "
                             f"{type(data).__name__}.")
        if not data:
            raise ValueError(f"{path} holds no contrast pairs (an empty list).")
        keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
        pairs, where = [], []
        for i, item in enumerate(data):
            loc = f"{path}: item {i}"
            if not isinstance(item, dict) or any(k not in item for k in keys):
                raise ValueError(f"{loc} needs keys {list(keys)}, got {_short(item)}.")
            pos, neg = (_answer(item[k], strip_paren, f"{loc}: {k}") for k in keys[1:])
            pairs.append(_pair_from_row({"prompt": item["question"], "positive": pos,
                                         "negative": neg}, loc))
            where.append(loc)
        _warn_identical(pairs, where)
        return cls(tuple(pairs), name or path.stem)

    def to_caa_json(self, path: str | Path) -> Path:
        """Write the pairs in the CAA A/B JSON format, atomically (inverse of `from_caa_json`).

        Args:
            path: the file to write.

        Returns:
            The path written.
        """
        rows = [
            {
                "question": p.prompt or "",
                "answer_matching_behavior": _close_paren(p.positive),
                "answer_not_matching_behavior": _close_paren(p.negative),
            }
            for p in self.pairs
        ]
        return atomic_write_text(Path(path), json.dumps(rows, indent=1, ensure_ascii=False))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _pair_from_row(row: Any, where: str) -> ContrastPair:
    """A ContrastPair from a dict, with every problem raised as a ValueError starting `where`."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where} must be a dict with 'positive' and 'negative', got "
                         f"{_short(row)}.")
    missing = {"positive", "negative"} - set(row)
    if missing:
        raise ValueError(
            f"{where} lacks {sorted(missing)}; each pair needs 'positive' and 'negative' (and "
            f"optionally 'prompt'). Got keys {sorted(map(str, row))}."
        )
    for key in ("positive", "negative"):
        value = row[key]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: {key!r} must be a non-empty string, got {_short(value)}.")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string or absent, got {_short(prompt)}.")
    return ContrastPair(row["positive"], row["negative"], prompt)


def _warn_identical(pairs: Sequence[ContrastPair], where: Sequence[str]) -> None:
    """One IdenticalPairWarning naming every pair whose two texts are identical."""
    same = [i for i, p in enumerate(pairs) if p.positive == p.negative]
    if not same:
        return
    shown = ", ".join(f"pair {i} ({where[i]})" for i in same[:10])
    more = f" and {len(same) - 10} more" if len(same) > 10 else ""
    if len(same) == 1:
        msg = f"{where[same[0]]}: pair {same[0]} has identical positive and negative texts"
    else:
        msg = f"{len(same)} of {len(pairs)} pairs have identical positive and negative texts: " \
              f"{shown}{more}"
    whole = " (every pair: the vector would be zero)" if len(same) == len(pairs) else ""
    warnings.warn(f"{msg}{whole}; such a pair adds nothing to the contrast.",
                  IdenticalPairWarning, stacklevel=3)


def _read_text(path: Path) -> str:
    """The UTF-8 text of a pairs file (a BOM is dropped); errors name the file."""
    if not path.exists():
        raise FileNotFoundError(f"Contrast-pair file {path} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Contrast-pair file {path} is a directory; give a .jsonl or "
                                "CAA .json file.")
    if not path.is_file():
        raise ValueError(f"Contrast-pair file {path} is not a regular file (a device or pipe?).")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line} is not valid UTF-8 text (byte {err.start}: "
                         f"{err.reason}); save the file as UTF-8.") from None


def _answer(value: Any, strip_paren: bool, where: str) -> str:
    if isinstance(value, list) and len(value) == 1:  # some CAA files hold a one-element list
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string (or a one-element list holding "
                         f"one), got {_short(value)}.")
    text = value.strip()
    return text[:-1] if strip_paren and re.fullmatch(r"\([A-Z]\)", text) else text


def _close_paren(text: str) -> str:
    return text + ")" if re.fullmatch(r"\([A-Z]", text) else text


# ------------------------------------------------------------------------------ shipped behaviours


@dataclass(frozen=True)
class Behaviour:
    """A shipped behaviour: fixed train/test pairs, evaluation prompts and a scorer spec.

    Attributes:
        name: the behaviour's name (see `list_behaviours()`).
        description: one line on what the pairs contrast.
        train: the pairs to build vectors from.
        test: held-out pairs, never used for building.
        eval_prompts: held-out prompts for steered generation and scoring: no train or test
            pair uses them as its prompt, so an evaluation never sees the vector's own data.
        scorer: the scorer spec for `steerlens.measures.get_scorer` (e.g. VADER for sentiment).
        positive_label: what the positive side is called in figures.
        negative_label: what the negative side is called in figures.
    """

    name: str
    description: str
    train: ContrastSet
    test: ContrastSet
    eval_prompts: tuple[str, ...]
    scorer: dict[str, Any] = field(default_factory=dict)
    positive_label: str = "positive"
    negative_label: str = "negative"


def _behaviour_root():
    return resources.files("steerlens").joinpath("data", "behaviours")


def list_behaviours() -> list[str]:
    """Names of the behaviours shipped with steerlens.

    Returns:
        The sorted behaviour names (e.g. "sentiment", "french", "refusal").
    """
    root = _behaviour_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath("meta.json").is_file())


def load_behaviour(name: str) -> Behaviour:
    """Load a shipped behaviour by name (see `list_behaviours()`).

    Args:
        name: the behaviour's name.

    Returns:
        The `Behaviour`, with its fixed train/test split and evaluation prompts.

    Raises:
        ValueError: if `name` is not shipped; the message lists the valid names.
    """
    valid = list_behaviours()
    if name not in valid:
        raise ValueError(f"Unknown behaviour {name!r}. Valid behaviours are {valid}.")
    root = _behaviour_root().joinpath(name)
    meta = json.loads(root.joinpath("meta.json").read_text(encoding="utf-8"))

    def split(s: str) -> ContrastSet:
        rows = [json.loads(x) for x in root.joinpath(f"{s}.jsonl").read_text("utf-8").splitlines()
                if x.strip()]
        return ContrastSet.from_dicts(rows, f"{name}/{s}")

    return Behaviour(
        name=name,
        description=meta.get("description", ""),
        train=split("train"),
        test=split("test"),
        eval_prompts=tuple(meta.get("eval_prompts", ())),
        scorer=dict(meta.get("scorer", {})),
        positive_label=meta.get("positive_label", "positive"),
        negative_label=meta.get("negative_label", "negative"),
    )


def as_contrast_set(pairs: ContrastSet | Sequence[ContrastPair] | Sequence[dict]) -> ContrastSet:
    """Accept a ContrastSet, a list of pairs or a list of dicts.

    Args:
        pairs: a `ContrastSet` (returned as is), a sequence of `ContrastPair`, or a sequence of
            dicts with "positive", "negative" and optionally "prompt".

    Returns:
        The pairs as a `ContrastSet`.

    Raises:
        ValueError: if the input is empty or its items are not pairs or valid dicts.
    """
    if isinstance(pairs, ContrastSet):
        return pairs
    items = list(pairs)
    if items and isinstance(items[0], dict):
        return ContrastSet.from_dicts(items)
    return ContrastSet(tuple(items))
