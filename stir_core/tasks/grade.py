"""The grader: where a completion's final answer is, and whether it equals the gold answer.

One function, `grade(completion, gold, kind) -> Grade`, decides accuracy *and* mining labels (every task's
`score` calls it, and `offline/mine.py` labels rollouts with `task.score`). The verdict carries the answer
as read, where it was found (`Source`) and why it counts or not (`Why`), so a table of cases can check
each reason.

Extraction follows the reference's fallbacks (`stir/eval/extractors.py:109–139`, MATH tasks): the last
`\\boxed{}`, then an "Answer:" / "Final answer:" line (or a marker line followed by the answer), then an
inline "answer is …", then `####`, then the last non-empty line. Numeric tasks (gsm8k, svamp, aime, amc)
look at `####` first as the reference does (extractors.py:82–88), then the same markers, then the last
number. Choice and yes/no tasks: `#### X` (extractors.py:91–107), `\\boxed{X}`, an answer phrase, then the
last standalone letter / yes-no word.

Differences from the reference, on purpose (declared in docs/STIR_SPEC.md, "Scoring"):
- the *last* answer line counts (the reference takes the first, extractors.py:114–127): models restate;
- equivalence goes through Hugging Face's `math-verify` (SymPy), not the reference's own normaliser, which
  reads `\\boxed{2\\pi}` as "2" (normalize.py:355, 376–379) — here `2\\pi` is not 2;
- numeric tasks compare exact rationals (`3/4` = `0.75`), and a LaTeX answer to a numeric task
  (`\\boxed{\\frac{3}{4}}`) is read as its value.

`math-verify` bounds its SymPy work with `signal.alarm`, which only works on a process's main thread. On
the main thread we use its own timeouts; on any other thread (the app evaluates in background threads)
the check runs in one persistent helper process (`verify_worker.py`), whose main thread can use the alarm,
with a wall-clock backstop after which the helper is replaced and the verdict is `Why.TIMEOUT`.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from enum import Enum

from stir_core.tasks.extract import (
    extract_boxed,
    find_numbers,
    last_hash_answer,
    normalize_latex,
    normalize_number,
)

KINDS = ("number", "latex", "choice", "yesno")
VERIFY_TIMEOUT_S = 5  # per math-verify parse / compare (its own unit: whole seconds)
MAX_ANSWER_CHARS = 300  # a longer "answer" is prose, not an answer: compared as text only


class Source(str, Enum):
    """Where the answer was read."""

    BOXED = "boxed"
    HASH = "hash"  # "#### x"
    ANSWER_LINE = "answer_line"  # "Answer: x", "**Final answer:** x", or "Final answer:" then x
    ANSWER_INLINE = "answer_inline"  # "... the answer is x"
    LAST_LINE = "last_line"
    LAST_NUMBER = "last_number"
    LAST_LETTER = "last_letter"  # choice / yes-no: the last standalone letter or word
    NONE = "none"


class Why(str, Enum):
    """Why a verdict is what it is."""

    SAME_TEXT = "same_text"  # equal after normalisation (no algebra needed)
    SAME_VALUE = "same_value"  # equal rationals (numeric tasks)
    EQUIVALENT = "equivalent"  # math-verify: symbolically / numerically equal
    DIFFERENT = "different"
    NO_ANSWER = "no_answer"  # nothing answer-like in the completion
    UNREADABLE = "unreadable"  # an answer was found but is not of the task's kind
    TIMEOUT = "timeout"  # math-verify ran out of time: not counted as correct


@dataclass(frozen=True, kw_only=True)
class Grade:
    correct: bool
    pred: str | None  # the answer as read from the completion (before normalisation)
    source: Source
    why: Why


# --- finding the answer -------------------------------------------------------------------------------

# The reference's patterns (extractors.py:16–24), with "the answer is" allowed after "final".
_ANSWER_LINE = re.compile(r"(?im)^\s*[#>*_`\s]*(?:the\s+)?(?:final\s+answer|answer)\s*[*_`]*\s*[:=]\s*(.+?)\s*$")
_ANSWER_MARKER = re.compile(r"(?im)^\s*[#>*_`\s]*(?:final\s+answer|answer)\s*[*_`]*\s*[:=]?\s*[*_`]*\s*$")
_ANSWER_INLINE = re.compile(r"(?i)(?:final\s+answer|answer)\s*[*_`]*\s*(?:is|=|:)\s*[:]?\s*([^\n]+)")
# Where an inline answer's sentence goes on: ". Then", ", which", " because" ...
_TAIL = re.compile(r"(?:[.;!?](?:\s|$)|,\s+(?=[A-Za-z]{2})|\s+(?:which|because|since|as|so|and|for|when|where)\b)")
_MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)


def _clean(ans: str) -> str:
    """An answer phrase without markdown emphasis, math delimiters, a trailing sentence or period."""
    s = ans.strip().strip("*_`").strip()
    if (box := extract_boxed(s)) is not None:
        return box
    if (m := _MATH_SEGMENT.search(s)) is not None:
        return next(g for g in m.groups() if g is not None).strip()
    if (m := _TAIL.search(s)) is not None and m.start() > 0:
        s = s[: m.start()]
    return s.strip().strip("*_`").rstrip(".").strip()


def _answer_phrase(text: str) -> tuple[str, Source] | None:
    """The last "Answer: x" line (or a bare marker line followed by x), else the last inline "answer is x"."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    found = None
    for i, ln in enumerate(lines):
        if (m := _ANSWER_LINE.match(ln)) is not None and _clean(m.group(1)):
            found = _clean(m.group(1))
        elif _ANSWER_MARKER.match(ln) and i + 1 < len(lines):
            found = _clean(lines[i + 1])
    if found:
        return found, Source.ANSWER_LINE
    hits = [_clean(h) for h in _ANSWER_INLINE.findall(text)]
    hits = [h for h in hits if h]
    return (hits[-1], Source.ANSWER_INLINE) if hits else None


def find_answer(text: str, kind: str) -> tuple[str | None, Source]:
    """The raw final answer of `kind` in a completion and where it was found; (None, NONE) if there is none."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
    if kind == "choice":
        return _find_letter(text)
    if kind == "yesno":
        return _find_yesno(text)
    boxed, hashed = extract_boxed(text), last_hash_answer(text)
    order: list[tuple[str | None, Source]] = (
        [(hashed, Source.HASH), (boxed, Source.BOXED)] if kind == "number" else [(boxed, Source.BOXED)])
    phrase = _answer_phrase(text)
    order.append(phrase if phrase else (None, Source.NONE))
    if kind == "latex":
        order.append((hashed, Source.HASH))
    for ans, src in order:
        if ans:
            return ans, src
    if kind == "number":
        nums = find_numbers(text)
        return (nums[-1], Source.LAST_NUMBER) if nums else (None, Source.NONE)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (_clean(lines[-1]) or None, Source.LAST_LINE) if lines else (None, Source.NONE)


_LETTERS = "ABCDE"
_LETTER_TOKEN = r"[(\[]?\s*\**([A-Ea-e])\**\s*[)\].:]?"
_HASH_LETTER = re.compile(rf"(?<!#)####(?!#)[ \t]*{_LETTER_TOKEN}(?![A-Za-z0-9])")
_LETTER_PHRASE = re.compile(
    r"(?i)(?:final\s+answer|answer|correct\s+(?:option|choice|answer)|best\s+(?:option|choice|answer)|"
    r"(?:i\s+)?(?:choose|pick|select))\s*[*_`]*\s*(?:is|:|=|would\s+be|should\s+be)?\s*[:]?\s*"
    r"(?:option\s+|choice\s+)?[*_`$]*\s*[(\[]?\s*(?:\\text\{|\\boxed\{)?\s*\(?([A-E])(?![A-Za-z0-9'])")


def _find_letter(text: str) -> tuple[str | None, Source]:
    if hits := _HASH_LETTER.findall(text):
        return hits[-1].upper(), Source.HASH
    if (box := extract_boxed(text)) is not None:
        m = re.fullmatch(rf"{_LETTER_TOKEN}", (normalize_latex(box) or "").strip())
        if m:
            return m.group(1).upper(), Source.BOXED
    if hits := _LETTER_PHRASE.findall(text):
        return hits[-1].upper(), Source.ANSWER_INLINE
    from stir_core.tasks.extract import extract_choice

    letter = extract_choice(text, _LETTERS)
    return (letter, Source.LAST_LETTER) if letter else (None, Source.NONE)


_YESNO = r"(yes|no)(?![A-Za-z])"


def _find_yesno(text: str) -> tuple[str | None, Source]:
    if hits := re.findall(rf"(?i)(?<!#)####(?!#)[ \t]*[*_`]*{_YESNO}", text):
        return hits[-1].title(), Source.HASH
    if (box := extract_boxed(text)) is not None:
        m = re.fullmatch(rf"(?i)\s*(?:\\text\{{)?\s*{_YESNO}\.?\}}?\s*", box)
        if m:
            return m.group(1).title(), Source.BOXED
    if phrase := _answer_phrase(text):
        m = re.match(rf"(?i)\s*{_YESNO}", phrase[0])
        if m:
            return m.group(1).title(), phrase[1]
    hits = re.findall(rf"(?i)(?<![A-Za-z]){_YESNO}", text)
    return (hits[-1].title(), Source.LAST_LETTER) if hits else (None, Source.NONE)


# --- comparing ----------------------------------------------------------------------------------------


def _as_number(s: str) -> str | None:
    """A canonical rational from a plain number ("1,000", "$18.00") or a LaTeX one ("\\frac{3}{4}", "042")."""
    return normalize_number(s) or normalize_number(normalize_latex(s))


def _verify_here(pred: str, gold: str, timeout_s: int | None) -> bool | None:
    """math-verify on this thread: True/False, or None when it timed out. Both sides are parsed as the
    content of a `\\boxed{}` (a bare "3/4" or "x+1" is valid LaTeX)."""
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    cfg = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        g = parse(f"\\boxed{{{gold}}}", extraction_config=cfg, parsing_timeout=timeout_s, raise_on_error=True)
        p = parse(f"\\boxed{{{pred}}}", extraction_config=cfg, parsing_timeout=timeout_s, raise_on_error=True)
        return bool(g and p and verify(g, p, timeout_seconds=timeout_s, raise_on_error=True))
    except TimeoutException:
        return None
    except Exception:  # noqa: BLE001 - an answer SymPy cannot read is simply not equal
        return False


class _Helper:
    """One persistent `python -m stir_core.tasks.verify_worker` process speaking JSON lines: its main thread
    can use math-verify's alarms. A plain subprocess, not multiprocessing, so nothing re-imports the
    caller's `__main__` (a Streamlit script, a REPL)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def ask(self, pred: str, gold: str) -> bool | None:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "stir_core.tasks.verify_worker", str(VERIFY_TIMEOUT_S)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
            proc = self.proc
            proc.stdin.write(json.dumps([pred, gold]) + "\n")
            proc.stdin.flush()
            # 3 timed steps (2 parses, 1 compare) plus the helper's start-up (imports SymPy once)
            ready, _, _ = select.select([proc.stdout], [], [], 3 * VERIFY_TIMEOUT_S + 60)
            line = proc.stdout.readline() if ready else ""
            if not line:  # stuck past its own alarm, or died: replace it
                proc.kill()
                proc.wait()
                self.proc = None
                return None
            return json.loads(line)


_HELPER = _Helper()


def math_equivalent(pred: str, gold: str) -> bool | None:
    """math-verify's verdict (None: timed out), safe on any thread (see the module doc)."""
    if threading.current_thread() is threading.main_thread():
        return _verify_here(pred, gold, VERIFY_TIMEOUT_S)
    return _HELPER.ask(pred, gold)


def equivalent(pred: str | None, gold: str, kind: str) -> tuple[bool, Why]:
    """Whether the answer `pred` equals `gold` as answers of `kind`, and why."""
    if pred is None or not pred.strip():
        return False, Why.NO_ANSWER
    if kind in ("choice", "yesno"):
        p, g = pred.strip().upper(), gold.strip().upper()
        return (True, Why.SAME_TEXT) if p == g else (False, Why.DIFFERENT)
    if kind == "number":
        p, g = _as_number(pred), _as_number(gold)
        if g is None:
            raise ValueError(f"gold answer {gold!r} is not a number")
        nums = find_numbers(pred)
        if p is None and nums and "\\" not in pred:  # "7 apples", "3/4 of the cake": its first number
            p = normalize_number(nums[0])
        if p is not None:
            return (True, Why.SAME_VALUE) if p == g else (False, Why.DIFFERENT)
        if not nums or len(pred) > MAX_ANSWER_CHARS:
            return False, Why.UNREADABLE
    elif normalize_latex(pred) == normalize_latex(gold):
        return True, Why.SAME_TEXT
    if len(pred) > MAX_ANSWER_CHARS:
        return False, Why.DIFFERENT
    same = math_equivalent(pred, gold)
    if same is None:
        return False, Why.TIMEOUT
    return (True, Why.EQUIVALENT) if same else (False, Why.DIFFERENT)


def grade(completion: str, gold: str, kind: str) -> Grade:
    """The verdict on one completion against the gold answer (`gold` as written, or normalised)."""
    pred, source = find_answer(completion, kind)
    ok, why = equivalent(pred, gold, kind)
    return Grade(correct=ok, pred=pred, source=source, why=why)
