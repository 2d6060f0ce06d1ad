"""Answer extraction and normalisation on realistic gold answers and model completions."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from stir_core.tasks.extract import (
    answers_equal,
    extract_boxed,
    extract_choice,
    extract_hash_answer,
    extract_number,
    find_numbers,
    normalize_latex,
    normalize_number,
)

# --- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,234", "1234"),
        ("1,450,000", "1450000"),
        ("-10", "-10"),
        ("\u22123", "-3"),  # unicode minus
        ("+5", "5"),
        ("3.50", "3.5"),
        ("3.5", "3.5"),
        ("18.00", "18"),
        ("$1,234.50", "1234.5"),
        ("\\$18", "18"),
        ("-$5", "-5"),
        ("50%", "50"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("007", "7"),
        (".5", "0.5"),
        ("12.", "12"),  # a sentence-ending period
        ("1/2", "0.5"),
        ("6/4", "1.5"),
        ("4/2", "2"),
        ("2/6", "1/3"),
        ("-1/3", "-1/3"),
    ],
)
def test_normalize_number(text, value):
    assert normalize_number(text) == value


@pytest.mark.parametrize("text", ["abc", "1,2", "1e3", "3/0", "+-3", "", "12 apples", "1.2.3"])
def test_normalize_number_rejects_non_numbers(text):
    assert normalize_number(text) is None


def test_normalize_number_matches_exact_arithmetic():
    """Random values written in several styles normalise to one string that parses back to the value."""
    rng = random.Random(0)
    for _ in range(300):
        x = Fraction(rng.randint(-(10**7), 10**7), 10 ** rng.randint(0, 4))
        styles = [
            f"{float(x):,.4f}",
            f"{float(x):.6f}",
            f"${float(x):,.4f}" if x >= 0 else f"-${float(-x):,.4f}",
        ]
        norms = {normalize_number(s) for s in styles}
        assert len(norms) == 1, (x, styles, norms)
        (norm,) = norms
        assert Fraction(norm) == x
        assert not (("." in norm and norm.endswith("0")) or norm.endswith(".") or norm == "-0")
    for _ in range(200):
        a, b = rng.randint(-500, 500), rng.randint(1, 60)
        k = rng.randint(1, 9)
        assert normalize_number(f"{a}/{b}") == normalize_number(f"{a * k}/{b * k}")
        assert Fraction(normalize_number(f"{a}/{b}")) == Fraction(a, b)


def test_find_numbers_reads_signs_only_where_they_are_signs():
    text = "He had 10-3 = 7 apples, then -4 and $1,200.50 and 3/4 of (1,2,3); x=-.5"
    assert find_numbers(text) == ["10", "3", "7", "-4", "$1,200.50", "3/4", "1", "2", "3", "-.5"]


# --- "#### answer" --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, value",
    [
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n\nShe makes 9 * 2 = $18.\n\n#### 18", "18"),
        ("The total is 1,000 + 234 = 1,234 dollars.\n\n#### 1,234", "1234"),
        ("The average is -30/3 = -10 degrees.\n\n#### -10", "-10"),
        ("Each costs 7 / 2 = 3.5 dollars.\n\n#### 3.50", "3.5"),
        ("#### 5\n\nWait, let me redo that.\n\n#### 6", "6"),  # the last marker wins
        ("#### $18 per day", "18"),  # first number on the marker line
        ("So she makes 9 * 2 = 18 dollars. The answer is 18.", "18"),  # no marker: last number
        ("#### Final answer\n\nShe makes 9 * 2 = 18", "18"),  # a heading, not an answer
        ("It costs 2 - 5 = -3 dollars", "-3"),
    ],
)
def test_extract_number(completion, value):
    assert extract_number(completion) == value


def test_extract_number_without_any_number():
    assert extract_number("I do not know.") is None
    assert extract_hash_answer("I do not know.") is None


def test_extract_hash_answer_is_raw():
    assert extract_hash_answer("so\n#### 1,234\n") == "1,234"
    assert extract_hash_answer("so 3 and then 4,500.") == "4,500"
    assert extract_hash_answer("#### 1\n#####\n") == "1"  # five hashes are not a marker


# --- \boxed{...} ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, content",
    [
        ("So $\\sin 60^\\circ = \\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("The angle is $\\boxed{10^\\circ}$.", "10^\\circ"),
        ("First \\boxed{4}, but actually \\boxed{5}.", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\fbox{x^{2^{3}}}", "x^{2^{3}}"),
        ("$\\boxed 7$", "7"),
        ("\\boxed{3} then a truncated \\boxed{\\frac{1", "3"),  # an unclosed box is skipped
    ],
)
def test_extract_boxed(completion, content):
    assert extract_boxed(completion) == content


def test_extract_boxed_none():
    assert extract_boxed("no box here") is None
    assert extract_boxed("\\boxed{}") is None
    assert extract_boxed("\\boxedfoo{3}") is None


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\frac{1}{2}", "\\frac12"),
        ("0.5", "\\frac12"),
        ("\\dfrac{1}{2}", ".5"),
        ("\\tfrac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
        ("10^\\circ", "10"),
        ("10^{\\circ}", "10"),
        ("5\\text{ cm}^2", "5"),
        ("\\$18.90", "18.9"),
        ("50\\%", "50"),
        ("10,\\!000", "10000"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("k = 5", "5"),
        ("\\text{(C)}", "(C)"),
        ("-\\frac{1}{3}", "\\frac{-2}{6}"),
        ("x \\in [1, 2].", "x\\in[1,2]"),
        ("\\frac{\\frac12}{3}", "\\frac{\\frac{1}{2}}{3}"),
    ],
)
def test_latex_equivalents(a, b):
    assert normalize_latex(a) == normalize_latex(b)
    assert answers_equal(a, b, "latex")


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\frac{1}{3}", "0.33"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}"),
        ("(3,\\frac{\\pi}{2})", "(3,\\pi)"),
        ("\\text{(C)}", "\\text{(B)}"),
        ("x \\rightarrow 2", "x2"),  # \right inside \rightarrow is not a delimiter
    ],
)
def test_latex_different(a, b):
    assert not answers_equal(a, b, "latex")


def test_normalize_latex_is_idempotent():
    samples = [
        "\\frac12",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "5\\text{ cm}^2",
        "\\text{Monday}",
        "x \\rightarrow 2",
        "\\sqrt[3]{8}",
        "(.5, 2)",
        "-\\frac{1}{3}",
        "y = 2x+3",
        "\\frac\\pi2",
        "\\mbox{ inches}",
        "10,\\!000",
    ]
    for s in samples:
        once = normalize_latex(s)
        assert normalize_latex(once) == once, s


def test_latex_keeps_line_breaks_whole():
    # `\\` in a matrix must not be read as a spacing command `\ `
    assert (
        normalize_latex("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}") == "\\begin{pmatrix}1\\\\2\\end{pmatrix}"
    )


# --- multiple choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, letter",
    [
        ("Plants take in carbon dioxide.\n\n#### C", "C"),
        ("#### (d)", "D"),
        ("#### B. wind", "B"),
        ("The answer is (B).", "B"),
        ("Wind is renewable, so B. A tree also grows back.", "B"),  # "A tree": an article
        ("I considered (A) first, but the answer is D", "D"),
        ("It is option A.", "A"),
        ("(A) is right", "A"),
        ("\\boxed{\\text{(E)}}", "E"),
        ("#### A\n\nA check: yes, B looks wrong.", "A"),  # the marker beats later letters
        ("It's A's answer: C", "C"),  # "A's" is a word
    ],
)
def test_extract_choice(completion, letter):
    assert extract_choice(completion) == letter


def test_extract_choice_none_and_letters():
    assert extract_choice("I am not sure.") is None
    assert extract_choice("A car is faster than a bike.") is None
    assert extract_choice("The answer is E", letters="ABCD") is None
    with pytest.raises(ValueError, match="letters"):
        extract_choice("A", letters="")


def test_answers_equal_kinds():
    assert answers_equal("1,234", "1234", "number")
    assert answers_equal("3.50", "$3.5", "number")
    assert not answers_equal("3.51", "3.5", "number")
    assert not answers_equal(None, None, "number")
    assert answers_equal("(b)", "B", "choice")
    assert not answers_equal("C", "B", "choice")
    assert not answers_equal("", "", "latex")
    with pytest.raises(ValueError, match="kind"):
        answers_equal("1", "1", "integer")
