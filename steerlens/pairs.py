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
    """Two completions differing only in the behaviour, with an optional shared prompt."""

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
        d = {"positive": self.positive, "negative": self.negative}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        return d


@dataclass(frozen=True)
class ContrastSet:
    """An immutable, named collection of contrast pairs."""

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
        return [p.positive for p in self.pairs]

    @property
    def negatives(self) -> list[str]:
        return [p.negative for p in self.pairs]

    @property
    def prompts(self) -> list[str | None]:
        return [p.prompt for p in self.pairs]

    @classmethod
    def from_dicts(cls, rows: Iterable[dict[str, Any]], name: str = "pairs") -> ContrastSet:
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
        text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in self.pairs)
        return atomic_write_text(Path(path), text)

    @classmethod
    def from_caa_json(
        cls, path: str | Path, name: str | None = None, strip_paren: bool = True
    ) -> ContrastSet:
        """Read the CAA A/B format: a JSON list of {question, answer_matching_behavior,
        answer_not_matching_behavior}. With `strip_paren`, "(A)" becomes "(A" so the answer letter
        is the last token, as in CAA's extraction."""
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
    """A shipped behaviour: fixed train/test pairs, evaluation prompts and a scorer spec."""

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
    """Names of the behaviours shipped with steerlens."""
    root = _behaviour_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath("meta.json").is_file())


def load_behaviour(name: str) -> Behaviour:
    """Load a shipped behaviour by name (see `list_behaviours()`)."""
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
    """Accept a ContrastSet, a list of pairs or a list of dicts."""
    if isinstance(pairs, ContrastSet):
        return pairs
    items = list(pairs)
    if items and isinstance(items[0], dict):
        return ContrastSet.from_dicts(items)
    return ContrastSet(tuple(items))
