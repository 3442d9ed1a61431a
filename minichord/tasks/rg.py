"""reasoning-gym's procedural tasks as minichord rows, worked expert traces written from each entry's metadata, and
their reward: reasoning-gym's own `score_answer` on the answer minichord extracts (`pip install "minichord[tasks]"`).

    prompt row   {"prompt": question, "answer": answer, "skill": "rg:TASK", "metadata": entry's metadata}
    expert row   {"prompt": question, "response": worked trace ending in "answer: X", "answer": answer}
    score        = score_answer(extract(response), entry)   extract: the last `answer:` line, else (numeric answers)
                   the last number, else the last line; a scorer that raises scores 0: a completion never stops a run
Template tasks (gsm_symbolic) split by template: index % 5 == 0 is "test", the rest "train" (held-out templates)."""

import dataclasses
import difflib
import functools
import json
import re

from minichord.config import optional_import
from minichord.tasks.reward import ANSWER_LINE

PREFIX, TEMPLATE_SPLITS = "rg:", ("all", "train", "test")
_NUMBER, _STEP = re.compile(r"-?\d+(?:\.\d+)?"), re.compile(r"\s*([+\-*])\s*")


class TaskError(ValueError):
    """A task name, option or entry minichord cannot use: one line."""


def _registry() -> dict:  # reasoning-gym's {name: (dataset class, config class)}
    return optional_import("reasoning_gym.factory", "reasoning-gym", "tasks").DATASETS


def task_name(spec: str) -> str:
    """"rg:chain_sum" -> "chain_sum", or TaskError naming the close matches."""
    if not spec.startswith(PREFIX):
        raise TaskError(f"{spec!r}: a task is named rg:NAME, a reasoning-gym dataset (e.g. rg:chain_sum)")
    name, known = spec[len(PREFIX):], _registry()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise TaskError(f"unknown reasoning-gym task {name!r}{f'; did you mean {close}' if close else ''} "
                        f"({len(known)} tasks: python -c 'import reasoning_gym.factory as f; print(sorted(f.DATASETS))')")
    return name


def parse_options(items: list[str]) -> dict:
    """["min_terms=2", "operators=[\\"+\\"]"] -> {"min_terms": 2, "operators": ["+"]} (JSON values, else strings)."""
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise TaskError(f"option {item!r}: must be KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def make_entries(spec: str, size: int, seed: int, options: dict, templates: str = "all",
                 exclude: frozenset[str] = frozenset()) -> list[dict]:
    """`size` entries {"question", "answer", "metadata"} of task `spec`, JSON-safe, none whose question is in
    `exclude` (held-out prompts; reasoning-gym seeds entry i with seed + i: seeds alone overlap); TaskError if not."""
    name = task_name(spec)
    dataset_cls, config_cls = _registry()[name]
    allowed = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size"))
    if unknown := sorted(set(options) - set(allowed)):
        raise TaskError(f"rg:{name}: unknown option(s) {unknown}; allowed: {allowed}")
    if templates not in TEMPLATE_SPLITS:
        raise TaskError(f"templates={templates!r}: must be one of {TEMPLATE_SPLITS}")
    try:
        dataset = dataset_cls(config_cls(seed=seed, size=size * (5 if templates != "all" or exclude else 1), **options))
        entries = [json.loads(json.dumps(dataset[i], default=str)) for i in range(len(dataset))]
    except Exception as e:  # noqa: BLE001 - the task's own validation: assert, ValueError, TypeError, ...
        raise TaskError(f"rg:{name}: options {options} refused by reasoning-gym: {type(e).__name__}: {e}") from None
    if templates != "all":
        if not hasattr(dataset, "task_indices"):
            raise TaskError(f"rg:{name} has no templates: templates={templates!r} is for template tasks (gsm_symbolic)")
        keep = [(t % 5 == 0) == (templates == "test") for t in dataset.task_indices]
        entries = [dict(e, metadata={**e["metadata"], "template": t}) for e, t, k
                   in zip(entries, dataset.task_indices, keep) if k]
    if len(entries := [e for e in entries if e["question"] not in exclude][:size]) < size:
        raise TaskError(f"rg:{name}: only {len(entries)} of {size} entries are new (templates={templates!r}, "
                        f"{len(exclude)} excluded prompts): ask for fewer or widen the options")
    return entries


def _chain(entry: dict) -> str:
    """"4 - 1 - 7" -> one line per operation, left to right: "4 - 1 = 3", "3 - 7 = -4"."""
    expression, answer = entry["metadata"]["expression"], entry["answer"]
    terms = _STEP.split(expression.strip())  # [a, op, b, op, c, ...]
    total, lines = int(terms[0]), ["Left to right:"]
    for op, term in zip(terms[1::2], terms[2::2]):
        new = total + int(term) if op == "+" else total - int(term) if op == "-" else total * int(term)
        lines.append(f"{total} {op} {term} = {new}")
        total = new
    if str(total) != answer:
        raise TaskError(f"the worked trace of {expression!r} gives {total}, the entry says {answer!r}")
    return "\n".join(lines + [f"answer: {total}"])


def _legs(entry: dict) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS  # legs per animal, as the task counts them

    animals = entry["metadata"]["animals"]
    legs = {animal: n * ANIMALS[animal] for animal, n in animals.items()}
    if str(total := sum(legs.values())) != str(entry["answer"]):
        raise TaskError(f"the worked trace of {animals} gives {total}, the entry says {entry['answer']!r}")
    return "\n".join(["Legs per animal, then the total:", *(f"{n} {a}: {n} x {ANIMALS[a]} = {legs[a]}" for a, n in
                       animals.items()), f"total: {' + '.join(map(str, legs.values()))} = {total}", f"answer: {total}"])


def _gsm(entry: dict) -> str:
    return entry["metadata"]["answer_cot"].rsplit("####", 1)[0].rstrip() + f"\nanswer: {entry['answer']}"


TRACES = {"chain_sum": _chain, "products": _chain, "leg_counting": _legs, "gsm_symbolic": _gsm}  # entry -> response


def expert_response(spec: str, entry: dict) -> str:
    """A worked, step-by-step demonstration of one entry, written by a program from its metadata."""
    if (name := spec.removeprefix(PREFIX)) not in TRACES:
        raise TaskError(f"rg:{name} has no trace writer (tasks with one: {sorted(TRACES)}); its entries carry no "
                        "worked solution minichord can write")
    try:
        return TRACES[name](entry)
    except TaskError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise TaskError(f"rg:{name}: entry {entry.get('question', '')[:60]!r} lacks the metadata for a trace: {e}")


def extract(response: str, reference: str) -> str | None:
    """The answer to score: the last `answer:` line, else the last number (numeric references), else the last line."""
    lines = [line for line in response.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if marked := ANSWER_LINE.match(line):
            return marked.group(1).strip() or None
    if _NUMBER.fullmatch(reference.strip()):
        return (_NUMBER.findall(response) or [None])[-1]
    return lines[-1].strip() if lines else None


@functools.lru_cache(maxsize=None)
def scorer(name: str):
    dataset_cls, config_cls = _registry()[name]
    return dataset_cls(config_cls(seed=0, size=1)).score_answer


def score(response: str, problem) -> float:
    """reasoning-gym's score of a response to a row `rg:TASK` made (see the module docstring); 0.0 if it raises."""
    entry = {"question": problem.prompt, "answer": problem.answer, "metadata": problem.metadata or {}}
    try:
        return float(scorer(task_name(problem.skill))(extract(response, problem.answer), entry))
    except TaskError:
        raise
    except Exception:  # noqa: BLE001 - a scorer that raises on odd text: that completion scores 0
        return 0.0


def reward_of(reward_fn, response: str, problem) -> float:
    """A response's reward: reasoning-gym's scorer for its rows (skill "rg:TASK"), else reward_fn(response, answer)."""
    if getattr(problem, "skill", "").startswith(PREFIX):
        return score(response, problem)
    return float(reward_fn(response, problem.answer))
