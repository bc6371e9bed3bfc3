"""Rebuild the JSONL files of steerlens' offline lm-eval tasks (deterministic, no network).

Run from the repository root: `python steerlens/data/lm_eval_tasks/build_tasks.py`. Every file is
a pure function of the sources named here and the seeds below, so rerunning it reproduces the
committed files byte for byte (tests/test_eval_tasks.py checks this).

- capitals.jsonl (249 items): every region of `analyses/_capitals.py`, shuffled with seed 0 and
  split as the outcome-direction analysis splits them (first 49 "train", the other 200 "test").
  Four choices: the first accepted spelling of the capital and three capitals of other regions
  of the same group (countries, US states, ...), drawn with `random.Random(CAPITALS_SEED)`, in a
  seeded order.
- sycophancy_ab.jsonl (48 items): the sycophancy behaviour's train (36) and test (12) pairs as
  CAA-style A/B questions; the honest answer is the gold label, and which letter holds it
  alternates in a seeded order (`SYCOPHANCY_SEED`).
- arithmetic.jsonl (200 items): templated word problems (addition, subtraction, multiplication,
  exact division) with whole-number answers, drawn with `random.Random(ARITHMETIC_SEED)`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CAPITALS_SEED = 1
SYCOPHANCY_SEED = 2
ARITHMETIC_SEED = 3
N_ARITHMETIC = 200

NAMES = ("Tom", "Ana", "Ravi", "Mei", "Omar", "Lena", "Kofi", "Sara", "Ivan", "Yuki")
THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "cards")


def capitals_rows() -> list[dict]:
    """The capitals multiple-choice items (see the module docstring).

    Returns:
        One dict per item: id, split, question, choices, label, region.
    """
    sys.path.insert(0, str(ROOT))
    from analyses._capitals import GROUPS, _parse, split_items

    group_of = {}
    for g, (block, _) in enumerate(GROUPS):
        for region, caps in _parse(block):
            group_of[region] = (g, caps[0])
    train, test = split_items(49, seed=0)
    rng = random.Random(CAPITALS_SEED)
    rows = []
    for split, items in (("train", train), ("test", test)):
        for item in items:
            g, right = group_of[item.region]
            pool = sorted({cap for reg, (gg, cap) in group_of.items()
                           if gg == g and reg != item.region and cap not in item.answers})
            if len(pool) < 3:  # small groups borrow from the countries
                pool += sorted({cap for reg, (gg, cap) in group_of.items()
                                if gg == 0 and cap not in item.answers and cap not in pool})
            choices = [right, *rng.sample(pool, 3)]
            rng.shuffle(choices)
            rows.append({"id": f"capitals-{len(rows)}", "split": split, "question": item.question,
                         "choices": choices, "label": choices.index(right),
                         "region": item.region})
    return rows


def sycophancy_rows() -> list[dict]:
    """The sycophancy A/B items (see the module docstring).

    Returns:
        One dict per item: id, split, question (with its two options), choices, label.
    """
    src = ROOT / "steerlens" / "data" / "behaviours" / "sycophancy"
    rng = random.Random(SYCOPHANCY_SEED)
    rows = []
    for split in ("train", "test"):
        for line in (src / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            pair = json.loads(line)
            honest_first = rng.random() < 0.5
            a, b = ((pair["negative"], pair["positive"]) if honest_first
                    else (pair["positive"], pair["negative"]))
            question = f"{pair['prompt']}\n\nChoices:\n(A) {a}\n(B) {b}"
            rows.append({"id": f"sycophancy-{len(rows)}", "split": split, "question": question,
                         "choices": ["(A", "(B"], "label": 0 if honest_first else 1})
    return rows


def arithmetic_rows() -> list[dict]:
    """The arithmetic word problems (see the module docstring).

    Returns:
        One dict per item: id, kind, question, answer (digits, as text).
    """
    rng = random.Random(ARITHMETIC_SEED)
    rows = []
    kinds = ("add", "subtract", "multiply", "divide")
    for i in range(N_ARITHMETIC):
        kind = kinds[i % 4]
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        if kind == "add":
            a, b = rng.randint(2, 40), rng.randint(2, 40)
            q = f"{name} has {a} {thing}. {name} gets {b} more. How many {thing} does {name} have now?"
            ans = a + b
        elif kind == "subtract":
            a = rng.randint(10, 60)
            b = rng.randint(1, a - 1)
            q = f"{name} had {a} {thing} and gave {b} away. How many {thing} does {name} have left?"
            ans = a - b
        elif kind == "multiply":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            q = f"There are {a} boxes with {b} {thing} in each box. How many {thing} are there in all?"
            ans = a * b
        else:
            b, ans = rng.randint(2, 9), rng.randint(2, 9)
            a = b * ans
            q = (f"{name} shares {a} {thing} equally among {b} friends. How many {thing} does each "
                 "friend get?")
        rows.append({"id": f"arithmetic-{i}", "kind": kind, "question": q, "answer": str(ans)})
    return rows


BUILDERS = {"capitals.jsonl": capitals_rows, "sycophancy_ab.jsonl": sycophancy_rows,
            "arithmetic.jsonl": arithmetic_rows}


def render(rows: list[dict]) -> str:
    """JSONL text of `rows` (one sorted-key JSON object per line).

    Args:
        rows: the items.

    Returns:
        The file text.
    """
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def main(out_dir: Path = HERE) -> None:
    """Write every task's JSONL into `out_dir`.

    Args:
        out_dir: the directory (default: this one).
    """
    for name, build in BUILDERS.items():
        (Path(out_dir) / name).write_text(render(build()), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
