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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .io import atomic_write_text


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
            ValueError: naming the first row that lacks "positive" or "negative", or a pair with an
                empty completion.
        """
        pairs = []
        for i, row in enumerate(rows):
            missing = {"positive", "negative"} - set(row)
            if missing:
                raise ValueError(
                    f"Pair {i} of {name!r} lacks {sorted(missing)}; each needs 'positive' and "
                    f"'negative' (and optionally 'prompt'). Got keys {sorted(row)}."
                )
            pairs.append(ContrastPair(row["positive"], row["negative"], row.get("prompt")))
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
            ValueError: naming the line that is not a valid JSON object or lacks a required key.
        """
        path = Path(path)
        rows = []
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({err.msg}).") from err
            if not isinstance(rows[-1], dict):
                raise ValueError(f"{path}:{lineno} must be a JSON object, got {rows[-1]!r}.")
        return cls.from_dicts(rows, name or path.stem)

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
            ValueError: if the file is not a JSON list of objects with the three keys.
        """
        path = Path(path)
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg}).") from err
        if not isinstance(data, list):
            raise ValueError(f"{path}: the CAA format is a JSON list of objects.")
        keys = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
        rows = []
        for i, item in enumerate(data):
            if not isinstance(item, dict) or any(k not in item for k in keys):
                raise ValueError(f"{path}: item {i} needs keys {list(keys)}.")
            pos, neg = (_answer(item[k], strip_paren) for k in keys[1:])
            rows.append({"prompt": item["question"], "positive": pos, "negative": neg})
        return cls.from_dicts(rows, name or path.stem)

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


def _read_text(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"Contrast-pair file {path} does not exist.")
    return path.read_text(encoding="utf-8")


def _answer(value: Any, strip_paren: bool) -> str:
    if isinstance(value, list):  # some CAA files hold a one-element list
        value = value[0] if value else ""
    text = str(value).strip()
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
