"""Dataset loaders for steerlens' offline lm-eval tasks (the YAMLs' `custom_dataset`).

lm-eval imports this file by path (`!function steerlens_tasks.<name>` in a task YAML next to it)
and calls the loader with the task's metadata; each loader reads its JSONL beside this file and
returns a `datasets.DatasetDict` with "train"/"test" splits (the items' own `split` field) and
"all" (every item), so no dataset hub is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load_splits(filename: str) -> Any:
    """The items of a task JSONL as a DatasetDict: its own splits plus "all".

    Args:
        filename: the JSONL file beside this module.

    Returns:
        (datasets.DatasetDict): splits "all" and, when the items carry a `split` field, those.
    """
    import datasets

    rows = [json.loads(line) for line in (HERE / filename).read_text(encoding="utf-8").splitlines()
            if line.strip()]
    out = {"all": datasets.Dataset.from_list(rows)}
    for split in sorted({r["split"] for r in rows if "split" in r}):
        out[split] = datasets.Dataset.from_list([r for r in rows if r.get("split") == split])
    if "test" not in out:
        out["test"] = out["all"]
    return datasets.DatasetDict(out)


def capitals(**kwargs: Any) -> Any:
    """Capital-city multiple choice (capitals.jsonl).

    Args:
        **kwargs: task metadata from lm-eval (unused).

    Returns:
        (datasets.DatasetDict): the splits.
    """
    return load_splits("capitals.jsonl")


def sycophancy_ab(**kwargs: Any) -> Any:
    """Sycophancy A/B questions (sycophancy_ab.jsonl).

    Args:
        **kwargs: task metadata from lm-eval (unused).

    Returns:
        (datasets.DatasetDict): the splits.
    """
    return load_splits("sycophancy_ab.jsonl")


def arithmetic(**kwargs: Any) -> Any:
    """Arithmetic word problems (arithmetic.jsonl).

    Args:
        **kwargs: task metadata from lm-eval (unused).

    Returns:
        (datasets.DatasetDict): the splits.
    """
    return load_splits("arithmetic.jsonl")
