"""steerlens' offline lm-eval tasks: where they live and what they are called.

The tasks ship as package data in `steerlens/data/lm_eval_tasks/` (lm-eval task YAMLs, JSONL
items, the loader they import and the script that builds the JSONL). Pass `task_dir()` to lm-eval
as `--include_path` (or `TaskManager(include_path=...)`); `check_tasks` turns an unknown name into
an error that lists the valid ones before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TASKS: dict[str, str] = {
    "steerlens_capitals": "capital cities, 4-way multiple choice (249 items; test split 200)",
    "steerlens_sycophancy_ab": "sycophancy A/B, gold = the honest answer (48 items)",
    "steerlens_arithmetic": "arithmetic word problems, generate + exact match (200 items)",
}
"""steerlens' task names and what each is."""


def task_dir() -> Path:
    """The directory holding steerlens' lm-eval task YAMLs (for `--include_path`).

    Returns:
        The path inside the installed package.
    """
    return Path(__file__).resolve().parent.parent / "data" / "lm_eval_tasks"


def check_tasks(names: str | Sequence[str], known: Sequence[str] = ()) -> list[str]:
    """Refuse task names that are neither steerlens' nor in `known`.

    Args:
        names: task names (a comma-separated string or a list).
        known: further valid names (e.g. lm-eval's own task list).

    Returns:
        The names as a list.

    Raises:
        ValueError: naming the unknown tasks and listing steerlens' tasks.
    """
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if not items or any(not n for n in items):
        raise ValueError(f"Give at least one task name; steerlens' tasks are {sorted(TASKS)}.")
    bad = [n for n in items if n not in TASKS and n not in set(known)]
    if bad:
        raise ValueError(f"Unknown task(s) {bad}. steerlens' offline tasks are {sorted(TASKS)} "
                         "(lm-eval's own tasks are valid too when lm-eval can list them).")
    return items
