r"""The text rules for GSM8K and MATH rows, used by the JSONL loaders of `minichord.data` (which
lists every format and checks the keys and types).

    GSM8K  {"question": "...", "answer": "... = <<48/2=24>>24 clips ...\n#### 72"}
    MATH   {"problem": "...", "solution": "... \boxed{72} ..."}  (+ optional "answer", "level", "type", ...)

The reference answer of a GSM8K row is the text after its last `####` line, as written ("72",
"1,234": `minichord.math_reward` normalises both sides); of a MATH row, the "answer" field if given,
else the content of the solution's last `\boxed{}`. As an expert demonstration the response is
the GSM8K answer text without its calculator annotations (`<<48/2=24>>`: the model has no
calculator) and with its `#### 72` line kept, or the MATH solution as written: either way it ends
in an answer that `math_reward.strict_reward` reads.
"""

from __future__ import annotations

import re

from minichord.math_reward import last_boxed

_FINAL = re.compile(r"^[ \t]*####[ \t]*(.*?)\s*$", re.MULTILINE)
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")


def gsm8k_answer(answer: str) -> str:
    """The final answer of a GSM8K "answer" text: what follows its last `####` line."""
    finals = [text for text in _FINAL.findall(answer) if text]
    if not finals:
        raise ValueError("'answer' has no final '#### N' line (GSM8K format)")
    return finals[-1]


def gsm8k_response(answer: str) -> str:
    """A GSM8K "answer" text as a demonstration: without the `<<48/2=24>>` calculator annotations."""
    return _CALCULATOR.sub("", answer)


def math_answer(solution: str, answer: str | None) -> str:
    """The reference answer of a MATH row: its "answer" field, else the solution's last \\boxed{}."""
    answer = answer or last_boxed(solution)
    if answer is None:
        raise ValueError("'solution' has no \\boxed{...} answer and the row has no 'answer' key (MATH format)")
    return answer


def math_skill(record: dict) -> str:
    """The skill of a MATH row: its "type" (or "subject"); the metadata must be strings or integers."""
    for key in ("level", "type", "subject", "unique_id"):
        if key in record and (isinstance(record[key], bool) or not isinstance(record[key], (str, int))):
            raise ValueError(f"{key!r} must be a string or an integer, got {type(record[key]).__name__}")
    return next((record[k].strip() for k in ("type", "subject") if isinstance(record.get(k), str) and record[k].strip()),
                "math")
