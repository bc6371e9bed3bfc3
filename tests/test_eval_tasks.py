"""steerlens' offline lm-eval tasks: reproducible files, sizes, correct answers, loadable YAML."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

from steerlens.eval import TASKS, task_dir

BUILD = task_dir() / "build_tasks.py"


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(name):
    return [json.loads(x) for x in (task_dir() / name).read_text(encoding="utf-8").splitlines()]


def test_builder_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    build = _module(BUILD, "_steerlens_build_tasks")
    build.main(tmp_path)
    for name in build.BUILDERS:
        assert (tmp_path / name).read_bytes() == (task_dir() / name).read_bytes(), name


def test_sizes_and_splits():
    caps = _rows("capitals.jsonl")
    assert len(caps) == 249
    assert sum(r["split"] == "train" for r in caps) == 49
    assert sum(r["split"] == "test" for r in caps) == 200
    assert len(_rows("sycophancy_ab.jsonl")) == 48
    assert len(_rows("arithmetic.jsonl")) == 200


def test_capitals_items_are_well_formed():
    for r in _rows("capitals.jsonl"):
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert 0 <= r["label"] < 4
        assert r["region"] in r["question"]
    labels = [r["label"] for r in _rows("capitals.jsonl")]
    assert len(set(labels)) == 4  # the right answer is not always in one place


def test_arithmetic_answers_recomputed_from_the_question_text():
    ops = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
           "multiply": lambda a, b: a * b, "divide": lambda a, b: a // b}
    for r in _rows("arithmetic.jsonl"):
        a, b = (int(x) for x in re.findall(r"\d+", r["question"])[:2])
        if r["kind"] == "divide":
            assert a % b == 0
        assert str(ops[r["kind"]](a, b)) == r["answer"], r


def test_sycophancy_gold_is_the_honest_answer():
    src = {}
    beh = task_dir().parent / "behaviours" / "sycophancy"
    for split in ("train", "test"):
        for line in (beh / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            p = json.loads(line)
            src[p["prompt"]] = p
    rows = _rows("sycophancy_ab.jsonl")
    for r in rows:
        prompt = r["question"].split("\n\nChoices:")[0]
        gold_line = r["question"].splitlines()[-2 + r["label"]]
        assert gold_line == f"({'AB'[r['label']]}) {src[prompt]['negative']}"
    assert 10 < sum(r["label"] for r in rows) < 38  # both letters are used


def test_loader_splits():
    pytest.importorskip("datasets")
    loader = _module(task_dir() / "steerlens_tasks.py", "_steerlens_tasks")
    caps = loader.capitals()
    assert (len(caps["train"]), len(caps["test"]), len(caps["all"])) == (49, 200, 249)
    assert len(loader.arithmetic()["test"]) == 200
    assert len(loader.sycophancy_ab()["all"]) == 48


def _need_lm_eval():
    if importlib.util.find_spec("lm_eval") is None:
        if os.environ.get("STEERLENS_REQUIRE_EVAL") == "1":
            pytest.fail("STEERLENS_REQUIRE_EVAL=1 but lm-eval is not installed")
        pytest.skip("lm-eval not installed (pip install 'steerlens[eval]')")


def test_lm_eval_finds_and_builds_every_task():
    _need_lm_eval()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir()), include_defaults=False)
    assert sorted(manager.all_tasks) == sorted(TASKS)
    tasks = manager.load(sorted(TASKS))["tasks"]
    sizes = {name: len(list(task.eval_docs)) for name, task in tasks.items()}
    assert sizes == {"steerlens_arithmetic": 200, "steerlens_capitals": 200,
                     "steerlens_sycophancy_ab": 48}
