"""Benchmark tasks read from local JSONL or Parquet files: gsm8k, svamp, math500, aime, amc, arc-challenge,
openbookqa, commonsenseqa, strategyqa. No network: the user passes `path=` (the eval split) or `paths={"eval": ..., "mine": ...}`.

Each file is one split. Rows are parsed into `Example`s once per split; field names (and the accepted
alternatives) are in `docs/tasks.md`. Bad files fail loudly, naming the file, the line and the field.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from stir_core.io.bounded import clip
from stir_core.tasks import register_task
from stir_core.tasks.base import SPLITS, Example
from stir_core.tasks.extract import extract_boxed, normalize_latex, normalize_number
from stir_core.tasks.grade import Grade, find_answer, grade

SUFFIXES = (".jsonl", ".json", ".parquet", ".pq")
CHOICE_LETTERS = "ABCDE"

# Accepted field names, preferred first.
QUESTION_FIELDS = ("question", "problem", "Problem", "Question", "input", "prompt")
NUMBER_ANSWER_FIELDS = ("answer", "Answer", "final_answer", "expected_answer", "target", "output")
SOLUTION_FIELDS = ("solution", "Solution", "rationale", "reasoning")
ID_FIELDS = ("id", "ID", "unique_id", "idx", "index", "problem_id")
CHOICE_QUESTION_FIELDS = ("question", "question_stem", "stem", "Question")
CHOICES_FIELDS = ("choices", "options")
ANSWER_KEY_FIELDS = ("answerKey", "answer_key", "answer", "label", "gold")
META_FIELDS = ("level", "subject", "type", "year", "url", "source")
# `fields=` maps these names to a file's own column names (e.g. {"question": "problem_text"}).
FIELD_ROLES = {"question": "question", "answer": "answer", "solution": "solution", "id": "id",
               "choices": "choices", "answer_key": "answerKey"}

# --- prompts ------------------------------------------------------------------------------------------
# `reference` (the default): the authors' templates, word for word (stir/data/prompts.py at 77f5d9c):
# gsm8k_0shot / svamp_0shot :11–19, math_0shot :32–39, arc_0shot :41–70 (options "(A) text"),
# strategyqa_0shot :72–81. AIME/AMC have no template of their own there: the reference's default template
# is gsm8k_0shot (stir/config.py:43) and its extractor reads `####` for them (stir/eval/extractors.py:70–88).
# `blank_lines` (ours): our earlier templates, which ask for steps separated by blank lines (the segment
# delimiter), so control points fall between steps; declared in docs/STIR_SPEC.md.

REFERENCE_SYSTEM_PROMPT = "You are a helpful assistant. Follow the user's instructions carefully."  # prompts.py:6
PROMPT_STYLES = ("reference", "blank_lines")

_REF_NUMBER = (
    "Solve the following problem step by step.\n"
    "You should show intermediate steps.\n"
    "Return the final numeric answer on the last line in the format:\n"
    "#### <answer>\n\n"
    "Problem:\n"
    "{question}\n"
)
_REF_MATH = (
    "Solve the following problem step by step.\n"
    "You should show intermediate steps.\n"
    "Put the final answer in \\boxed{<final answer>} on the last line.\n\n"
    "Problem:\n"
    "{question}\n"
)
_REF_CHOICE = (
    "Solve the following problem step by step.\n"
    "You MUST explain your reasoning before giving the final choice.\n"
    "After the reasoning, choose the correct option (A, B, C, D, or E).\n"
    "Put only the chosen letter on the last line in the format:\n"
    "#### <A/B/C/D/E>\n\n"
    "Question:\n"
    "{question}\n\n"
    "Options:\n"
    "{choices}\n"
)
_REF_YESNO = (
    "Solve the following problem step by step.\n"
    "You MUST show intermediate steps.\n"
    "After the reasoning, answer the question with Yes or No.\n"
    "Put only the final label on the last line in the format:\n"
    "#### <Yes/No>\n\n"
    "Question:\n"
    "{question}\n"
)

_STEPS = "Reason step by step, and separate the steps with a blank line."
GSM8K_TEMPLATE = (
    f"Solve the following math problem. {_STEPS} "
    'Finish with the final answer on its own line in the form "#### <number>".\n\n'
    "Problem: {question}\n"
)
MATH_TEMPLATE = f"Solve the following math problem. {_STEPS} Put the final answer in \\boxed{{}}.\n\nProblem: {{question}}\n"
INTEGER_TEMPLATE = (
    f"Solve the following math problem. {_STEPS} The answer is an integer; "
    "put it in \\boxed{}.\n\nProblem: {question}\n"
)
CHOICE_TEMPLATE = (
    f"Answer the following multiple-choice question. {_STEPS} "
    'Finish with the letter of the correct option on its own line in the form "#### <letter>".\n\n'
    "Question: {question}\n{choices}\n"
)
YESNO_TEMPLATE = (
    f"Answer the following yes/no question. {_STEPS} "
    'Finish with the answer on its own line in the form "#### <Yes/No>".\n\n'
    "Question: {question}\n"
)

# --- reading files --------------------------------------------------------------------------------


def _plain(x: Any) -> Any:
    """Parquet values to plain Python: numpy arrays to lists, numpy scalars to Python, NaN to None."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a JSONL / JSON-array / Parquet file as (location, record), location like
    "test.jsonl line 3" (JSONL: the file's line number) or "test.parquet row 3" (1-based)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")
    from stir_core.io.bounded import check_size, iter_jsonl, read_text
    from stir_core.io.bounded import loads as json_loads

    rows: list[tuple[str, dict[str, Any]]] = []
    check_size(path, "task")  # refused by its size before a byte is read (a 1 GiB file is not parsed)
    if suffix in (".parquet", ".pq"):
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
        for i, rec in enumerate(frame.to_dict("records"), start=1):
            rows.append((f"{path.name} row {i}", {str(k): _plain(v) for k, v in rec.items()}))
    else:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        if suffix == ".json" and head.startswith(b"["):
            items = json_loads(read_text(path, "task"), str(path))
            located = [(f"{path.name} item {i}", r) for i, r in enumerate(items, start=1)]
        else:  # JSON Lines, streamed one bounded line at a time (binary garbage names the file and line)
            located = [(f"{path.name} line {i}", rec) for i, rec in iter_jsonl(path)]
        for where, rec in located:
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            rows.append((where, rec))
    if not rows:
        raise ValueError(f"{path}: the file has no rows")
    return rows


def _get(rec: dict[str, Any], names: Sequence[str], where: str, required: bool = True) -> Any:
    """The first present, non-null field among `names`; a ValueError naming the field when required."""
    for name in names:
        if rec.get(name) is not None:
            return rec[name]
    if not required:
        return None
    also = f" (also accepted: {', '.join(names[1:])})" if len(names) > 1 else ""
    raise ValueError(f"{where}: missing field {names[0]!r}{also}; the row has {clip(sorted(rec), 200)}")


def _text(rec: dict[str, Any], names: Sequence[str], where: str, required: bool = True) -> str | None:
    value = _get(rec, names, where, required)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: field {names[0]!r} should be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text and required:
        raise ValueError(f"{where}: field {names[0]!r} is empty")
    return text or None


def _row_id(rec: dict[str, Any], name: str, index: int) -> str:
    value = _get(rec, ID_FIELDS, "", required=False)
    return str(value) if value is not None else f"{name}-{index}"


def _meta(rec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {k: rec[k] for k in META_FIELDS if rec.get(k) is not None} | extra


# --- row parsers: (record, location, name, index) -> Example -----------------------------------------------

_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations, e.g. "<<16-3-4=9>>"


def _steps(text: str) -> list[str]:
    """Non-empty lines of a worked solution, calculator annotations removed."""
    return [s for line in text.splitlines() if (s := _CALC.sub("", line).strip())]


def parse_gsm8k(rec: dict[str, Any], where: str, name: str, index: int) -> Example:
    question = _text(rec, QUESTION_FIELDS, where)
    answer = _text(rec, NUMBER_ANSWER_FIELDS, where)
    body, sep, final = answer.rpartition("####")
    raw = final.strip() if sep else answer
    gold = normalize_number(raw)
    if gold is None:
        raise ValueError(f"{where}: field 'answer': final answer {clip(raw)} is not a number")
    worked = body if sep else _text(rec, SOLUTION_FIELDS, where, required=False)
    steps = _steps(worked) if worked else []
    solution = "\n\n".join([*steps, f"#### {raw}"]) if steps else None
    return Example(id=_row_id(rec, name, index), question=question, answer=gold, solution=solution,
                   meta=_meta(rec, answer_raw=raw))


def parse_math(rec: dict[str, Any], where: str, name: str, index: int) -> Example:
    question = _text(rec, QUESTION_FIELDS, where)
    solution = _text(rec, SOLUTION_FIELDS, where, required=False)
    raw = _text(rec, NUMBER_ANSWER_FIELDS, where, required=False)
    if raw is None and solution is not None:  # original MATH rows carry the answer only as \boxed{}
        raw = extract_boxed(solution)
    if raw is None:
        raise ValueError(
            f"{where}: missing field 'answer' (also accepted: {', '.join(NUMBER_ANSWER_FIELDS[1:])}, "
            f"or a 'solution' with a \\boxed{{}} answer); the row has {clip(sorted(rec), 200)}"
        )
    gold = normalize_latex(raw)
    if not gold:
        raise ValueError(f"{where}: field 'answer' {clip(raw)} is empty after normalisation")
    return Example(id=_row_id(rec, name, index), question=question, answer=gold, solution=solution,
                   meta=_meta(rec, answer_raw=raw))


def parse_integer(rec: dict[str, Any], where: str, name: str, index: int) -> Example:
    question = _text(rec, QUESTION_FIELDS, where)
    raw = _text(rec, NUMBER_ANSWER_FIELDS, where)
    gold = normalize_number(raw)
    if gold is None or not re.fullmatch(r"-?\d+", gold):
        raise ValueError(f"{where}: field 'answer' {clip(raw)} is not an integer ({name} answers are integers)")
    solution = _text(rec, SOLUTION_FIELDS, where, required=False)
    return Example(id=_row_id(rec, name, index), question=question, answer=gold, solution=solution,
                   meta=_meta(rec, answer_raw=raw))


def _choices(value: Any, where: str) -> tuple[list[str], list[str]]:
    """(labels, texts) of the three accepted shapes: ["t1", ...], [{"label", "text"}, ...],
    {"text": [...], "label": [...]}; labels default to A, B, C, ..."""
    if isinstance(value, dict) and "text" in value:
        texts = list(value["text"])
        labels = list(value.get("label") or CHOICE_LETTERS[: len(texts)])
    elif isinstance(value, list) and value and all(isinstance(c, dict) for c in value):
        if not all("text" in c for c in value):
            raise ValueError(f"{where}: field 'choices': every option needs a 'text'")
        texts = [c["text"] for c in value]
        labels = [
            c.get("label", CHOICE_LETTERS[i] if i < len(CHOICE_LETTERS) else "?") for i, c in enumerate(value)
        ]
    elif isinstance(value, list) and all(isinstance(c, str) for c in value):
        texts, labels = list(value), list(CHOICE_LETTERS[: len(value)])
    else:
        raise ValueError(
            f"{where}: field 'choices' should be a list of strings, a list of {{label, text}} objects or "
            f'{{"text": [...], "label": [...]}}; got {type(value).__name__}'
        )
    if len(labels) != len(texts):
        raise ValueError(f"{where}: field 'choices' has {len(texts)} texts but {len(labels)} labels")
    if not 2 <= len(texts) <= len(CHOICE_LETTERS):
        raise ValueError(
            f"{where}: field 'choices' has {len(texts)} options; expected 2 to {len(CHOICE_LETTERS)}"
        )
    return [str(x).strip() for x in labels], [str(x).strip() for x in texts]


def parse_choice(rec: dict[str, Any], where: str, name: str, index: int) -> Example:
    q = rec.get("question")
    if isinstance(q, dict):  # the original ARC / OpenBookQA files: {"stem": ..., "choices": [...]}
        question = _text(q, ("stem",), f"{where} field 'question'")
        raw_choices = _get(q, ("choices",), f"{where} field 'question'")
    else:
        question = _text(rec, CHOICE_QUESTION_FIELDS, where)
        raw_choices = _get(rec, CHOICES_FIELDS, where, required=False)
        if raw_choices is None:  # MMLU-style columns A, B, C, D
            raw_choices = [rec[c] for c in CHOICE_LETTERS if rec.get(c) is not None]
            if not raw_choices:
                _get(rec, CHOICES_FIELDS, where)  # raises the missing-field error
    labels, texts = _choices(raw_choices, where)
    key = _get(rec, ANSWER_KEY_FIELDS, where)
    if isinstance(key, int) and not isinstance(key, bool):  # an integer key is a 0-based index
        if not 0 <= key < len(texts):
            raise ValueError(f"{where}: answer index {key} is out of range for {len(texts)} options")
        pos = key
    elif str(key).strip() in labels:
        pos = labels.index(str(key).strip())
    else:
        raise ValueError(f"{where}: field 'answerKey' {clip(key)} is not one of the option labels {labels}")
    letters = list(CHOICE_LETTERS[: len(texts)])
    meta = _meta(rec, choices=texts, letters=letters, labels_raw=labels, answer_raw=key)
    return Example(id=_row_id(rec, name, index), question=question, answer=letters[pos], solution=None,
                   meta=meta)


def parse_svamp(rec: dict[str, Any], where: str, name: str, index: int) -> Example:
    """SVAMP (`ChilleD/SVAMP` export, or the original JSON): the question is `Body` + newline + `Question`,
    as the reference builds it (stir/data/loaders.py:108); `Answer` a number (`27.0`). Rows without `Body`
    fall back to the gsm8k field names."""
    body = _text(rec, ("Body", "body"), where, required=False)
    q = _text(rec, ("Question",), where, required=False)
    if q is None:
        return parse_gsm8k(rec, where, name, index)
    question = f"{body}\n{q}".strip() if body else q
    raw = _text(rec, ("Answer", "answer"), where)
    gold = normalize_number(raw)
    if gold is None:
        raise ValueError(f"{where}: field 'Answer' {clip(raw)} is not a number")
    meta = _meta(rec, answer_raw=raw) | {k: rec[k] for k in ("Equation", "Type") if rec.get(k) is not None}
    ex_id = _row_id(rec, name, index) if rec.get("ID") is None else str(rec["ID"])
    return Example(id=ex_id, question=question, answer=gold, solution=None, meta=meta)


_YES, _NO = ("yes", "true", "1"), ("no", "false", "0")


def parse_yesno(rec: dict[str, Any], where: str, name: str, index: int) -> Example:
    """StrategyQA (`ChilleD/StrategyQA` export, or the original `strategyqa_train.json` array): `question`,
    `answer` a boolean (or "yes"/"no", "true"/"false"); gold "Yes"/"No" as in stir/data/loaders.py:371–375.
    `facts` (a list or text), when present, become the gold solution's steps."""
    question = _text(rec, QUESTION_FIELDS, where)
    raw = _get(rec, ("answer", "Answer", "label"), where)
    word = str(raw).strip().lower()
    if word not in _YES + _NO:
        raise ValueError(f"{where}: field 'answer' {clip(raw)} is not a yes/no answer (true/false, yes/no)")
    gold = "Yes" if word in _YES else "No"
    facts = rec.get("facts")
    steps = [str(f).strip() for f in facts] if isinstance(facts, list) else _steps(str(facts or ""))
    steps = [f for f in steps if f]
    solution = "\n\n".join([*steps, f"#### {gold}"]) if steps else None
    qid = rec.get("qid")
    ex_id = str(qid) if qid is not None else _row_id(rec, name, index)
    return Example(id=ex_id, question=question, answer=gold, solution=solution, meta=_meta(rec, answer_raw=raw))


# --- the task -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FileFormat:
    """What differs between file tasks: how a row becomes an Example, the prompts, the answer kind."""

    name: str
    kind: str  # "number" | "latex" | "choice" | "yesno" (see stir_core.tasks.grade)
    parse: Callable[[dict[str, Any], str, str, int], Example]
    template: str  # the reference's prompt (prompt_style "reference")
    blank_lines_template: str  # ours (prompt_style "blank_lines")

    def template_for(self, style: str) -> str:
        if style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt_style {style!r}; expected one of {PROMPT_STYLES}")
        return self.template if style == "reference" else self.blank_lines_template


FORMATS = {
    f.name: f
    for f in (
        FileFormat(name="gsm8k", kind="number", parse=parse_gsm8k, template=_REF_NUMBER,
                   blank_lines_template=GSM8K_TEMPLATE),
        FileFormat(name="svamp", kind="number", parse=parse_svamp, template=_REF_NUMBER,
                   blank_lines_template=GSM8K_TEMPLATE),
        FileFormat(name="math500", kind="latex", parse=parse_math, template=_REF_MATH,
                   blank_lines_template=MATH_TEMPLATE),
        FileFormat(name="aime", kind="number", parse=parse_integer, template=_REF_NUMBER,
                   blank_lines_template=INTEGER_TEMPLATE),
        FileFormat(name="amc", kind="number", parse=parse_integer, template=_REF_NUMBER,
                   blank_lines_template=INTEGER_TEMPLATE),
        FileFormat(name="arc-challenge", kind="choice", parse=parse_choice, template=_REF_CHOICE,
                   blank_lines_template=CHOICE_TEMPLATE),
        FileFormat(name="openbookqa", kind="choice", parse=parse_choice, template=_REF_CHOICE,
                   blank_lines_template=CHOICE_TEMPLATE),
        FileFormat(name="commonsenseqa", kind="choice", parse=parse_choice, template=_REF_CHOICE,
                   blank_lines_template=CHOICE_TEMPLATE),
        FileFormat(name="strategyqa", kind="yesno", parse=parse_yesno, template=_REF_YESNO,
                   blank_lines_template=YESNO_TEMPLATE),
    )
}


def problem_hash(ex: Example) -> str:
    """A content hash of a problem: its question and options, whitespace collapsed and case folded."""
    import hashlib

    text = " ".join(ex.question.split()).casefold()
    if "choices" in ex.meta:
        text += "\x00" + "\x00".join(" ".join(str(c).split()).casefold() for c in ex.meta["choices"])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class FileTask:
    """A task over local files, one file per split. `template` overrides the prompt: `{question}` (and
    `{choices}` for multiple choice) are replaced literally, so LaTeX braces need no escaping."""

    delimiter = "\n\n"

    def __init__(
        self,
        fmt: FileFormat,
        path: str | Path | None = None,
        paths: dict[str, str | Path] | None = None,
        template: str | None = None,
        fields: dict[str, str] | None = None,
        prompt_style: str = "reference",
        system_prompt: str | None = "default",
    ):
        self.format, self.name, self.kind = fmt, fmt.name, fmt.kind
        if path is not None and paths is not None:
            raise ValueError(f"task {fmt.name!r}: pass either path= or paths=, not both")
        if path is None and paths is None:
            raise ValueError(
                f"task {fmt.name!r} reads local files: pass path=FILE (the eval split) or "
                f"paths={{'eval': FILE, 'mine': FILE, ...}} (JSONL or Parquet)"
            )
        given = {"eval": path} if path is not None else dict(paths)
        self.paths: dict[str, Path] = {}
        for split, p in given.items():
            if split not in SPLITS:
                raise ValueError(f"task {fmt.name!r}: unknown split {split!r} in paths; splits are {SPLITS}")
            p = Path(p).expanduser()
            if not p.is_file():
                raise FileNotFoundError(
                    f"task {fmt.name!r}: {split} file {str(p)!r} does not exist or is not a file"
                )
            if p.suffix.lower() not in SUFFIXES:
                raise ValueError(f"task {fmt.name!r}: {p} has type {p.suffix!r}; expected one of {SUFFIXES}")
            self.paths[split] = p
        # The knob is declared in config.py (`PromptConfig`), which tasks may not import (same layer);
        # tests/test_file_tasks.py checks that the two lists of styles agree.
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style: {prompt_style!r} is not one of {', '.join(PROMPT_STYLES)}")
        self.prompt_style = prompt_style
        # The reference sends this system message through the chat template (stir/online/stir.py:293–297,
        # stir/offline/stage1.py:320–323); `Model.format_prompt(text, system=...)` applies it.
        # "default": the reference's message under prompt_style "reference", none under "blank_lines".
        if system_prompt == "default":
            system_prompt = REFERENCE_SYSTEM_PROMPT if self.prompt_style == "reference" else None
        self.system_prompt = system_prompt
        self.template = template if template is not None else fmt.template_for(self.prompt_style)
        needed = ("{question}", "{choices}") if fmt.kind == "choice" else ("{question}",)
        for slot in needed:
            if slot not in self.template:
                raise ValueError(f"task {fmt.name!r}: the prompt template must contain {slot}")
        self.fields = dict(fields or {})
        unknown = set(self.fields) - set(FIELD_ROLES)
        if unknown:
            raise ValueError(f"task {fmt.name!r}: unknown field role(s) {sorted(unknown)} in fields; "
                             f"known: {sorted(FIELD_ROLES)}")
        self._cache: dict[str, list[Example]] = {}
        self._checked = False

    def _rename(self, rec: dict[str, Any], where: str) -> dict[str, Any]:
        """The record with the file's own columns (`fields`) copied to the names the parser reads."""
        if not self.fields:
            return rec
        out = dict(rec)
        for role, column in self.fields.items():
            if column not in rec:
                raise ValueError(f"{where}: no column {column!r} (mapped to {role!r} by fields); "
                                 f"the row has {clip(sorted(rec), 200)}")
            out[FIELD_ROLES[role]] = rec[column]
        return out

    def _parse(self, split: str) -> list[Example]:
        rows, seen = [], {}
        for i, (where, rec) in enumerate(read_records(self.paths[split])):
            ex = self.format.parse(self._rename(rec, where), where, self.name, i)
            if ex.id in seen:
                raise ValueError(f"{where}: duplicate id {clip(ex.id)} (first at {seen[ex.id]})")
            seen[ex.id] = where
            rows.append(ex)
        return rows

    def check_disjoint(self) -> None:
        """Every pair of split files shares no problem (mining must never see an evaluation problem).

        Problems are compared by a hash of their question (and options), whitespace and case folded, so a
        re-exported copy of the same file is caught too. Runs once, on the first load of any split.
        """
        if self._checked:
            return
        for split in self.paths:
            self._cache.setdefault(split, self._parse(split))
        hashes = {split: {problem_hash(ex): ex.id for ex in rows} for split, rows in self._cache.items()}
        splits = sorted(hashes)
        for a_i, a in enumerate(splits):
            for b in splits[a_i + 1:]:
                shared = set(hashes[a]) & set(hashes[b])
                if shared:
                    first = hashes[a][min(shared)]
                    raise ValueError(
                        f"task {self.name!r}: {len(shared)} problem(s) of the {a} file {self.paths[a].name!r} "
                        f"also appear in the {b} file {self.paths[b].name!r} (e.g. id {clip(first)}); splits must "
                        "not share problems, so mining never sees an evaluation problem"
                    )
        self._checked = True

    def examples(self, split: str = "eval") -> list[Example]:
        """Every row of `split`'s file, in file order (parsed once)."""
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: unknown split {split!r}; splits are {SPLITS}")
        if split not in self.paths:
            raise ValueError(
                f"task {self.name!r} has no file for split {split!r} (it has {sorted(self.paths)}); "
                f"pass paths={{'eval': ..., {split!r}: ...}}"
            )
        self.check_disjoint()
        return self._cache[split]

    def load(self, split: str = "eval", n: int | None = None, seed: int = 0) -> list[Example]:
        """The rows of `split`; with `n`, a seeded random subset of n rows kept in file order."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be a non-negative integer or None, got {n!r}")
        rows = self.examples(split)
        if n is None or n >= len(rows):
            return list(rows)
        keep = sorted(random.Random(seed).sample(range(len(rows)), n))
        return [rows[i] for i in keep]

    def prompt(self, example: Example) -> str:
        """The user message. Options are listed "(A) text" as the reference does (prompts.py:45–50), always
        lettered A, B, C, ... (the reference lists only options labelled A–E, so ARC's rows labelled 1–4
        would show none; we relabel them)."""
        text = self.template.replace("{question}", example.question)
        if self.kind == "choice":
            fmt = "({k}) {t}" if self.prompt_style == "reference" else "{k}. {t}"
            options = "\n".join(
                fmt.format(k=k, t=t) for k, t in zip(example.meta["letters"], example.meta["choices"], strict=True)
            )
            text = text.replace("{choices}", options)
        return text

    def gold(self, example: Example) -> str:
        """The gold answer the grader compares with: as written for LaTeX answers (math-verify reads the
        original better than our normalised string), else the normalised one."""
        return str(example.meta.get("answer_raw", example.answer)) if self.kind == "latex" else example.answer

    def grade(self, completion: str, example: Example) -> Grade:
        """The verdict with its answer, source and reason (`stir_core.tasks.grade`)."""
        return grade(completion, self.gold(example), self.kind)

    def extract(self, completion: str) -> str | None:
        """The answer read from a completion (numbers canonical, LaTeX normalised), or None."""
        pred, _ = find_answer(completion, self.kind)
        if pred is None:
            return None
        if self.kind == "number":
            return normalize_number(pred) or normalize_number(normalize_latex(pred)) or pred
        return normalize_latex(pred) if self.kind == "latex" else pred

    def score(self, completion: str, example: Example) -> bool:
        """Accuracy and mining labels both come from here."""
        return self.grade(completion, example).correct


for _fmt in FORMATS.values():
    register_task(_fmt.name, partial(FileTask, _fmt))
