"""The grader on a table of completions written the way real models answer, each with its verdict, the
reason and where the answer was read. Extraction order is the reference's (stir/eval/extractors.py:82–139);
equivalence is math-verify's. Rows marked "reference:" note where the authors' grader decides otherwise."""

from __future__ import annotations

import threading

import pytest

from stir_core.tasks import get_task
from stir_core.tasks.base import Example
from stir_core.tasks.grade import Source, Why, find_answer, grade

B, H, L, INL, LL, LN, LT, N = (Source.BOXED, Source.HASH, Source.ANSWER_LINE, Source.ANSWER_INLINE,
                             Source.LAST_LINE, Source.LAST_NUMBER, Source.LAST_LETTER, Source.NONE)
EQ, VAL, TXT, DIFF, NONE, UNREAD = (Why.EQUIVALENT, Why.SAME_VALUE, Why.SAME_TEXT, Why.DIFFERENT, Why.NO_ANSWER,
                                    Why.UNREADABLE)

# (completion, gold, kind, correct, why, source)
CASES = [
    # --- MATH-style (latex): the cases -------------------------------------------------------
    ("So $AB = \\boxed{2\\sqrt{3}}$.", "\\sqrt{12}", "latex", True, EQ, B),
    ("The polynomial is $\\boxed{x+1}$.", "1+x", "latex", True, EQ, B),
    ("Expanding gives $\\boxed{x^2+2x+1}$.", "(x+1)^2", "latex", True, EQ, B),
    ("We add the two parts.\n\nFinal answer: 12", "12", "latex", True, TXT, L),
    ("Dividing, the probability is 3/4. So the final answer is 3/4.", "\\frac{3}{4}", "latex", True, TXT, INL),
    ("Counting the cases again, the answer is 7", "7", "latex", True, TXT, INL),
    # the reference's false positive: its normaliser reads 2\pi as "2" (normalize.py:355, 376-379)
    ("The circumference is $\\boxed{2\\pi}$.", "2", "latex", False, DIFF, B),
    ("The circumference is $\\boxed{2\\pi}$.", "2\\pi", "latex", True, TXT, B),
    # --- MATH-style: equivalence ----------------------------------------------------------------------
    ("$\\boxed{\\dfrac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}", "latex", True, TXT, B),
    ("$\\boxed{\\frac{1}{\\sqrt{2}}}$", "\\frac{\\sqrt{2}}{2}", "latex", True, EQ, B),
    ("$\\boxed{0.5}$", "\\frac{1}{2}", "latex", True, TXT, B),
    ("$\\boxed{\\frac12}$", "\\frac{1}{2}", "latex", True, TXT, B),
    ("The angle is $\\boxed{30^\\circ}$.", "30", "latex", True, TXT, B),
    ("$\\boxed{x=5}$", "5", "latex", True, TXT, B),
    ("$\\boxed{10\\%}$", "10", "latex", True, TXT, B),
    ("$\\boxed{5\\text{ cm}}$", "5", "latex", True, TXT, B),
    ("$\\boxed{(3, \\frac{\\pi}{2})}$", "\\left( 3, \\frac{\\pi}{2} \\right)", "latex", True, TXT, B),
    ("The solutions are $\\boxed{2, -3}$.", "-3, 2", "latex", True, EQ, B),
    ("$\\boxed{[1, 2)}$", "[1,2]", "latex", False, DIFF, B),
    ("$\\boxed{(-\\infty, 3)}$", "(-\\infty,3)", "latex", True, TXT, B),
    ("$\\boxed{\\{1, 2\\}}$", "\\{2, 1\\}", "latex", True, EQ, B),
    ("$\\boxed{e^{2}}$", "e^2", "latex", True, EQ, B),
    ("$\\boxed{2\\sqrt{2}}$", "\\sqrt{8}", "latex", True, EQ, B),
    ("$\\boxed{\\sqrt{2}}$", "\\sqrt{3}", "latex", False, DIFF, B),
    ("$\\boxed{\\frac{2}{4}}$", "\\frac{1}{2}", "latex", True, TXT, B),
    ("$\\boxed{3x^2 - 6x}$", "3x(x-2)", "latex", True, EQ, B),
    ("$\\boxed{\\frac{x+1}{x-1}}$", "\\frac{x-1}{x+1}", "latex", False, DIFF, B),
    ("$\\boxed{y = 2x + 3}$", "y=2x+3", "latex", True, TXT, B),
    ("I think it is $\\boxed{4}$. Wait, recount: $\\boxed{5}$.", "5", "latex", True, TXT, B),
    ("**Final Answer**\n\n$\\frac{7}{2}$", "3.5", "latex", True, TXT, L),
    ("**Final Answer:** $\\frac{7}{2}$", "\\frac72", "latex", True, TXT, L),
    ("Answer: $x = -1$", "-1", "latex", True, TXT, L),
    ("The answer is $\\sqrt{5}$, which is irrational.", "\\sqrt5", "latex", True, TXT, INL),
    ("Therefore the answer is 12 apples.", "12", "latex", True, EQ, INL),
    ("Thus $n = 8$.\n\n#### 8", "8", "latex", True, TXT, H),
    ("The value is\n\n$\\frac{5}{6}$", "\\frac{5}{6}", "latex", True, TXT, LL),
    ("The value is\n\n$\\frac{5}{6}$", "\\frac{1}{6}", "latex", False, DIFF, LL),
    ("I could not finish the problem.", "4", "latex", False, DIFF, LL),
    ("", "4", "latex", False, NONE, N),
    # --- numeric tasks (gsm8k, svamp, aime, amc) -----------------------------------------------------
    ("16 - 3 - 4 = 9 eggs.\n\n9 * 2 = 18 dollars.\n\n#### 18", "18", "number", True, VAL, H),
    ("She makes $18.00 a day.\n\n#### $18.00", "18", "number", True, VAL, H),
    ("Total: 1,450,000.\n\n#### 1,450,000", "1450000", "number", True, VAL, H),
    ("9 * 2 = 18\n\n#### 19", "18", "number", False, DIFF, H),
    ("The final answer is 3/4.", "0.75", "number", True, VAL, INL),
    ("Final answer: 12", "12", "number", True, VAL, L),
    ("Counting carefully, the answer is 7", "7", "number", True, VAL, INL),
    ("So she has 5 apples left.", "5", "number", True, VAL, LN),
    ("So she has 5 apples left.", "6", "number", False, DIFF, LN),
    ("The count is $\\boxed{042}$.", "42", "number", True, VAL, B),
    ("Summing gives $\\boxed{\\frac{3}{4}}$.", "0.75", "number", True, VAL, B),
    ("m + n = 73 + 68 = 141, so $\\boxed{141}$.", "141", "number", True, VAL, B),
    ("$3 \\cdot 47 = \\boxed{141}$", "140", "number", False, DIFF, B),
    ("The remainder is $\\boxed{-1}$.", "-1", "number", True, VAL, B),
    ("The answer is $\\boxed{2\\pi}$.", "2", "number", False, DIFF, B),
    ("The answer is $\\boxed{\\text{none}}$.", "2", "number", False, UNREAD, B),
    ("The answer is $\\boxed{\\sqrt{4}}$.", "2", "number", True, EQ, B),
    ("It costs 2.50 dollars.\n\n#### 2.5", "2.5", "number", True, VAL, H),
    ("The answer is -3.", "-3", "number", True, VAL, INL),
    ("So the answer is 7 apples and 3 pears.", "7", "number", True, VAL, INL),
    ("The final answer is 3/4 of the cake.", "0.75", "number", True, VAL, INL),
    ("I cannot tell.", "3", "number", False, NONE, N),
    # --- multiple choice ----------------------------------------------------------------------------
    ("Plants take in carbon dioxide.\n\n#### C", "C", "choice", True, TXT, H),
    ("Day and night come from rotation.\n\n#### (B)", "B", "choice", True, TXT, H),
    ("The answer is (B).", "B", "choice", True, TXT, INL),
    ("The answer is B.", "C", "choice", False, DIFF, INL),
    ("So the correct option is D: a magnet.", "D", "choice", True, TXT, INL),
    ("**Answer:** C", "C", "choice", True, TXT, INL),
    ("Therefore, $\\boxed{B}$.", "B", "choice", True, TXT, B),
    ("$\\boxed{\\text{(A)}}$", "A", "choice", True, TXT, B),
    ("B) Earth spinning on its axis", "B", "choice", True, TXT, LT),
    ("Mass is measured in grams, option C. A scale works.", "C", "choice", True, TXT, LT),
    ("A train moves steadily, so none of these hold.", "A", "choice", False, NONE, N),
    # --- yes / no (StrategyQA) ----------------------------------------------------------------------
    ("Aristotle died before laptops were invented.\n\n#### No", "No", "yesno", True, TXT, H),
    ("#### yes", "Yes", "yesno", True, TXT, H),
    ("So the answer is no.", "No", "yesno", True, TXT, INL),
    ("Answer: Yes", "No", "yesno", False, DIFF, L),
    ("$\\boxed{\\text{Yes}}$", "Yes", "yesno", True, TXT, B),
    ("Maybe, it depends.", "Yes", "yesno", False, NONE, N),
]


def _id(case):
    return f"{case[2]}:{case[0][:40]!r}->{case[1]}"


def test_the_table_is_big_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_each_verdict_reason_and_source(case):
    completion, gold, kind, correct, why, source = case
    g = grade(completion, gold, kind)
    assert (g.correct, g.why, g.source) == (correct, why, source), g


def test_off_the_main_thread_gives_the_same_verdicts():
    """math-verify's timeouts use signal.alarm (main thread only): a background thread goes through the
    helper process and must agree with the main thread on every row that needs algebra."""
    rows = [c for c in CASES if c[4] == EQ or c[0].startswith("$\\boxed{\\sqrt{2}}")]
    assert len(rows) >= 8
    got: list = []
    worker = threading.Thread(target=lambda: got.extend(grade(c[0], c[1], c[2]) for c in rows))
    worker.start()
    worker.join()
    assert [(g.correct, g.why) for g in got] == [(c[3], c[4]) for c in rows]


def test_reference_order_boxed_before_answer_line_before_hash():
    text = "Answer: 3\n\n#### 4\n\n$\\boxed{5}$"
    assert find_answer(text, "latex") == ("5", B)
    assert find_answer("Answer: 3\n\n#### 4", "latex") == ("3", L)
    assert find_answer("Answer: 3\n\n#### 4", "number") == ("4", H)  # numeric tasks: #### first (extractors.py:82)


def test_file_tasks_score_through_the_grader_and_mining_uses_it():
    """`task.score` (accuracy) and mining's labels (`mine.gold_reward`, `sample_rollouts`) both call
    `grade`: a gold solution that ends "the answer is 7" without a box is a correct, positive text."""
    from stir_core.config import MineConfig
    from stir_core.offline.mine import gold_reward

    task = get_task("math500", paths={"eval": _write_math(tmpdir := _tmp())})
    ex = Example(id="x", question="q", answer="7", solution="Adding, the answer is 7", meta={"answer_raw": "7"})
    assert task.score("Adding, the answer is 7", ex) and task.grade("Adding, the answer is 7", ex).why == TXT
    cfg = MineConfig(max_new_tokens=100, eta0=0.01)
    assert gold_reward(task, ex, 10, cfg) == pytest.approx(1.0 - 0.01 * 10 / 100)
    bad = Example(id="y", question="q", answer="7", solution="so it is $\\boxed{2\\pi}$", meta={"answer_raw": "7"})
    assert gold_reward(task, bad, 10, cfg) == pytest.approx(0.0 - 0.01 * 10 / 100)
    tmpdir.cleanup()


def _tmp():
    import tempfile

    return tempfile.TemporaryDirectory()


def _write_math(tmpdir) -> str:
    from pathlib import Path

    p = Path(tmpdir.name) / "m.jsonl"
    p.write_text('{"problem": "What is 3 + 4?", "answer": "7"}\n')
    return str(p)
