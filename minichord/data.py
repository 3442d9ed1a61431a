r"""What a run learns from (`build_train_data`): JSONL RL prompts and expert demonstrations (else the toy's), a reward.

One JSON object per line (blank lines are skipped); its keys say its format, rows may mix formats:

    prompts.jsonl  {"prompt": "add 47 85", "answer": "132"}                           (+ optional "skill")
                   {"messages": [{"role": "user", "content": "add 47 85"}], "answer": "132"}  (+ "skill";
                     an assistant message may follow the user's, and is ignored)
    expert.jsonl   {"prompt": "add 47 85", "response": "7+5=12 ...\nanswer: 132"}     (+ optional "answer")
                   {"messages": [{"role": "user", "content": "add 47 85"},
                                 {"role": "assistant", "content": "7+5=12 ..."}]}      (+ optional "answer")
    either file    GSM8K {"question": "...", "answer": "...<<48/2=24>>24...\n#### 72"}   answer "72"
                   MATH  {"problem": "...", "solution": "... \boxed{72} ..."}          answer "72"
                         (+ optional "answer", which then wins, and "level", "type", "subject", "unique_id")

A GSM8K / MATH row is a Problem (skill "gsm8k" / its "type") or a Demonstration (the solution). A file is validated
completely before anything is returned (no run trains on half a file): each bad line is `file:line: what is wrong`."""

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from minichord.config import ConfigError, TrainConfig
from minichord.tasks import Demonstration, Problem, make_splits, reward
from minichord.tasks.rg import PREFIX, task_name
from minichord.tasks.math import (gsm8k_answer, gsm8k_response, lenient_reward, math_answer, math_skill,
                                  math_verify_parse, math_verify_reward, strict_reward)
from minichord.tokenizer import TokenizerError, TokenizerLike


class DataError(ValueError):
    """A dataset file that cannot be used: one line `head: where:N: msg; ...` of the first five (N, msg) `errors`."""

    def __init__(self, head: str, errors: list[tuple[Any, str]] = (), where: str = ""):
        more = f"; ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        listed = "; ".join(f"{where}{n}: {msg}" for n, msg in errors[:5])
        super().__init__(f"{head}: {listed}{more}" if errors else head)
        self.errors = list(errors)


def _string(record: dict, key: str, *, required: bool = True, at: str = "") -> str | None:
    if key not in record:
        if required:
            raise ValueError(f"{at}missing key {key!r}")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{at}{key!r} must be a string, got {type(value).__name__} {value!r:.40}")
    if not value.strip():
        raise ValueError(f"{at}{key!r} is empty")
    value.encode("utf-8")  # a lone surrogate ("\\ud800") raises UnicodeEncodeError, a ValueError: file:line
    return value


def _check_keys(record: dict, allowed: set[str], form: str = "") -> None:
    if unknown := sorted(set(record) - allowed):
        raise ValueError(f"unknown key(s) {unknown}; allowed{f' in a {form} row' if form else ''}: {sorted(allowed)}")


_FORMS = {"prompt": "plain", "messages": "chat", "question": "GSM8K", "problem": "MATH"}  # the key that names a format
_MATH_KEYS = {"problem", "solution", "answer", "level", "type", "subject", "unique_id"}


def _form(record: dict) -> str:
    named = [key for key in _FORMS if key in record]
    if len(named) > 1:
        raise ValueError(f"keys of two formats: {' and '.join(f'{k!r} ({_FORMS[k]})' for k in named)} "
                         f"(a row has one of {', '.join(map(repr, _FORMS))})")
    return _FORMS[named[0]] if named else "plain"


def _parse_math(record: dict, form: str) -> tuple[str, str, str, str]:
    """(prompt, answer, skill, response) of a GSM8K or MATH row."""
    if form == "GSM8K":
        _check_keys(record, {"question", "answer"}, form)
        question, answer = _string(record, "question"), _string(record, "answer")
        return question, gsm8k_answer(answer), "gsm8k", gsm8k_response(answer)
    _check_keys(record, _MATH_KEYS, form)
    problem, solution = _string(record, "problem"), _string(record, "solution")
    return problem, math_answer(solution, _string(record, "answer", required=False)), math_skill(record), solution


def _parse_prompt(record: dict, where: str) -> Problem:
    form = _form(record)
    if form in ("GSM8K", "MATH"):
        return Problem(*_parse_math(record, form)[:3], where)
    if form == "chat":
        _check_keys(record, {"messages", "answer", "skill"}, form)
        prompt, _ = _parse_messages(record["messages"], prompt_only=True)
    else:
        _check_keys(record, {"prompt", "answer", "skill", "metadata"})
        if "prompt" not in record:
            raise ValueError("missing key 'prompt' (or a 'messages' list, GSM8K 'question', MATH 'problem')")
        prompt = _string(record, "prompt")
    if not isinstance(metadata := record.get("metadata", {}), dict):
        raise ValueError(f"'metadata' must be an object, got {type(metadata).__name__}")
    skill = _string(record, "skill", required=False) or "task"
    if skill.startswith(PREFIX):
        task_name(skill)  # an unknown task (or reasoning-gym missing) is this line's error, before any training
    return Problem(prompt, _string(record, "answer"), skill, where, metadata or None)


def _parse_messages(messages: Any, prompt_only: bool = False) -> tuple[str, str | None]:
    if not isinstance(messages, list) or len(messages) not in ((1, 2) if prompt_only else (2,)):
        raise ValueError("'messages' must be a list of a user message, then optionally the assistant's" if prompt_only
                         else "'messages' must be a list of exactly two messages: user then assistant")
    contents = []
    for i, (message, role) in enumerate(zip(messages, ("user", "assistant"))):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object, got {type(message).__name__}")
        _check_keys(message, {"role", "content"})
        if message.get("role") != role:
            raise ValueError(f"messages[{i}] must have role {role!r}, got {message.get('role')!r}")
        contents.append(_string(message, "content", at=f"messages[{i}]: "))
    return contents[0], (contents[1] if len(contents) > 1 else None)


def _parse_expert(record: dict, where: str) -> Demonstration:
    form = _form(record)
    if form in ("GSM8K", "MATH"):
        prompt, answer, _, response = _parse_math(record, form)
        return Demonstration(prompt, response, answer, where)
    answer = _string(record, "answer", required=False)
    if form == "chat":
        _check_keys(record, {"messages", "answer"}, form)
        prompt, response = _parse_messages(record["messages"])
    else:
        _check_keys(record, {"prompt", "response", "answer"})
        if "response" not in record and "prompt" not in record:
            raise ValueError("needs 'prompt' and 'response' keys, a 'messages' list, GSM8K 'question' and 'answer' "
                             "or MATH 'problem' and 'solution'")
        prompt, response = _string(record, "prompt"), _string(record, "response")
    return Demonstration(prompt, response, answer, where)


def load_jsonl(path: str | Path, parse: Callable[[dict, str], Any], what: str) -> list:
    path = Path(path)
    try:
        raw_lines = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")  # a UTF-8 BOM is allowed
    except OSError as e:
        why = "file not found" if isinstance(e, FileNotFoundError) else f"cannot read: {e}"
        raise DataError(f"{path}: {why}") from None
    items, errors = [], []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            items.append(parse(record, f"{path}:{number}"))
        except UnicodeDecodeError as e:
            errors.append((number, f"not valid UTF-8 ({e.reason} at byte {e.start})"))
        except json.JSONDecodeError as e:
            errors.append((number, f"invalid JSON: {e.msg} (column {e.colno})"))
        except RecursionError:
            errors.append((number, "invalid JSON: nested too deeply"))
        except ValueError as e:  # from parse: a missing key, a wrong type, ...
            errors.append((number, str(e)))
    if errors:
        raise DataError(f"{path}: {len(errors)} invalid line(s) in {what} file; nothing was loaded", errors, f"{path}:")
    if not items:
        raise DataError(f"{path}: no {what} records (the file is empty)")
    return items


def load_prompts(path: str | Path) -> list[Problem]:
    return load_jsonl(path, _parse_prompt, "prompt")


def load_experts(path: str | Path) -> list[Demonstration]:
    return load_jsonl(path, _parse_expert, "expert")


def check_lengths(items: list, tokenizer: TokenizerLike, max_seq_len: int, max_new_tokens: int = 0) -> None:
    """DataError (file:line): prompts without room for max_new_tokens, demos over max_seq_len, unspellable text."""
    errors = []
    for i, item in enumerate(items):
        try:
            n = len(tokenizer.encode_prompt(item.prompt))
            whole = isinstance(item, Demonstration) and len(tokenizer.encode_example(item.prompt, item.response)[0])
            problem = (f"prompt of {n} tokens + max_new_tokens={max_new_tokens} > max_seq_len={max_seq_len}"
                       if n + max_new_tokens > max_seq_len else f"prompt + response is {whole} tokens > the model's "
                       f"max_seq_len={max_seq_len}" if whole > max_seq_len else "")
        except TokenizerError as e:
            problem = str(e)
        errors += [(item.where or f"{type(item).__name__} {i}", problem)] if problem else []
    if errors:
        raise DataError(f"{len(errors)} record(s) do not fit the model", errors)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write rows (dicts, `Problem`s, `Demonstration`s), one JSON object a line, atomically (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                if dataclasses.is_dataclass(row) and not isinstance(row, type):
                    row = {k: v for k, v in dataclasses.asdict(row).items() if v is not None and k != "where"}
                if not isinstance(row, dict):
                    raise TypeError(f"write_jsonl rows must be dicts or dataclasses, got {type(row).__name__}")
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclasses.dataclass
class TrainData:
    prompts: list[Problem]  # RL prompts with reference answers
    experts: list[Demonstration]  # the (limited) expert set
    eval_splits: dict[str, list[Problem]]  # held-out test splits
    reward: Callable[[str, str], float] = reward  # (response, answer) -> reward, no eval/exec
    lenient: Callable[[str, str], float] | None = None  # reported beside accuracy (math: the last number)

    def check_fits(self, tokenizer: TokenizerLike, max_seq_len: int, stages) -> None:
        """DataError (file:line) unless RL prompts (and LUFFY's expert ones) leave room for max_new_tokens."""
        new = max(s.cfg.sampler.max_new_tokens for s in stages)
        check_lengths(self.prompts, tokenizer, max_seq_len, new)
        check_lengths(self.experts, tokenizer, max_seq_len, new * any(s.cfg.loss.expert_in_group for s in stages))
        check_lengths([p for split in self.eval_splits.values() for p in split], tokenizer, max_seq_len, 1)


def build_train_data(cfg: TrainConfig, hf_model: bool = False) -> TrainData:
    """The user's JSONL files, the toy task's splits (seeded by cfg.seed) where none is given (never for `hf_model`)."""
    if hf_model and not (cfg.prompts_file and cfg.experts_file):
        raise ConfigError("a Hugging Face model needs your data: give prompts_file and experts_file "
                          "(--prompts FILE --experts FILE); the toy task is for the toy model")
    toy = make_splits(cfg.seed, n_rl=cfg.n_rl_prompts, n_expert=cfg.n_expert, n_test=cfg.n_test)
    prompts = load_prompts(cfg.prompts_file) if cfg.prompts_file else toy.rl
    experts = load_experts(cfg.experts_file) if cfg.experts_file else toy.expert
    evals = ({Path(f).stem: load_prompts(f) for f in cfg.eval_file.split(",")} if cfg.eval_file  # split = file stem
             else {} if hf_model else toy.tests)
    return TrainData(prompts, experts, evals, *rewards(cfg.reward, hf_model, prompts + sum(evals.values(), [])))


def rewards(name: str, chat_model: bool, problems: Iterable[Problem] = ()) -> tuple[Callable, Callable | None]:
    """(reward, lenient or None) of `reward = exact | math | math-verify | auto`; auto = math for a chat (Hugging
    Face) model. math-verify: DataError (file:line) per answer of `problems` it cannot parse, rg: rows aside."""
    if name == "math-verify":
        if bad := [(p.where, f"answer {p.answer!r:.60}: no number or expression math-verify can read")
                   for p in problems if not p.skill.startswith(PREFIX) and not math_verify_parse(p.answer)]:
            raise DataError(f"reward = math-verify: {len(bad)} reference answer(s) it cannot parse (none scores)", bad)
        return math_verify_reward, None
    if name == "math" or (name == "auto" and chat_model):
        return strict_reward, lenient_reward
    return reward, None
