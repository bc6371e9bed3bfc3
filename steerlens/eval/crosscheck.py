"""Per-item comparison of two lm-eval runs, and the reference decisions they are checked against.

The harness keeps every item's responses when run with `log_samples=True`. For a multiple-choice
task an item's decision is the index of the choice with the highest log-likelihood (lm-eval's
`acc`); for a generate task it is the filtered answer string (what exact match compares). Two runs
agree on an item when the decisions are equal. `compare_runs` reports the agreement over every
item both runs saw and, for multiple choice, the largest log-likelihood difference and the
smallest margin between the top two choices (how close an item came to flipping), so a
disagreement can be told apart from a tie broken by float error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RunComparison:
    """How two runs of one task agree, item by item.

    Attributes:
        task: the task name.
        n: items both runs answered.
        n_same: items with the same decision.
        differing: doc ids whose decisions differ.
        max_abs_loglik_diff: largest |log-likelihood difference| over all choices (multiple
            choice; None for generate tasks).
        min_top2_margin: smallest gap between the two best choices in run A (multiple choice).
        accuracy: (accuracy of run A, accuracy of run B) by lm-eval's own per-item metric.
    """

    task: str
    n: int
    n_same: int
    differing: tuple[int, ...]
    max_abs_loglik_diff: float | None
    min_top2_margin: float | None
    accuracy: tuple[float, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Whether every item's decision is the same."""
        return self.n_same == self.n

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form.

        Returns:
            The fields as a dict (plus `identical`).
        """
        return {"task": self.task, "n": self.n, "n_same": self.n_same, "identical": self.identical,
                "differing": list(self.differing), "max_abs_loglik_diff": self.max_abs_loglik_diff,
                "min_top2_margin": self.min_top2_margin, "accuracy": list(self.accuracy),
                **self.extra}


def _lls(sample: dict) -> list[float]:
    return [float(r[0]) for r in sample["filtered_resps"]]


def is_multiple_choice(sample: dict) -> bool:
    """Whether a logged sample is a multiple-choice item (responses are (loglik, greedy) pairs).

    Args:
        sample: one entry of lm-eval's `samples[task]`.

    Returns:
        True for multiple choice.
    """
    resps = sample["filtered_resps"]
    return bool(resps) and isinstance(resps[0], (tuple, list)) and len(resps[0]) == 2 \
        and isinstance(resps[0][1], (bool, np.bool_))


def decision(sample: dict) -> Any:
    """An item's decision: the chosen index (multiple choice) or the filtered answer (generate).

    Args:
        sample: one entry of lm-eval's `samples[task]`.

    Returns:
        An int or a string.
    """
    if is_multiple_choice(sample):
        return int(np.argmax(_lls(sample)))
    resp = sample["filtered_resps"]
    return resp[0] if isinstance(resp, (list, tuple)) else resp


def correct(sample: dict) -> bool:
    """Whether lm-eval scored the item right (its `acc` or `exact_match` field).

    Args:
        sample: one entry of lm-eval's `samples[task]`.

    Returns:
        The item's correctness.

    Raises:
        ValueError: if the sample has neither metric.
    """
    for key in ("acc", "exact_match"):
        if key in sample:
            return bool(sample[key])
    raise ValueError(f"Sample has no acc or exact_match field; keys are {sorted(sample)}.")


def by_doc(samples: Sequence[dict]) -> dict[int, dict]:
    """Logged samples keyed by doc id.

    Args:
        samples: lm-eval's `samples[task]`.

    Returns:
        doc_id -> sample.
    """
    return {int(s["doc_id"]): s for s in samples}


def compare_runs(task: str, a: Sequence[dict], b: Sequence[dict]) -> RunComparison:
    """Compare two runs' per-item decisions on the items both answered.

    Args:
        task: the task name (for the report).
        a: run A's logged samples.
        b: run B's logged samples.

    Returns:
        A `RunComparison`.

    Raises:
        ValueError: if the runs share no items.
    """
    sa, sb = by_doc(a), by_doc(b)
    ids = sorted(set(sa) & set(sb))
    if not ids:
        raise ValueError(f"The two runs of {task} share no doc ids.")
    differing = tuple(i for i in ids if decision(sa[i]) != decision(sb[i]))
    mc = is_multiple_choice(sa[ids[0]])
    max_diff = margin = None
    if mc:
        max_diff = max(float(np.max(np.abs(np.array(_lls(sa[i])) - np.array(_lls(sb[i])))))
                       for i in ids)
        margin = min(float(np.diff(np.sort(_lls(sa[i]))[-2:])[0]) for i in ids)
    acc = (float(np.mean([correct(sa[i]) for i in ids])),
           float(np.mean([correct(sb[i]) for i in ids])))
    return RunComparison(task, len(ids), len(ids) - len(differing), differing, max_diff, margin, acc)


def compare_to_reference(task: str, samples: Sequence[dict], reference: Sequence[int]
                         ) -> RunComparison:
    """Compare a multiple-choice run's decisions with reference choice indices (doc order).

    Args:
        task: the task name.
        samples: the run's logged samples.
        reference: per doc id 0..n-1, the index the reference computation chose.

    Returns:
        A `RunComparison` (run B is the reference; its accuracy uses the samples' gold labels).

    Raises:
        ValueError: if the run has doc ids beyond the reference.
    """
    s = by_doc(samples)
    if max(s) >= len(reference):
        raise ValueError(f"The run has doc id {max(s)} but the reference has {len(reference)} items.")
    ids = sorted(s)
    differing = tuple(i for i in ids if decision(s[i]) != int(reference[i]))
    gold = {i: int(s[i]["target"]) for i in ids}
    acc = (float(np.mean([decision(s[i]) == gold[i] for i in ids])),
           float(np.mean([int(reference[i]) == gold[i] for i in ids])))
    margin = min(float(np.diff(np.sort(_lls(s[i]))[-2:])[0]) for i in ids)
    return RunComparison(task, len(ids), len(ids) - len(differing), differing, None, margin, acc)
