"""Steered evaluation with lm-evaluation-harness: a `steerlens` model class and offline tasks.

lm-evaluation-harness is how benchmark tables in steering papers are made; this package lets it
evaluate a steerlens model with a steering vector applied through `steer()`. `lm_class()` builds
and registers the harness model class "steerlens" (lm-eval is imported only then; install the
extra `steerlens[eval]`), `evaluate()` runs `lm_eval.simple_evaluate` on it with steerlens' own
offline tasks on the include path, and `steerlens-eval` (`python -m steerlens.eval`) is lm-eval's
command line with the class registered and steerlens' task directory on the include path, e.g.
`steerlens-eval --model steerlens --model_args model=smollm2-135m-instruct,vector=DIR,layer=10,
strength=4 --tasks steerlens_capitals` (plain `lm_eval` needs `--include_path` set to `task_dir()`).
The tasks (`TASKS`) are lm-eval YAML + local JSONL shipped as package data, so nothing is fetched
from a dataset hub. How requests are tokenized, batched and steered is in `steerlens.eval.harness`.
"""

from __future__ import annotations

from typing import Any

from .harness import HarnessRunner, cut_at_stops, rolling_windows
from .lm import MODEL_NAME, lm_class, load_steering
from .tasks import TASKS, check_tasks, task_dir

__all__ = ["MODEL_NAME", "TASKS", "HarnessRunner", "check_tasks", "cut_at_stops", "evaluate",
           "lm_class", "load_steering", "rolling_windows", "task_dir"]


def evaluate(tasks: str | list[str], model_args: str | dict[str, Any] | None = None, *,
             lm: Any = None, apply_chat_template: bool = False, limit: int | None = None,
             log_samples: bool = True, **kwargs: Any) -> dict:
    """`lm_eval.simple_evaluate` on the steerlens model class with steerlens' tasks included.

    Args:
        tasks: task names (steerlens' `TASKS` or any lm-eval task).
        model_args: the model arguments ("model=...,vector=DIR,layer=10,strength=4" or a dict);
            ignored when `lm` is given.
        lm: an already constructed harness model (`lm_class()(...)`), to reuse a loaded model.
        apply_chat_template: format contexts with the model's chat template.
        limit: evaluate only the first `limit` items of each task.
        log_samples: keep per-item results (`out["samples"]`).
        **kwargs: further `simple_evaluate` arguments.

    Returns:
        lm-eval's results dict.

    Raises:
        ValueError: for an unknown task name (listing steerlens' tasks) or bad model arguments.
        ImportError: if lm-eval is not installed.
    """
    cls = lm_class()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = [n.strip() for n in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    # Indexing lm-eval's ~15k built-in tasks takes tens of seconds: skip it when only
    # steerlens' own tasks are asked for.
    ours = bool(names) and all(n in TASKS for n in names)
    manager = TaskManager(include_path=str(task_dir()), include_defaults=not ours)
    names = check_tasks(names, known=() if ours else manager.all_tasks)
    if lm is None:
        args = model_args if isinstance(model_args, dict) else _parse_args(model_args or "")
        lm = cls(**args)
    return simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                           apply_chat_template=apply_chat_template, log_samples=log_samples,
                           **kwargs)


def _parse_args(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"model_args must be key=value pairs separated by commas; got "
                             f"{part!r} in {text!r}.")
        out[key.strip()] = value.strip()
    return out
