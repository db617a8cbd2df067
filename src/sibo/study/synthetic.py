"""Seeded arithmetic word problems with chain-of-thought answers, in the LLM-Adapters layout.

`sibo demo` needs math data that exists offline and that a tiny model can learn in minutes, so
the project writes its own: short AddSub/MultiArith-style problems whose worked answers read like
the LLM-Adapters ones ("\\nA: … 7 - 3 = 4 … The answer is 4."). Every record is
{instruction, input, output, answer}, so the finetune and evaluate code read it like the paper's
data. The same seed always gives the same problems.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from sibo.errors import InputError

NAMES = ("Tom", "Anna", "Sara", "Ben", "Lily", "Max", "Emma", "Jack", "Mia", "Leo", "Nina", "Sam")
ITEMS = ("apples", "pencils", "marbles", "cookies", "stickers", "books", "cards", "shells", "eggs", "balls")
CONTAINERS = ("boxes", "bags", "packs", "baskets")

# A problem is (question, chain-of-thought, answer); each maker draws its own numbers.
Problem = tuple[str, str, int]


def _add(rng: random.Random, high: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, high), rng.randint(1, high)
    question = f"{name} has {a} {item}. {name} buys {b} more {item}. How many {item} does {name} have now?"
    reasoning = f"{name} had {a} {item} and bought {b} more, so {name} has {a} + {b} = {a + b} {item}."
    return question, reasoning, a + b


def _subtract(rng: random.Random, high: int) -> Problem:
    name, friend, item = *rng.sample(NAMES, 2), rng.choice(ITEMS)
    b = rng.randint(1, high)
    a = b + rng.randint(0, high)
    question = (
        f"{name} has {a} {item}. {name} gives {b} {item} to {friend}. How many {item} does {name} have left?"
    )
    reasoning = f"{name} had {a} {item} and gave away {b}, so {name} has {a} - {b} = {a - b} {item} left."
    return question, reasoning, a - b


def _multiply(rng: random.Random, high: int) -> Problem:
    name, item, container = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CONTAINERS)
    a, b = rng.randint(2, high), rng.randint(2, high)
    question = (
        f"{name} buys {a} {container} of {item}. Each of the {container} holds {b} {item}. "
        f"How many {item} does {name} buy in total?"
    )
    reasoning = (
        f"There are {a} {container} with {b} {item} in each, so {name} buys {a} * {b} = {a * b} {item}."
    )
    return question, reasoning, a * b


def _divide(rng: random.Random, high: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    share, friends = rng.randint(1, high), rng.randint(2, high)
    total = share * friends
    question = (
        f"{name} shares {total} {item} equally among {friends} friends. How many {item} does each friend get?"
    )
    reasoning = f"{total} {item} are split among {friends} friends, so each friend gets {total} / {friends} = {share} {item}."
    return question, reasoning, share


def _add_groups(rng: random.Random, high: int) -> Problem:
    name, item, container = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CONTAINERS)
    a, groups, each = rng.randint(1, high), rng.randint(2, high), rng.randint(2, high)
    bought = groups * each
    question = (
        f"{name} has {a} {item}. {name} buys {groups} {container} with {each} {item} in each. "
        f"How many {item} does {name} have now?"
    )
    reasoning = (
        f"{name} buys {groups} * {each} = {bought} {item}. "
        f"So {name} has {a} + {bought} = {a + bought} {item}."
    )
    return question, reasoning, a + bought


def _give_then_find(rng: random.Random, high: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    b = rng.randint(1, high)
    a, c = b + rng.randint(0, high), rng.randint(1, high)
    question = (
        f"{name} has {a} {item}. {name} loses {b} {item} and then finds {c} {item}. "
        f"How many {item} does {name} have now?"
    )
    reasoning = (
        f"After losing {b}, {name} has {a} - {b} = {a - b} {item}. "
        f"After finding {c}, {name} has {a - b} + {c} = {a - b + c} {item}."
    )
    return question, reasoning, a - b + c


OPERATIONS: dict[str, Callable[[random.Random, int], Problem]] = {
    "add": _add,
    "subtract": _subtract,
    "multiply": _multiply,
    "divide": _divide,
    "add_groups": _add_groups,
    "give_then_find": _give_then_find,
}


def make_record(question: str, reasoning: str, answer: int) -> dict[str, str]:
    """One problem in the LLM-Adapters layout; the output ends the way the math scorers expect."""
    return {
        "instruction": question,
        "input": "",
        "output": f"\nA: {reasoning} The answer is {answer}.",
        "answer": str(answer),
    }


def generate_problems(
    num_problems: int,
    seed: int = 0,
    max_operand: int = 9,
    operations: tuple[str, ...] | None = None,
) -> list[dict[str, str]]:
    """`num_problems` records drawn with `random.Random(seed)`, operations in turn by draw."""
    operations = tuple(OPERATIONS) if operations is None else tuple(operations)
    unknown = [name for name in operations if name not in OPERATIONS]
    if unknown or not operations:
        raise InputError(f"unknown arithmetic operations {unknown}; known: {', '.join(OPERATIONS)}")
    if num_problems < 0 or max_operand < 2:
        raise InputError(f"need num_problems >= 0 and max_operand >= 2, got {num_problems} and {max_operand}")
    rng = random.Random(seed)
    return [make_record(*OPERATIONS[rng.choice(operations)](rng, max_operand)) for _ in range(num_problems)]


def generate_splits(
    num_train: int,
    num_test: int,
    seed: int = 0,
    max_operand: int = 9,
    operations: tuple[str, ...] | None = None,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and test sets with no test question also in train, so accuracy measures generalisation."""
    train = generate_problems(num_train, seed, max_operand, operations)
    seen = {record["instruction"] for record in train}
    test: list[dict[str, str]] = []
    draw_seed = seed + 1_000_003
    while len(test) < num_test:
        for record in generate_problems(num_test, draw_seed, max_operand, operations):
            if record["instruction"] not in seen and len(test) < num_test:
                seen.add(record["instruction"])
                test.append(record)
        draw_seed += 1
        if draw_seed > seed + 1_000_003 + 50:
            raise InputError(f"cannot draw {num_test} unseen test problems with max_operand={max_operand}")
    return train, test


def write_records(records: list[dict[str, str]], path: str | Path) -> Path:
    """Write records as the JSON list the LLM-Adapters files use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path
