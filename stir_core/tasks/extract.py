"""Answer extraction and normalisation: pure functions on strings, no task state.

Three answer kinds share one contract: an extractor returns the *normalised* answer (or None), and
`answers_equal(pred, gold, kind)` normalises both sides again (normalisers are idempotent), so a gold
answer stored normalised and a raw one compare the same way.

- "number": `normalize_number` gives one canonical string per rational value: integers without
  decimals ("3.50"→"3.5", "1,000"→"1000", "-0"→"0"); fractions are evaluated exactly and written as a
  terminating decimal when there is one ("1/2"→"0.5", "6/4"→"1.5", "4/2"→"2") else as a reduced
  fraction ("2/6"→"1/3"). Exponents ("1e3") are not numbers here.
- "latex": `normalize_latex` applies the Hendrycks MATH rules (plus units, spacing and rational
  canonicalisation) and answers compare by string equality of the normalised forms.
- "choice": an upper-case option letter.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

KINDS = ("number", "latex", "choice")

# --- numbers ------------------------------------------------------------------------------------

_MINUS = "-\u2212\u2013"  # hyphen-minus, unicode minus, en dash
_SIGN = r"[+\-\u2212\u2013]"
_CORE = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A sign counts only when it does not follow a word or closing character: "10-3" holds 3, not -3.
_NUM_RE = re.compile(rf"(?:(?<![\w)\]}}]){_SIGN})?\\?\$?(?<![\d.])(?:{_CORE})(?:\s*/\s*(?:{_CORE}))?")
_NUMBER_FULL = re.compile(
    rf"(?P<sign>{_SIGN})?\s*\\?\$?\s*(?P<sign2>{_SIGN})?(?P<a>{_CORE})"
    rf"(?:\s*/\s*(?P<b>{_CORE}))?\s*(?:\\?%)?"
)


def _to_fraction(core: str) -> Fraction:
    return Fraction(Decimal(core.replace(",", "")))


def format_fraction(x: Fraction) -> str:
    """Canonical text of a rational: "12", "-3.5", "1/3" (terminating decimals as decimals)."""
    num, den = x.numerator, x.denominator
    if den == 1:
        return str(num)
    twos, fives, d = 0, 0, den
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    k = max(twos, fives)
    if d != 1:  # non-terminating decimal: keep the exact reduced fraction
        return f"{num}/{den}"
    scaled = abs(num) * 10**k // den  # exact: den divides 10**k
    digits = str(scaled).rjust(k + 1, "0")
    text = (digits[:-k] + "." + digits[-k:]).rstrip("0").rstrip(".")
    return ("-" if num < 0 else "") + text


def parse_number(s: str) -> Fraction | None:
    """The exact value of a plain number string ("$1,234.50", "-3", "+2", "50%", "3/4"), else None.

    `%` and `$` are dropped, not interpreted ("50%" is 50). Surrounding whitespace and one trailing
    period (a sentence end) are ignored.
    """
    t = s.strip()
    if t.endswith(".") and not t.endswith(".."):
        t = t[:-1].rstrip()
    m = _NUMBER_FULL.fullmatch(t)
    if m is None or (m["sign"] and m["sign2"]):
        return None
    x = _to_fraction(m["a"])
    if m["b"] is not None:
        den = _to_fraction(m["b"])
        if den == 0:
            return None
        x /= den
    sign = m["sign"] or m["sign2"] or "+"
    return -x if sign in _MINUS else x


def normalize_number(s: str | None) -> str | None:
    """Canonical string of a number (see the module doc), or None when `s` is not a plain number."""
    if s is None:
        return None
    x = parse_number(s)
    return None if x is None else format_fraction(x)


def find_numbers(text: str) -> list[str]:
    """Every number in running text, in order, as written (sign, `$`, commas and `a/b` included)."""
    return [m.group(0) for m in _NUM_RE.finditer(text)]


def last_number(text: str) -> str | None:
    """The normalised last number in `text`, or None."""
    for raw in reversed(find_numbers(text)):
        norm = normalize_number(raw)
        if norm is not None:
            return norm
    return None


# --- "#### answer" --------------------------------------------------------------------------------

_HASH_RE = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*\S)")


def last_hash_answer(text: str) -> str | None:
    """The raw answer after the last `####` marker that has a non-empty answer on its line, or None.
    Exactly four hashes: a `#####` run is not a marker."""
    hits = _HASH_RE.findall(text)
    return hits[-1].strip() if hits else None


def extract_hash_answer(text: str) -> str | None:
    """`last_hash_answer`, else the last number in the text (as written), else None. Not normalised:
    see `extract_number`."""
    if (ans := last_hash_answer(text)) is not None:
        return ans
    nums = find_numbers(text)
    return nums[-1] if nums else None


def extract_number(text: str) -> str | None:
    """The normalised numeric answer, or None.

    The last `####` line decides when it holds a number: its whole answer when that is a number, else
    its first number ("#### $18 per day" gives 18). When it holds none (a markdown heading such as
    "#### Final answer"), or there is no marker, the last number in the text.
    """
    hits = _HASH_RE.findall(text)
    if hits:
        if (norm := normalize_number(hits[-1])) is not None:
            return norm
        for raw in find_numbers(hits[-1]):
            if (norm := normalize_number(raw)) is not None:
                return norm
    return last_number(text)


# --- \boxed{...} ----------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _braced(text: str, i: int) -> tuple[str, int] | None:
    """The content of the brace group opening at text[i] == "{" and the index after it; None if it
    never closes. Escaped braces `\\{ \\}` do not count."""
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (nested braces allowed; the
    `\\boxed 5` form too). A truncated last box is skipped in favour of the last complete one; an
    empty box counts as no answer. Not normalised: see `normalize_latex`."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            got = _braced(text, j)
            content = got[0].strip() if got else ""
        elif j > m.end():  # "\boxed 5": the next token, up to whitespace or `$`
            content = re.match(r"[^\s$]*", text[j:]).group(0)
        else:
            content = ""
        if content:
            return content
    return None


# --- LaTeX normalisation (Hendrycks MATH rules, extended) --------------------------------------------

_LINEBREAK = "\x00"  # stands in for `\\` so that single-backslash rules cannot eat half of it
_SPACING_RE = re.compile(r"\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~")
_UNIT_RE = re.compile(
    r"^(?P<head>.*\S)\s*\\(?:text|textrm|mbox)\s*\{[^{}]*\}\s*(?:\^\s*\{?\s*\d\s*\}?)?$", re.S
)
_UNWRAP_RE = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|°|\\degree(?![a-zA-Z])")
_FRAC_RE = re.compile(r"(?P<sign>-?)\\frac\{(?P<a>[^{}]+)\}\{(?P<b>[^{}]+)\}")


def _fix_args(s: str, cmd: str, nargs: int) -> str:
    """Brace single-character arguments: `\\frac12`→`\\frac{1}{2}`, `\\frac1b`, `\\sqrt3`→`\\sqrt{3}`
    (recursively inside brace groups). A letter right after the command makes it another command."""
    out, i = [], 0
    while (k := s.find(cmd, i)) >= 0:
        j = k + len(cmd)
        out.append(s[i:j])
        if j < len(s) and s[j].isalpha():
            i = j
            continue
        for _ in range(nargs):
            if j < len(s) and s[j] == "{" and (got := _braced(s, j)) is not None:
                out.append("{" + _fix_args(got[0], cmd, nargs) + "}")
                j = got[1]
            elif j < len(s) and s[j].isalnum():
                out.append("{" + s[j] + "}")
                j += 1
            else:
                break
        i = j
    out.append(s[i:])
    return "".join(out)


def _latex_rational(s: str) -> Fraction | None:
    """The value of a whole string that is a plain rational: "12", "-0.50", "3/4", "10,000",
    "\\frac{3}{4}", "-\\frac{1}{2}", "\\frac{-1}{2}"; else None."""
    m = _FRAC_RE.fullmatch(s)
    if m is None:
        return parse_number(s) if "\\" not in s else None
    a, b = parse_number(m["a"]), parse_number(m["b"])
    if a is None or b is None or b == 0:
        return None
    return -a / b if m["sign"] else a / b


def normalize_latex(s: str | None) -> str | None:
    """Normalise a MATH-style answer so that equal answers compare equal as strings. Idempotent.

    Rules (Hendrycks MATH `strip_string`, plus a few): drop `$`, `\\(` `\\)` `\\[` `\\]`, newlines,
    spacing commands (`\\! \\, \\; \\: \\quad ~`), `\\displaystyle`, `\\left`/`\\right`;
    `\\dfrac`/`\\tfrac`→`\\frac`; drop degrees (`^\\circ`, `^{\\circ}`, `°`) and `%`; drop a trailing
    `\\text{...}`/`\\mbox{...}` unit (optionally `^2`) after a non-empty answer, then unwrap the remaining
    `\\text{X}`-like commands to `X`; drop all whitespace and trailing periods; `k=5`→`5` when the left
    side has at most two characters; brace single-character `\\frac`/`\\sqrt` arguments; `.5`→`0.5`;
    finally a whole answer that is a plain rational (`0.5`, `\\frac12`, `1/2`, `10,\\!000`) becomes
    `normalize_number`'s canonical form, so `0.5`, `\\frac{1}{2}` and `\\frac12` all give "0.5".
    """
    if s is None:
        return None
    t = s.replace("\\\\", _LINEBREAK).replace("\n", " ").replace("\\$", "").replace("$", "")
    t = re.sub(r"\\[()\[\]]", "", t)
    t = _SPACING_RE.sub(" ", t)
    t = re.sub(r"\\displaystyle(?![a-zA-Z])", "", t)
    t = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", t)
    t = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", t)
    t = _DEGREE_RE.sub("", t).replace("\\%", "").replace("%", "")
    while (m := _UNIT_RE.match(t)) is not None:
        t = m["head"]
    while (new := _UNWRAP_RE.sub(r"\1", t)) != t:
        t = new
    t = re.sub(r"\s+", "", t).rstrip(".")
    if t.count("=") == 1 and len(t.split("=")[0]) <= 2:
        t = t.split("=")[1]
    t = _fix_args(_fix_args(t, "\\sqrt", 1), "\\frac", 2)
    t = re.sub(r"(^|[-{(\[,])\.(\d)", r"\g<1>0.\2", t)
    x = _latex_rational(t)
    return format_fraction(x) if x is not None else t.replace(_LINEBREAK, "\\\\")


# --- multiple choice ------------------------------------------------------------------------------


def extract_choice(text: str, letters: str = "ABCDE") -> str | None:
    """The chosen option letter (upper case), or None.

    Rule, first that applies:
    1. the last `#### <letter>` (also `#### (C)`, `#### C. text`, `#### c`);
    2. the last `\\boxed{<letter>}` (also `\\boxed{\\text{(C)}}`);
    3. the last standalone capital letter from `letters`: not inside a word, and when it is a bare "A"
       followed by a space and a lower-case word ("A train leaves...") it is read as the article and
       skipped, unless it is bracketed like "(A)". So "The answer is (B)." gives B, and "B. A train"
       gives B. A bare "A is correct" is missed by design.
    """
    if not letters:
        raise ValueError("extract_choice: `letters` is empty")
    cls = "[" + re.escape(letters.upper()) + "]"
    either = "[" + re.escape(letters.upper() + letters.lower()) + "]"
    hits = re.findall(rf"(?<!#)####(?!#)[ \t]*[(\[]?({either})(?![A-Za-z0-9])", text)
    if hits:
        return hits[-1].upper()
    boxed = extract_boxed(text)
    if boxed is not None:
        m = re.fullmatch(rf"[(\[]?({either})[)\].]?", normalize_latex(boxed) or "")
        if m:
            return m.group(1).upper()
    last = None
    for m in re.finditer(rf"(?<![A-Za-z0-9'_\\-])({cls})(?![A-Za-z0-9_'\u2019-])", text):
        bracketed = m.start() > 0 and text[m.start() - 1] in "([{"
        if m.group(1) == "A" and not bracketed and re.match(r"[ \t]+[a-z]", text[m.end() :]):
            continue
        last = m.group(1)
    return last


# --- comparison -------------------------------------------------------------------------------------


def normalize(answer: str | None, kind: str) -> str | None:
    """Normalise an answer of `kind` ("number", "latex" or "choice")."""
    if kind == "number":
        return normalize_number(answer)
    if kind == "latex":
        return normalize_latex(answer)
    if kind == "choice":
        if answer is None:
            return None
        m = re.fullmatch(r"\s*[(\[]?\s*([A-Za-z])\s*[)\]]?\.?\s*", answer)
        return m.group(1).upper() if m else None
    raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")


def answers_equal(pred: str | None, gold: str | None, kind: str) -> bool:
    """True when `pred` and `gold` are the same answer of `kind`. A missing or unparsable side is
    never equal (None never equals None)."""
    p, g = normalize(pred, kind), normalize(gold, kind)
    return p is not None and g is not None and p != "" and p == g
