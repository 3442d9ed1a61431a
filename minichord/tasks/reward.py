"""The verifiable reward: read the final answer of a response, compare it with the reference.

Two answer styles, read by plain string parsing (never eval/exec: "1+1" is not the answer "2"):

    terse   "132"                          the whole response is the answer (one line)
    expert  "7+5=12 carry 1\\n...\\nanswer: 132"   the last line starting with `answer:` (or GSM8K's `####`)

    reward(response, answer) = 1.0 if normalise(extract_answer(response)) == normalise(answer) else 0.0"""

import re

ANSWER_LINE = re.compile(r"^\s*(?:answer\s*:|####)(.*)$", re.IGNORECASE)
_GROUPED_NUMBER = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def normalise(text: str) -> str:
    """Whitespace stripped, inner runs one space, "1,234" -> "1234"; nothing else ("0132", "132." != "132")."""
    text = " ".join(text.split())
    return text.replace(",", "") if _GROUPED_NUMBER.match(text) else text


def extract_answer(response: str) -> str | None:
    """The normalised final answer of either style (the *last* `answer:` line wins), else None."""
    if not isinstance(response, str):
        return None
    lines = response.strip().splitlines()
    for line in reversed(lines):
        if marked := ANSWER_LINE.match(line):
            return normalise(marked.group(1)) or None
    return (normalise(lines[0]) or None) if len(lines) == 1 else None


def reward(response: str, answer: str) -> float:  # see the module docstring
    got = extract_answer(response)
    return 1.0 if got is not None and got == normalise(answer) else 0.0
