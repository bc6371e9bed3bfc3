"""Behaviour scorers: turn a generated text into a number saying how much of a behaviour it shows.

A `Scorer` is any `Callable[[str], float]`. Built-ins (all offline):

- `sentiment`: VADER's compound score in [-1, 1] (Hutto & Gilbert 2014; the lexicon ships with
  `vaderSentiment`).
- `keywords`: (positive hits - negative hits) / number of words, in [-1, 1]. Words are runs of
  letters/digits, lower-cased, with apostrophes kept inside words ("c'est", "don't"; curly
  apostrophes count as straight ones); each keyword matches whole words only. An empty text
  scores 0. Normalising by length makes long and short answers comparable.
- `regex`: 1.0 if the (case-insensitive) pattern occurs anywhere in the text, else 0.0.
- `json`: 1.0 if the text is, or contains, a JSON object (a code fence around it is fine), else 0.0.

`get_scorer` builds one from a spec dict like those in `data/behaviours/*/meta.json`, a kind or
behaviour name, or passes a callable through. `safe_score` scores many texts and records a
failing item as NaN plus an error instead of stopping.

`ab_logprob` scores CAA-style multiple-choice items (Rimsky et al. 2024): for each question it
compares the log-probability of the answer showing the behaviour with the other answer(s), each
answer scored as a full continuation (so multi-token answers are handled), optionally steered.
Precision: `ab_logprob`'s answer log-probabilities are float64 (`span_logprobs`), and the
softmax over answers runs in numpy float64, whatever the model's dtype.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..backend import Model
from ..steer import PositionMode
from ._common import check_batch_size, check_texts
from .perplexity import continuation_logprobs

Scorer = Callable[[str], float]
SCORER_KINDS: tuple[str, ...] = ("sentiment", "keywords", "regex", "json")

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words with inner apostrophes kept (the tokenization `keywords` uses).

    Args:
        text: the text.

    Returns:
        The words, in order.
    """
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_scorer() -> Scorer:
    """VADER compound sentiment in [-1, 1].

    Returns:
        A scorer named "sentiment" (the lexicon ships with vaderSentiment, so it runs offline).
    """

    def score(text: str) -> float:
        return float(_vader().polarity_scores(_check_text(text))["compound"])

    score.__name__ = "sentiment"
    return score


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise ValueError(f"A scorer takes a string, got {type(text).__name__}.")
    return text


def _keyword_set(items, which: str) -> frozenset[str]:
    if isinstance(items, str) or not isinstance(items, Sequence | set | frozenset):
        raise ValueError(f"{which} keywords must be a list of words, got {items!r}.")
    out = set()
    for w in items:
        norm = w.lower().replace("\u2019", "'") if isinstance(w, str) else None
        if norm is None or _WORD.fullmatch(norm) is None:
            raise ValueError(
                f"{which} keyword {w!r} is not a single word (letters/digits with optional inner "
                f"apostrophes); keywords match whole words."
            )
        out.add(norm)
    return frozenset(out)


def keyword_scorer(positive: Sequence[str] = (), negative: Sequence[str] = ()) -> Scorer:
    """(positive hits - negative hits) / words, whole-word and case-insensitive.

    Args:
        positive: words that count +1.
        negative: words that count -1.

    Returns:
        A scorer named "keywords", in [-1, 1]; an empty text scores 0.

    Raises:
        ValueError: if no keyword is given, a keyword is not a single word, or a word is listed on
            both sides.
    """
    pos, neg = _keyword_set(positive, "positive"), _keyword_set(negative, "negative")
    if not pos and not neg:
        raise ValueError("keyword_scorer needs at least one positive or negative keyword.")
    both = sorted(pos & neg)
    if both:
        raise ValueError(f"Keywords {both} are listed as both positive and negative.")

    def score(text: str) -> float:
        ws = words(_check_text(text))
        if not ws:
            return 0.0
        hits = sum(1 for w in ws if w in pos) - sum(1 for w in ws if w in neg)
        return hits / len(ws)

    score.__name__ = "keywords"
    return score


def regex_scorer(pattern: str) -> Scorer:
    """1.0 if `pattern` (case-insensitive) occurs in the text, else 0.0.

    Args:
        pattern: a regular expression.

    Returns:
        A scorer named "regex".

    Raises:
        ValueError: if the pattern is empty or invalid.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"regex pattern must be a non-empty string, got {pattern!r}.")
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise ValueError(f"Invalid regex {pattern!r}: {err}.") from err

    def score(text: str) -> float:
        return 1.0 if rx.search(_check_text(text)) else 0.0

    score.__name__ = "regex"
    return score


def contains_json_object(text: str) -> bool:
    """Whether `text` parses as, or contains, a JSON object.

    Args:
        text: the text (a code fence around the JSON is fine).

    Returns:
        True if a JSON object can be decoded from it.
    """
    stripped = text.strip()
    try:
        if isinstance(json.loads(stripped), dict):
            return True
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            if isinstance(obj, dict):
                return True
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return False


def json_scorer() -> Scorer:
    """1.0 if the text is or contains a JSON object, else 0.0.

    Returns:
        A scorer named "json".
    """

    def score(text: str) -> float:
        return 1.0 if contains_json_object(_check_text(text)) else 0.0

    score.__name__ = "json"
    return score


def _from_spec(spec: Mapping[str, Any]) -> Scorer:
    kind = spec.get("kind")
    if kind not in SCORER_KINDS:
        raise ValueError(f"Unknown scorer kind {kind!r}; valid kinds are {list(SCORER_KINDS)}.")
    allowed = {"sentiment": set(), "json": set(), "regex": {"pattern"},
               "keywords": {"positive", "negative"}}[kind]
    extra = sorted(set(spec) - allowed - {"kind"})
    if extra:
        raise ValueError(
            f"Scorer kind {kind!r} takes keys {sorted(allowed)}, but the spec also has {extra}."
        )
    if kind == "sentiment":
        return sentiment_scorer()
    if kind == "json":
        return json_scorer()
    if kind == "regex":
        if "pattern" not in spec:
            raise ValueError("A regex scorer spec needs a 'pattern'.")
        return regex_scorer(spec["pattern"])
    return keyword_scorer(spec.get("positive", ()), spec.get("negative", ()))


def get_scorer(spec: Mapping[str, Any] | str | Scorer) -> Scorer:
    """A scorer from a spec dict ({"kind": ...}), a kind or shipped-behaviour name, or a callable.

    Args:
        spec: a dict like `{"kind": "keywords", "positive": [...]}` (as in the shipped behaviours'
            meta.json), "sentiment" / "json", a shipped behaviour's name, or a callable, passed
            through.

    Returns:
        A `Scorer`: text -> float.

    Raises:
        ValueError: for an unknown kind or name, extra or missing spec keys (the message lists the
            valid ones).
    """
    if isinstance(spec, Mapping):
        return _from_spec(spec)
    if isinstance(spec, str):
        if spec in ("sentiment", "json"):
            return _from_spec({"kind": spec})
        from ..pairs import list_behaviours, load_behaviour

        if spec in list_behaviours():
            return _from_spec(load_behaviour(spec).scorer)
        raise ValueError(
            f"Unknown scorer name {spec!r}. Valid names are the parameter-free kinds "
            f"['sentiment', 'json'] and the shipped behaviours {list_behaviours()}; for keywords "
            f"or regex pass a spec dict such as {{'kind': 'regex', 'pattern': ...}}."
        )
    if callable(spec):
        return spec
    raise ValueError(
        f"A scorer spec must be a dict with 'kind' (one of {list(SCORER_KINDS)}), a name or a "
        f"callable; got {type(spec).__name__}."
    )


@dataclass(frozen=True)
class ScoreError:
    """A text the scorer failed on: its index and the error message."""

    index: int
    error: str


def safe_score(scorer: Scorer, texts: Sequence[str]) -> tuple[np.ndarray, list[ScoreError]]:
    """Score every text; an exception or non-finite score on one item gives NaN and an error.

    Args:
        scorer: the scorer.
        texts: the texts.

    Returns:
        (scores with NaN where scoring failed, one `ScoreError` per failure).
    """
    scores = np.full(len(texts), np.nan)
    errors: list[ScoreError] = []
    for i, text in enumerate(texts):
        try:
            value = float(scorer(text))
        except Exception as err:  # noqa: BLE001 - any scorer failure is recorded, not raised
            errors.append(ScoreError(i, f"{type(err).__name__}: {err}"))
            continue
        if not math.isfinite(value):
            errors.append(ScoreError(i, f"non-finite score {value!r}"))
            continue
        scores[i] = value
    return scores, errors


# ------------------------------------------------------------------------- A/B multiple choice


@dataclass(frozen=True)
class ABResult:
    """Per question: log P(matching answer) - log P(best other answer), and whether it wins."""

    questions: tuple[str, ...]
    matching: tuple[str, ...]
    logprob_matching: tuple[float, ...]
    logprob_other: tuple[float, ...]
    margin: tuple[float, ...]
    prefers_matching: tuple[bool, ...]
    p_matching: tuple[float, ...]
    answers: tuple[str, ...]
    steered: bool

    @property
    def n(self) -> int:
        """Number of questions."""
        return len(self.margin)

    @property
    def rate(self) -> float:
        """Fraction of questions where the matching answer is the most likely one."""
        return float(np.mean(self.prefers_matching))

    @property
    def mean_p_matching(self) -> float:
        """Mean probability of the matching answer, normalised over the answer options (CAA)."""
        return float(np.mean(self.p_matching))


def ab_logprob(
    model: Model,
    questions: Sequence[str],
    steering=None,
    strength: float | None = None,
    *,
    matching: Sequence[str],
    answers: Sequence[str] = ("A", "B"),
    template: str = "({}",
    positions: PositionMode = "all",
    chat: bool | None = None,
    batch_size: int = 16,
) -> ABResult:
    """Score multiple-choice questions by answer log-probability.

    Each answer label is formatted with `template` ("(A" by default, as in CAA, where the letter
    is the last token) and scored as a continuation of the question (chat-templated on instruct
    models). `matching[i]` is the label showing the behaviour. `margin` is log P(matching) minus
    the log P of the most likely other answer, so `margin > 0` means the behaviour is preferred.

    Args:
        model: the model.
        questions: the questions, each listing its options.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts, or None for the unsteered model.
        strength: strength for a vector given without one.
        matching: per question, the answer label that shows the behaviour.
        answers: the answer labels.
        template: how a label is written as a continuation ("{}" is replaced by the label).
        positions: where the vectors are written.
        chat: chat-template the questions; None = auto.
        batch_size: most continuations per forward.

    Returns:
        An `ABResult` with log-probabilities, margins and normalised P(matching).

    Raises:
        ValueError: for fewer than two distinct answers, a matching label that is not an answer,
            a count mismatch, or a template without "{}".
    """
    questions = check_texts(questions, "questions")
    answers = check_texts(answers, "answers")
    check_batch_size(batch_size)
    if len(set(answers)) < 2:
        raise ValueError(f"Need at least two distinct answers, got {list(answers)}.")
    matching = list(matching)
    if len(matching) != len(questions):
        raise ValueError(f"Got {len(questions)} questions but {len(matching)} matching labels.")
    bad = [m for m in matching if m not in answers]
    if bad:
        raise ValueError(f"Matching label {bad[0]!r} is not one of the answers {list(answers)}.")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' for the answer label, got {template!r}.")
    conts = [template.format(a) for a in answers]
    n_a = len(answers)
    lps = continuation_logprobs(
        model,
        [q for q in questions for _ in range(n_a)],
        conts * len(questions),
        chat=chat,
        steering=steering,
        strength=strength,
        positions=positions,
        batch_size=batch_size,
    )
    table = np.array([float(lp.sum()) for lp in lps]).reshape(len(questions), n_a)
    match_idx = np.array([answers.index(m) for m in matching])
    rows = np.arange(len(questions))
    lp_match = table[rows, match_idx]
    others = table.copy()
    others[rows, match_idx] = -np.inf
    lp_other = others.max(1)
    norm = table - table.max(1, keepdims=True)
    p_match = np.exp(norm[rows, match_idx]) / np.exp(norm).sum(1)
    return ABResult(
        questions=tuple(questions),
        matching=tuple(matching),
        logprob_matching=tuple(lp_match.tolist()),
        logprob_other=tuple(lp_other.tolist()),
        margin=tuple((lp_match - lp_other).tolist()),
        prefers_matching=tuple(bool(x) for x in lp_match > lp_other),
        p_matching=tuple(p_match.tolist()),
        answers=tuple(answers),
        steered=steering is not None,
    )


def ab_logprob_pairs(
    model: Model,
    pairs,
    steering=None,
    strength: float | None = None,
    *,
    positions: PositionMode = "all",
    chat: bool | None = None,
    batch_size: int = 16,
) -> ABResult:
    """`ab_logprob` for a ContrastSet of A/B items (e.g. from `ContrastSet.from_caa_json`): each
    pair's positive completion is the matching answer, its negative the other one.

    Args:
        model: the model.
        pairs (ContrastSet | Sequence[ContrastPair]): A/B items, each with its question as prompt.
        steering (SteeringVector | SteeringVectorSet | Injection | list | None): anything `steer()`
            accepts, or None for the unsteered model.
        strength: strength for a vector given without one.
        positions: where the vectors are written.
        chat: chat-template the questions; None = auto.
        batch_size: most continuations per forward.

    Returns:
        An `ABResult` (P(matching) is the two-way softmax of the margin).

    Raises:
        ValueError: if a pair has no prompt.
    """
    from ..pairs import as_contrast_set

    pairs = as_contrast_set(pairs)
    if any(p.prompt is None for p in pairs):
        raise ValueError("Every A/B pair needs a prompt (the question).")
    questions = [p.prompt for p in pairs]
    lps = continuation_logprobs(
        model,
        [q for q in questions for _ in range(2)],
        [c for p in pairs for c in (p.positive, p.negative)],
        chat=chat,
        steering=steering,
        strength=strength,
        positions=positions,
        batch_size=batch_size,
    )
    table = np.array([float(lp.sum()) for lp in lps]).reshape(len(pairs), 2)
    lp_match, lp_other = table[:, 0], table[:, 1]
    margin = lp_match - lp_other
    return ABResult(
        questions=tuple(questions),
        matching=tuple(p.positive for p in pairs),
        logprob_matching=tuple(lp_match.tolist()),
        logprob_other=tuple(lp_other.tolist()),
        margin=tuple(margin.tolist()),
        prefers_matching=tuple(bool(x) for x in margin > 0),
        p_matching=tuple((1.0 / (1.0 + np.exp(-margin))).tolist()),
        answers=("positive", "negative"),
        steered=steering is not None,
    )
