r"""GSM8K and MATH: a row's reference answer and demonstration; a reward that compares a response's final answer.

A response is untrusted text: it is only matched with linear-time regular expressions (on the reversed
text), never evaluated (no eval/exec/sympy). `extract_final(response) -> (text, strict)` reads, in order:

    1. \boxed{...}  the LAST `\boxed` (or `\fbox`) decides: nested braces are fine; `\boxed 5` (spaces, then one
                    token up to a space or `$`) too. Empty, or braces unclosed within 2000 characters: none.
    2. #### X       the last line that starts with `####` (GSM8K); "####12" counts as "#### 12".
    3. answer: X    the last "answer:" or "answer is" (any case, anywhere in a line, so "Final
                    Answer: X", "**Answer:** X", "The answer is: X"); X = the rest of that line.
    4. (lenient)    none of the above: the last number of the text (ASCII digits with optional ","
                    thousands groups, ".decimals" or "/denominator"), with strict = False.
    An empty X (e.g. "Answer:" and the answer on the next line) is no answer in that format.

`normalise` (the canonical form both sides are compared in) drops `$`, `%`, `\left`, `\right`, LaTeX spaces, a
trailing `^\circ` or unit `\text{ cm}`, a leading "+" and trailing periods; unwraps `\text{X}` (`\mbox`, `\textbf`,
`\mathrm`); writes dfrac and tfrac as frac; removes whitespace but between digits. A NUMBER (ASCII digits only:
"١٢" is not one) then becomes an exact reduced fraction, an integer when q = 1: "1,234", "1234.0", "+1234",
"\$1,234" -> "1234"; "0.5", "1/2", "\frac{1}{2}", "\dfrac12" -> "1/2"; "-\frac{1}{2}" == "\frac{-1}{2}" == "-0.5";
"0.75" == "3/4" but "0.33" != "1/3"; "-0" == "0"; "5%" == "5"; "0132" == "132". Anything else ("\sqrt{2}",
"(1,2)", "x=5", "1e3", "2\frac12", "12 apples") is compared as the normalised string: "12 apples" != "12".

    strict_reward(response, answer)   1.0 if a format 1-3 answer normalises to normalise(answer)
    lenient_reward(response, answer)  1.0 if strict_reward is, or the last number of the response normalises so
                                      ("answer: 12 apples" is lenient-only correct)
    math_verify_reward(...)           1.0 if HF's math-verify verifies a format 1-3 answer (both parsed as `\boxed{X}`)

All return 0.0 for non-string input or an answer over 2000 characters, never raise; strict, lenient: < 50 ms on 1 MB."""

import re
import threading
from fractions import Fraction

from minichord.config import optional_import

_LIMIT = 2000  # an answer longer than this never matches (a boxed one must close within it)

# reversed: the LAST occurrence is the first match, one linear pass with a literal or small class in front
_HASHES = re.compile(r"####[ \t]*(?:\n|\Z)")  # reversed: a line that starts with "####"
_COLON = re.compile(rb":[ \t]*\**rewsna\b")  # reversed "answer:", "answer**:" (in lower-cased ASCII bytes)
_IS = re.compile(rb"si(?<!\wsi)[ \t]+rewsna\b")  # reversed "answer is"
_DIGIT = re.compile(r"[0-9]")
# reversed number ending at the last digit: "3/4", "1,234.5", "12", ".5"
_INT = r"(?:[0-9]{3},)+[0-9]{1,3}(?![0-9])|[0-9]+"
_REV_NUMBER = re.compile(rf"(?:[0-9]+/)?(?:[0-9]+\.(?:{_INT})?|{_INT})")

_DROP = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[!,;: ]|\\*[$%]")
_UNIT = re.compile(r"(?<=\S)\s*\\(?:text|mbox)\{\s[^{}]*\}\s*$|\^\{?\\circ\}?\s*$|°\s*$")
_UNWRAP = re.compile(r"\\(?:text|mbox|textbf|mathrm)\{([^{}]*)\}")
_SPACE = re.compile(r"(?<![0-9]) | (?![0-9])")
_DECIMAL = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|-?\.[0-9]+")
_FINAL = re.compile(r"^[ \t]*####[ \t]*(.*?)\s*$", re.MULTILINE)  # a GSM8K answer's final line
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")
_RATIO = re.compile(r"(-?)(?:([0-9]+)/([0-9]+)|\\frac\{(-?[0-9]+)\}\{([0-9]+)\}|\\frac([0-9])([0-9]))")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed (or \\fbox) of `text`; None if there is none, or it is empty or unclosed."""
    if (at := max(text.rfind("\\boxed"), text.rfind("\\fbox"))) < 0:
        return None
    start = at + (6 if text.startswith("\\boxed", at) else 5)
    rest = text[start:start + _LIMIT + 2]
    if not rest.lstrip().startswith("{"):
        token = re.match(r"[ \t]+([^\s$]+)", rest)
        return token.group(1) if token else None
    depth = 0
    for brace in re.finditer(r"[{}]", rest):
        depth += 1 if brace.group() == "{" else -1
        if depth == 0:
            return rest[rest.index("{") + 1:brace.start()].strip() or None
    return None


def _rest_of_line(text: str, start: int) -> str | None:
    end = text.find("\n", start)
    return text[start:end if end >= 0 else len(text)].strip().lstrip(":").strip().strip("*").strip() or None


def extract_final(response: str) -> tuple[str | None, bool]:
    """(the final answer, True) in a strict format, else (the last number or None, False); see the module docstring."""
    return _final(response, response[::-1]) if isinstance(response, str) else (None, False)


def _final(response: str, reverse: str) -> tuple[str | None, bool]:
    if boxed := last_boxed(response):
        return boxed, True
    n = len(response)
    if (line := _HASHES.search(reverse)) and (text := _rest_of_line(response, n - line.start())):
        return text, True
    lower = reverse.encode("ascii", "replace").lower()  # one byte a character: the same positions
    phrases = [found.start() for found in (_COLON.search(lower), _IS.search(lower)) if found]
    if phrases and (text := _rest_of_line(response, n - min(phrases))):
        return text, True
    return _last_number(response, reverse), False


def _last_number(text: str, reverse: str) -> str | None:
    """The last number of `text`; "-" before it is a sign unless it follows a letter, digit or bracket
    ("x = -5" -> -5, "3-5" -> 5)."""
    if not (digit := _DIGIT.search(reverse)):
        return None
    found = _REV_NUMBER.match(reverse, digit.start())
    start, end = len(text) - found.end(), len(text) - found.start()
    signed = start > 0 and text[start - 1] == "-" and not (start > 1 and re.match(r"[0-9A-Za-z)\]}]", text[start - 2]))
    return text[start - signed:end]


def normalise(text: str) -> str:
    """The canonical form of an answer (see the module docstring); "" for a non-string."""
    if not isinstance(text, str):
        return ""
    text = text.strip().replace("\u2212", "-").replace("{,}", ",")
    text = _UNWRAP.sub(r"\1", _UNIT.sub("", _DROP.sub("", text)))
    text = _SPACE.sub("", " ".join(text.split())).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    text = text[1:] if text.startswith("+") and text[1:2] in ("", ".", "\\", *"0123456789") else text
    if len(text) > _LIMIT:
        return text  # never an answer (and int() refuses over 4300 digits)
    if _DECIMAL.fullmatch(text):
        return str(Fraction(text.replace(",", "")))  # Fraction prints "p/q", or "p" when q = 1
    if ratio := _RATIO.fullmatch(text):
        p, q = (int(part) for part in ratio.groups()[1:] if part is not None)
        return str(Fraction(-p if ratio.group(1) else p, q)) if q else text  # "3/0" is not a number
    return text


def _same(got: str | None, answer: str) -> bool:
    return got is not None and len(got) <= _LIMIT and normalise(answer) != "" and normalise(got) == normalise(answer)


def strict_reward(response: str, answer: str) -> float:  # see the module docstring
    got, strict = extract_final(response)
    return 1.0 if strict and isinstance(answer, str) and _same(got, answer) else 0.0


def lenient_reward(response: str, answer: str) -> float:  # see the module docstring
    if not isinstance(response, str) or not isinstance(answer, str):
        return 0.0
    reverse = response[::-1]
    got, strict = _final(response, reverse)
    last = _last_number(response, reverse) if strict else got
    return 1.0 if (strict and _same(got, answer)) or _same(last, answer) else 0.0


def _timeout() -> int | None:  # math-verify's timeouts are signal alarms, which only the main thread can set
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_verify_parse(answer: str) -> list:
    """math-verify's sympy values of `\\boxed{answer}` (less a sentence's final period), [] if none (not the text)."""
    text = f"\\boxed{{{answer.rstrip('.')}}}" if isinstance(answer, str) and len(answer) <= _LIMIT else ""
    math_verify = optional_import("math_verify", "math-verify", "math")
    return math_verify.parse(text, fallback_mode="no_fallback", parsing_timeout=_timeout())


def math_verify_reward(response: str, answer: str) -> float:
    """1.0 if math-verify verifies the strict final answer of `response` (formats 1-3) against `answer`; 0.0 when
    either does not parse (a reference that does not parse is never a reward of 1), and for any exception."""
    verify, (got, strict) = optional_import("math_verify", "math-verify", "math").verify, extract_final(response)
    try:
        gold, pred = math_verify_parse(answer), math_verify_parse(got) if strict else []
        return float(bool(gold and pred) and verify(gold, pred, timeout_seconds=_timeout()))
    except Exception:  # noqa: BLE001 - an unreadable or hostile response scores 0, it never stops a run
        return 0.0


def gsm8k_answer(answer: str) -> str:
    """The final answer of a GSM8K "answer" text: what follows its last `####` line."""
    if not (finals := [text for text in _FINAL.findall(answer) if text]):
        raise ValueError("'answer' has no final '#### N' line (GSM8K format)")
    return finals[-1]


def gsm8k_response(answer: str) -> str:
    """A GSM8K "answer" text as a demonstration: without the `<<48/2=24>>` calculator annotations."""
    return _CALCULATOR.sub("", answer)


def math_answer(solution: str, answer: str | None) -> str:
    """The reference answer of a MATH row: its "answer" field, else the solution's last \\boxed{}."""
    if (answer := answer or last_boxed(solution)) is None:
        raise ValueError("'solution' has no \\boxed{...} answer and the row has no 'answer' key (MATH format)")
    return answer


def math_skill(record: dict) -> str:
    """The skill of a MATH row: its "type" (or "subject"); the metadata must be strings or integers."""
    for key in ("level", "type", "subject", "unique_id"):
        if key in record and (isinstance(record[key], bool) or not isinstance(record[key], (str, int))):
            raise ValueError(f"{key!r} must be a string or an integer, got {type(record[key]).__name__}")
    names = (record[k].strip() for k in ("type", "subject") if isinstance(record.get(k), str) and record[k].strip())
    return next(names, "math")
