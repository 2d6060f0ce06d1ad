"""The planted-mode task: chained single-digit ± operations mod 10 with two planted failure modes.

A problem is a start digit and 4-5 operations, e.g. `3+4-1+6-2`. A worked solution takes one operation per
segment (segments end with "\\n\\n") and ends with `#### d`. Every step is a table lookup, so a trained model
makes (almost) no in-step slips; its errors come from the *form* it picks at each boundary, and the first
characters after a delimiter decide the form:

    plain     `7-1=6`            restate the running total, apply one operation
    recheck   `chk 6, 6+3=9`     the same with an explicit check that restates the total
    slip      `chk 7, 7-2=5`     a check whose restated total is miscopied (written as total+1 mod 10)
    shortcut  `4+6-3=3`          two operations merged, the second with its sign flipped (always wrong here)

The writer that generates training traces plants two failure modes, each with a harmless stochastic
precursor one boundary before the damage (so rollouts of one problem differ at the damage boundary):

    mode A: after an easy ±1 step (op i) it rechecks at boundary A1 (p_recheck_a); after that recheck it
            checks again at A2 and slips (p_slip_a). Sound correction at A2: "as if I had not rechecked"
            (then it writes a plain step).
    mode B: after a hard ±9 step (op i) it skips the check at B1 (p_skip_b); after skipping it merges the
            next two operations wrongly at B2 (p_merge_b). Sound correction at B2: "as if I had checked"
            (then it checks again, correctly, p_recheck_b).

The two modes are mirror images on purpose: at the damage boundary the sound form of one mode starts like
the failure form of the other (a digit vs `chk`), so the right corrections point in opposite directions.
Elsewhere it writes plain segments with occasional harmless rechecks (never two in a row). Digits 1 and 9
occur only as planted triggers, and each problem has at most one trigger, placed so that its damage
boundary exists. Boundary classes are indexed by the next operation: `classes[j-1]` is the class of the
boundary before operation j (`start`, `none`, `A1`, `A2`, `B1`, `B2`), and `classes[n]` is `end`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from stir_core.tasks import register_task
from stir_core.tasks.base import SPLITS, Example
from stir_core.tasks.extract import extract_number

DELIM = "\n\n"
FORMS = ("plain", "recheck", "slip", "shortcut", "final", "other")
CLASSES = ("start", "none", "A1", "A2", "B1", "B2", "end")
NEUTRAL_DIGITS = tuple(range(2, 9))  # 1 and 9 are reserved for the triggers
DEFAULT_SIZES = {"train": 20000, "mine": 500, "val": 300, "eval": 600}
_SPLIT_BOUNDS = {"train": (0, 80), "mine": (80, 90), "val": (90, 95), "eval": (95, 100)}  # of hash % 100

_RE_PLAIN = re.compile(r"(\d)([+-])(\d)=(\d+)")
_RE_CHECK = re.compile(r"chk (\d), (\d)([+-])(\d)=(\d+)")
_RE_SHORT = re.compile(r"(\d)([+-])(\d)([+-])(\d)=(\d+)")
_RE_FINAL = re.compile(r"#### (\d+)")


@dataclass(frozen=True, kw_only=True)
class Planting:
    """The writer's probabilities (the recipe's mode strengths)."""

    p_mode_a: float = 0.22  # share of problems with a mode-A trigger
    p_mode_b: float = 0.22  # share with a mode-B trigger
    p_recheck_a: float = 0.75  # A1: recheck after an easy ±1 step (precursor)
    p_slip_a: float = 0.9  # A2: slip right after that recheck (damage)
    p_skip_b: float = 0.75  # B1: skip the check after a hard ±9 step (precursor)
    p_merge_b: float = 0.9  # B2: wrong merge right after skipping (damage)
    p_recheck_b: float = 0.9  # B2: a second (correct) check right after the B1 check (the sound path)
    p_background_recheck: float = 0.1  # harmless recheck at neutral boundaries

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"Planting.{k} must be a probability, got {v}")
        if self.p_mode_a + self.p_mode_b > 1.0:
            raise ValueError("Planting.p_mode_a + p_mode_b must be <= 1")


@dataclass(frozen=True)
class TraceSegment:
    """One generated segment with the ground truth the writer used."""

    text: str
    form: str
    boundary: str


@dataclass(frozen=True, kw_only=True)
class SegmentInfo:
    """One parsed segment of a completion.

    `ok`: the step is right given the writer's own last total and the question (the local error flag).
    `correct`: the running total after this segment equals the true one.
    """

    index: int
    text: str
    form: str
    boundary: str
    ops: tuple[int, ...]
    ok: bool
    correct: bool


def apply_op(total: int, sign: str, digit: int) -> int:
    return (total + digit) % 10 if sign == "+" else (total - digit) % 10


def _flip(sign: str) -> str:
    return "-" if sign == "+" else "+"


def split_of(key: str) -> str:
    """The split a problem belongs to, from a stable hash of its question (so splits are disjoint)."""
    h = int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16) % 100
    return next(s for s, (lo, hi) in _SPLIT_BOUNDS.items() if lo <= h < hi)


# Generated tasks draw at most this many problems per call: beyond it the draw loop (up to 200 draws a
# problem) runs for minutes before it can even tell whether the task has that many distinct problems.
MAX_GENERATED = 1_000_000


def split_share(split: str) -> float:
    """The fraction of all questions that hash into `split`."""
    if split not in _SPLIT_BOUNDS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    lo, hi = _SPLIT_BOUNDS[split]
    return (hi - lo) / 100


def split_capacity(split: str, n_questions: int) -> int:
    """An upper bound on the distinct problems of `split` among `n_questions` distinct questions: the
    split's hash share with 10% slack (the hash spreads questions evenly; a few % off at these counts)."""
    return min(MAX_GENERATED, int(n_questions * split_share(split) * 1.1) + 100)


def draw_split(split: str, n: int | None, rng_seed: str, key_prefix: str,
               draw: Callable[[random.Random], Example], capacity: int | None = None) -> list[Example]:
    """`n` distinct problems from `draw` that hash into `split` (so splits never share a question).
    `capacity`: at most this many exist in the split (default `MAX_GENERATED`); a larger `n` is refused
    at once instead of after 200·n draws."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    n = DEFAULT_SIZES[split] if n is None else n
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cap = MAX_GENERATED if capacity is None else capacity
    if n > cap:
        raise ValueError(f"asked for {n} distinct {split!r} problems; this task can produce at most about "
                         f"{cap} in that split (lower --n / n_problems)")
    rng = random.Random(rng_seed)
    seen: set[str] = set()
    out: list[Example] = []
    for _ in range(200 * n + 1000):
        if len(out) >= n:
            break
        ex = draw(rng)
        if ex.question in seen or split_of(key_prefix + ex.question) != split:
            continue
        seen.add(ex.question)
        out.append(ex)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} distinct {split!r} problems, asked for {n}")
    return out


def boundary_classes(n_ops: int, mode: str | None, trigger: int | None) -> list[str]:
    """Class of the boundary before each operation 1..n, then `end`."""
    classes = ["start"] + ["none"] * (n_ops - 1) + ["end"]
    if mode is not None and trigger is not None:
        classes[trigger] = f"{mode}1"
        classes[trigger + 1] = f"{mode}2"
    return classes


def favoured_forms(classes: list[str]) -> list[str]:
    """The form the writer most often produces at each boundary on its most likely path."""
    table = {
        "start": "plain",
        "none": "plain",
        "A1": "recheck",
        "A2": "slip",
        "B1": "plain",
        "B2": "shortcut",
    }
    return [table.get(c, "final") for c in classes]


class PlantedTask:
    """The planted-mode testbed task (see the module docstring)."""

    name = "planted"
    delimiter = DELIM

    def __init__(self, planting: Planting | None = None) -> None:
        self.planting = planting or Planting()

    # --- problems -------------------------------------------------------------------------------------
    def _sample_problem(
        self, rng: random.Random
    ) -> tuple[int, list[tuple[str, int]], str | None, int | None]:
        pl = self.planting
        n = rng.choice((4, 5))
        u = rng.random()
        mode = "A" if u < pl.p_mode_a else "B" if u < pl.p_mode_a + pl.p_mode_b else None
        ops = [(rng.choice("+-"), rng.choice(NEUTRAL_DIGITS)) for _ in range(n)]
        trigger = None
        if mode == "A":
            trigger = rng.randint(1, n - 2)  # room for precursor (op i+1) and damage (op i+2)
            ops[trigger - 1] = (rng.choice("+-"), 1)
        elif mode == "B":
            trigger = rng.randint(1, n - 3)  # the damage merges ops i+2 and i+3
            ops[trigger - 1] = (rng.choice("+-"), 9)
            if ops[trigger + 2][1] == 5:  # flipping the sign of ±5 is harmless mod 10: keep the merge wrong
                ops[trigger + 2] = (ops[trigger + 2][0], rng.choice((2, 3, 4, 6, 7, 8)))
        return rng.randrange(10), ops, mode, trigger

    def make_example(self, start: int, ops: list[tuple[str, int]]) -> Example:
        """The example for a start digit and operations (mode and trigger inferred from digits 1 and 9)."""
        if not 0 <= start <= 9 or not ops or any(s not in "+-" or not 1 <= d <= 9 for s, d in ops):
            raise ValueError(f"bad planted problem: start={start!r} ops={ops!r}")
        triggers = [(i + 1, "A" if d == 1 else "B") for i, (_, d) in enumerate(ops) if d in (1, 9)]
        if len(triggers) > 1:
            raise ValueError(f"a planted problem has at most one trigger digit (1 or 9), got ops={ops!r}")
        trigger, mode = triggers[0] if triggers else (None, None)
        n = len(ops)
        if trigger is not None and trigger > n - (2 if mode == "A" else 3):
            raise ValueError(f"trigger at op {trigger} leaves no room for its damage boundary (n_ops={n})")
        question = f"{start}" + "".join(f"{s}{d}" for s, d in ops)
        totals = [start]
        for s, d in ops:
            totals.append(apply_op(totals[-1], s, d))
        classes = boundary_classes(n, mode, trigger)
        gold = [f"{totals[j]}{s}{d}={totals[j + 1]}" for j, (s, d) in enumerate(ops)] + [f"#### {totals[-1]}"]
        digest = hashlib.blake2b(question.encode(), digest_size=5).hexdigest()
        meta = {
            "start": start,
            "ops": [[s, d] for s, d in ops],
            "totals": totals,
            "mode": mode,
            "trigger": trigger,
            "classes": classes,
            "favoured": favoured_forms(classes),
        }
        return Example(id=f"planted-{digest}", question=question, answer=str(totals[-1]),
                       solution=DELIM.join(gold), meta=meta)

    def load(self, split: str = "eval", n: int | None = None, seed: int = 0) -> list[Example]:
        """Up to `n` distinct problems of `split` (default size per split: DEFAULT_SIZES), seeded."""
        return draw_split(split, n, f"planted/{split}/{seed}", "",
                          lambda rng: self.make_example(*self._sample_problem(rng)[:2]),
                          capacity=self.capacity(split))

    @staticmethod
    def capacity(split: str) -> int:
        """An upper bound on the distinct problems of `split`: 4 or 5 operations of ±(2..8), at most one of
        them a trigger ±1 or ±9, from 10 start digits, times the split's share."""
        questions = 10 * sum(14**k + k * 4 * 14 ** (k - 1) for k in (4, 5))
        return split_capacity(split, questions)

    # --- text -----------------------------------------------------------------------------------------
    def prompt(self, example: Example) -> str:
        return f"mod10 {example.question}\n"

    def extract(self, completion: str) -> str | None:
        return extract_number(completion)  # `#### d`, else the last number (the project's rule)

    def score(self, completion: str, example: Example) -> bool:
        return self.extract(completion) == example.answer

    # --- the writer -----------------------------------------------------------------------------------
    def sample_trace(self, example: Example, rng: random.Random) -> list[TraceSegment]:
        """A completion drawn from the planted training distribution, with each segment's form and class."""
        pl, ops, classes = self.planting, example.meta["ops"], example.meta["classes"]
        n, w, j, prev = len(ops), example.meta["start"], 1, None
        out: list[TraceSegment] = []
        while j <= n:
            cls = classes[j - 1]
            if cls == "start" or classes[j] in ("A1", "B1"):
                form = "plain"  # the first segment and the trigger step itself are always plain
            elif cls == "A1":
                form = "recheck" if rng.random() < pl.p_recheck_a else "plain"
            elif cls == "A2" and prev == "recheck":
                form = "slip" if rng.random() < pl.p_slip_a else "plain"
            elif cls == "B1":
                form = "plain" if rng.random() < pl.p_skip_b else "recheck"
            elif cls == "B2" and prev == "plain":
                form = "shortcut" if rng.random() < pl.p_merge_b else "plain"
            elif cls == "B2":
                form = "recheck" if rng.random() < pl.p_recheck_b else "plain"
            elif prev == "recheck":
                form = "plain"
            else:
                form = "recheck" if rng.random() < pl.p_background_recheck else "plain"
            (s, d), step = ops[j - 1], 1
            if form == "plain":
                text, w = f"{w}{s}{d}={apply_op(w, s, d)}", apply_op(w, s, d)
            elif form == "recheck":
                text, w = f"chk {w}, {w}{s}{d}={apply_op(w, s, d)}", apply_op(w, s, d)
            elif form == "slip":
                a = (w + 1) % 10
                text, w = f"chk {a}, {a}{s}{d}={apply_op(a, s, d)}", apply_op(a, s, d)
            else:  # shortcut: the second sign flipped
                s2, d2 = ops[j]
                wrong = apply_op(apply_op(w, s, d), _flip(s2), d2)
                text, w, step = f"{w}{s}{d}{s2}{d2}={wrong}", wrong, 2
            out.append(TraceSegment(text, form, cls))
            prev, j = form, j + step
        out.append(TraceSegment(f"#### {w}", "final", "end"))
        return out

    def sample_completion(self, example: Example, rng: random.Random) -> str:
        return DELIM.join(seg.text for seg in self.sample_trace(example, rng))

    # --- ground-truth analysis ------------------------------------------------------------------------
    def parse(self, example: Example, completion: str) -> list[SegmentInfo]:
        """Each segment's form, boundary class and correctness (forms relative to the writer's own total)."""
        ops, totals, classes = example.meta["ops"], example.meta["totals"], example.meta["classes"]
        n, w, j = len(ops), example.meta["start"], 1
        out: list[SegmentInfo] = []
        pieces = completion.split(DELIM)
        if len(pieces) > 1 and pieces[-1] == "":
            pieces.pop()  # the empty tail after a trailing delimiter
        for k, text in enumerate(pieces, start=1):
            cls = classes[min(j, n + 1) - 1]
            used: tuple[int, ...] = ()
            if m := _RE_FINAL.fullmatch(text):
                form, ok = "final", j > n and int(m.group(1)) == w
            elif (m := _RE_CHECK.fullmatch(text)) or (m := _RE_PLAIN.fullmatch(text)):
                g = m.groups()
                if len(g) == 5:
                    restated, (a, s, d, r) = int(g[0]), (int(g[1]), g[2], int(g[3]), int(g[4]))
                    form = "recheck" if restated == w == a else "slip"
                else:
                    a, s, d, r = int(g[0]), g[1], int(g[2]), int(g[3])
                    form = "plain" if a == w else "slip"
                ok = form != "slip" and j <= n and (s, d) == tuple(ops[j - 1]) and r == apply_op(a, s, d)
                used, w, j = (j,), r, j + 1
            elif m := _RE_SHORT.fullmatch(text):
                a, s1, d1, s2, d2, r = (int(m[1]), m[2], int(m[3]), m[4], int(m[5]), int(m[6]))
                form = "shortcut"
                ops_ok = j + 1 <= n and [(s1, d1), (s2, d2)] == [tuple(o) for o in ops[j - 1 : j + 1]]
                ok = ops_ok and a == w and r == apply_op(apply_op(a, s1, d1), s2, d2)
                used, w, j = (j, j + 1), r, j + 2
            else:
                form, ok = "other", False
            done = min(j - 1, n)
            correct = (form == "final" and ok) or (form != "final" and form != "other" and w == totals[done])
            out.append(SegmentInfo(index=k, text=text, form=form, boundary=cls, ops=used, ok=ok,
                                   correct=correct))
        return out

    def boundary_of(self, example: Example, prefix: str) -> str:
        """The class of the boundary at the end of a completion prefix (the one before the next operation)."""
        pieces = prefix.split(DELIM)[:-1]  # complete segments only
        j = 1 + sum(len(seg.ops) for seg in self.parse(example, DELIM.join(pieces))) if pieces else 1
        return example.meta["classes"][min(j, len(example.meta["ops"]) + 1) - 1]

    def attribute_error(self, example: Example, completion: str) -> str | None:
        """`None` when correct; else "A"/"B" when the first wrong step is that mode's damage; else "other"."""
        if self.score(completion, example):
            return None
        for seg in self.parse(example, completion):
            if not seg.ok:
                if seg.form == "slip" and seg.boundary == "A2":
                    return "A"
                if seg.form == "shortcut" and seg.boundary == "B2":
                    return "B"
                return "other"
        return "other"

    def check_prefix(self, example: Example, prefix: str) -> bool:
        """True while `prefix` (a completion prefix) can still be continued into a fully correct solution."""
        *complete, partial = prefix.split(DELIM)
        ops, totals = example.meta["ops"], example.meta["totals"]
        n, j = len(ops), 1
        segs = self.parse(example, DELIM.join(complete)) if complete else []
        for seg in segs:
            if not seg.ok:
                return False
            if seg.form == "final":  # nothing may follow the answer
                return seg is segs[-1] and partial == ""
            j += len(seg.ops)
        t = totals[j - 1]
        if j > n:
            candidates = [f"#### {t}"]
        else:
            s, d = ops[j - 1]
            r = apply_op(t, s, d)
            candidates = [f"{t}{s}{d}={r}{DELIM}", f"chk {t}, {t}{s}{d}={r}{DELIM}"]
            if j < n:
                s2, d2 = ops[j]
                candidates.append(f"{t}{s}{d}{s2}{d2}={apply_op(r, s2, d2)}{DELIM}")
        return any(c.startswith(partial) for c in candidates)


register_task("planted", PlantedTask)
