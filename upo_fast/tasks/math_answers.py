"""Final answers of math problems (GSM8K, MATH): find the answer in a completion, normalize its LaTeX, compare.

Standard library only (``re``, ``fractions``), no sympy: rewards are computed for every rollout of a GRPO batch,
so they must be cheap, deterministic and importable anywhere. The comparison is deliberately conservative: two
answers are equal when their normalized strings match, when both are plain numbers of equal value (exact
rational arithmetic, so 0.5 == 1/2 == \\frac{1}{2} but 0.333 != \\frac{1}{3}), or when both are tuples /
intervals / comma lists whose elements are equal. Algebraic equivalence (x+1 vs 1+x) is not attempted.

Nothing here raises on strange text: extraction returns None, normalization returns a string, parsing returns
None, comparison returns False. Only a bad ``style`` argument is a ValueError.
"""

from __future__ import annotations

import re
from fractions import Fraction

STYLES = ("auto", "answer_tag", "boxed", "hash", "last_number")

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Numbers as they appear in prose: 42, -3, 1,200.50, .5, 3/4. Not preceded by a letter/digit/dot so that "x2" or
# the "2" of "1.2" is not taken on its own.
_PROSE_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d+)?(?:/\d+)?")
_DECIMAL = r"(?:\d+(?:\.\d+)?|\.\d+)"


# ------------------------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------------------------


def _braced(text: str, open_index: int) -> tuple[str, int] | None:
    """(content, index after the closing brace) of the group opening at ``text[open_index] == "{"``; None when
    the braces never balance (e.g. a completion cut off inside the box)."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1:i], i + 1
    return None


def _closing_braces(text: str) -> dict[int, int]:
    """{index of "{": index of its matching "}"} for every brace pair of ``text``, in one pass."""
    pairs, opened = {}, []
    for i, ch in enumerate(text):
        if ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            pairs[opened.pop()] = i
    return pairs


def _last_box(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` (the one starting last);
    a box whose braces never close is skipped in favour of the one before it."""
    pairs = None
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            pairs = _closing_braces(text) if pairs is None else pairs  # one pass, however many boxes
            if i in pairs:
                return text[i + 1:pairs[i]]
        else:  # `\boxed 5`: TeX takes the next token as the argument; stop at whitespace or the closing `$`
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def _answer_tag(text: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` (from the last ``<answer>`` before the last
    ``</answer>``); failing that, of a final ``<answer>`` that is never closed (a completion truncated by
    ``gen_length``). Two ``rfind`` calls: a regex over many unclosed tags would take quadratic time."""
    close = text.rfind("</answer>")
    if close >= 0:
        start = text.rfind("<answer>", 0, close)
        if start >= 0:
            return text[start + len("<answer>"):close]
    start = text.rfind("<answer>")
    return text[start + len("<answer>"):] if start >= 0 else None


def _last_number(text: str) -> str | None:
    found = _PROSE_NUMBER.findall(text)
    return found[-1] if found else None


def _nonempty(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text or None


def extract_answer(text: str, style: str = "auto") -> str | None:
    """The final answer written in ``text`` (a completion or a reference solution), stripped; None if none.

    style:
        answer_tag   content of the last ``<answer>...</answer>`` (an unclosed final ``<answer>`` counts)
        boxed        content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled;
                     ``\\boxed 5`` too); a box cut off before its closing brace is skipped
        hash         the rest of the line after the last ``####`` (GSM8K reference solutions)
        last_number  the last number in the text (``1,200.50``, ``-3``, ``3/4``): a lenient fallback, never
                     part of ``auto``
        auto         answer tag (a box inside it wins over the rest of its content), else the last box anywhere,
                     else ``####``; no last-number fallback, so that a rambling completion is not credited
                     with whatever number it happened to end on (``last_number`` is there for that)
    Empty contents count as nothing found.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if not isinstance(text, str):
        return None
    if style == "answer_tag":
        return _nonempty(_answer_tag(text))
    if style == "boxed":
        return _nonempty(_last_box(text))
    if style == "hash":
        if "####" not in text:
            return None
        rest = text.rsplit("####", 1)[1].strip()
        return _nonempty(rest.splitlines()[0]) if rest else None
    if style == "last_number":
        return _last_number(text)
    tag = _nonempty(_answer_tag(text))
    if tag is not None:
        boxed = extract_answer(tag, "boxed")
        return boxed if boxed is not None else tag
    for fallback in ("boxed", "hash"):
        found = extract_answer(text, fallback)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------------------------
# normalization
# ------------------------------------------------------------------------------------------------------------

# Wrappers whose content is the answer: \text{Monday} -> Monday, \boxed{5} inside a tag -> 5.
_WRAPPERS = ("text", "textbf", "textit", "textrm", "textnormal", "mbox", "mathrm", "mathbf", "mathit", "boxed",
             "fbox")
_WRAPPER = re.compile(r"\\(?:" + "|".join(_WRAPPERS) + r")(?![A-Za-z])\s*(?=\{)")
# Units (and counted things) that a reference never carries but a completion often does.
_UNITS = ("dollars?", "cents?", "usd", "euros?", "cm", "mm", "km", "centimeters?", "millimeters?", "kilometers?",
          "meters?", "metres?", "inch(?:es)?", "feet", "foot", "ft", "yards?", "miles?", "mph", "hours?", "hrs?",
          "minutes?", "mins?", "seconds?", "secs?", "days?", "weeks?", "months?", "years?", "units?", "square",
          "sq", "cubic", "degrees?", "pounds?", "lbs?", "ounces?", "oz", "kg", "grams?", "liters?", "litres?",
          "gallons?", "percent")
# a unit may follow a digit directly ("5cm"), but not a letter or a backslash (never the "min" of \min)
_TRAILING_UNITS = re.compile(r"(?:\s*(?<![A-Za-z\\])(?:" + "|".join(_UNITS) + r")(?![A-Za-z])(?:\^\{?[23]\}?)?)+"
                             r"\s*\.?\s*$", re.I)
_TRAILING_WORDS = re.compile(r"\s+[A-Za-z][A-Za-z\s]*\.?$")
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*([^=]+)$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_MAX_LENGTH = 500  # longer "answers" are not answers (see normalize_answer)


def _unwrap(text: str) -> str:
    """Replace every ``\\text{...}``-like wrapper by its content (innermost first is not needed: repeated)."""
    for _ in range(100):  # bound on the number of wrappers; each pass removes one
        match = _WRAPPER.search(text)
        if match is None:
            return text
        group = _braced(text, match.end())
        if group is None:  # unbalanced: drop the command name only
            return text[:match.start()] + text[match.end():]
        text = text[:match.start()] + group[0] + text[group[1]:]
    return text


def _canonical_decimals(text: str) -> str:
    text = re.sub(r"(?<![\w}])\.(?=\d)", "0.", text)  # .5 -> 0.5
    text = re.sub(r"(\d\.\d*?)0+(?!\d)", r"\1", text)  # 2.50 -> 2.5, 3.00 -> 3.
    return re.sub(r"(\d)\.(?!\d)", r"\1", text)  # 3. -> 3 (also a sentence's final period)


def normalize_answer(text: str) -> str:
    """A canonical string for an answer, so that spelling differences vanish before comparison.

    Drops ``$``, ``\\left``/``\\right``, spacing commands (``\\!``, ``\\,``, ``\\;``, ``\\quad``), all whitespace,
    degree marks (``^\\circ``, °), ``\\%``/``%``/"percent" (a percent answer is compared by its number: references
    state "25", completions say "25%"), trailing unit words ("18 dollars", "5\\text{ cm}^2"), other trailing words
    after a plain number ("12 apples"), and a final period; keeps the content of ``\\text{}``/``\\mbox{}``/
    ``\\boxed{}`` wrappers; turns ``\\dfrac``/``\\tfrac`` into ``\\frac``, ``\\frac12`` into ``\\frac{1}{2}``,
    ``\\sqrt2`` into ``\\sqrt{2}``, ``1,000`` / ``1{,}000`` into ``1000``, ``.5`` into ``0.5``, ``2.50`` into
    ``2.5``, ``3.0`` into ``3``, and a simple assignment ``x = 5`` into ``5``. Idempotent.
    """
    if text is None:
        return ""
    s = str(text).strip()
    if len(s) > _MAX_LENGTH:  # not an answer: no LaTeX processing (keeps every pattern below cheap)
        return re.sub(r"\s+", "", s)
    s = s.replace("\u2212", "-").replace("\u00b0", "")  # unicode minus, degree sign
    s = s.replace("\\$", "").replace("$", "")
    s = _unwrap(s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = re.sub(r"\\(?:displaystyle|qquad|quad)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[,;:! ]", "", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    # one-character arguments written without braces, as TeX reads them: \frac12, \frac1{2}, \frac{1}2, \sqrt2
    s = re.sub(r"\\frac\s*([A-Za-z0-9])\s*([A-Za-z0-9])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([A-Za-z0-9])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([A-Za-z0-9])", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*([A-Za-z0-9])", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<=\d)\{,\}(?=\d)", "", s)  # 1{,}000
    s = s.strip()
    assignment = _ASSIGNMENT.match(s)
    if assignment:
        s = assignment.group(1).strip()
    stripped = _TRAILING_UNITS.sub("", s).strip()
    s = stripped or s
    words = _TRAILING_WORDS.search(s)
    if words and _plain_number(_canonical_decimals(s[:words.start()].strip())) is not None:
        s = s[:words.start()].strip()  # "12 apples": a number followed by plain words only
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    s = _canonical_decimals(s)
    if _THOUSANDS.fullmatch(s):
        s = _canonical_decimals(s.replace(",", ""))
    return s


# ------------------------------------------------------------------------------------------------------------
# numbers and comparison
# ------------------------------------------------------------------------------------------------------------


def _plain_number(s: str) -> Fraction | None:
    """A normalized string that is exactly one number (see ``parse_number``), else None."""
    sign = 1
    if s[:1] in "+-" and s:
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    s = _THOUSANDS.fullmatch(s) and s.replace(",", "") or s
    if re.fullmatch(_DECIMAL, s):
        return sign * Fraction(s)
    simple = re.fullmatch(rf"(-?{_DECIMAL})/(-?{_DECIMAL})", s)
    if simple:
        top, bottom = Fraction(simple.group(1)), Fraction(simple.group(2))
        return sign * top / bottom if bottom != 0 else None
    frac = re.fullmatch(rf"(\d+)?\\frac\{{(-?{_DECIMAL})\}}\{{(-?{_DECIMAL})\}}", s)
    if frac:
        whole, top, bottom = frac.group(1), Fraction(frac.group(2)), Fraction(frac.group(3))
        if bottom == 0:
            return None
        if whole is None:
            return sign * top / bottom
        if top < 0 or bottom < 0:  # 2\frac{-1}{2} is not a mixed number anyone writes
            return None
        return sign * (int(whole) + top / bottom)
    return None


def parse_number(text: str) -> Fraction | None:
    """The exact value of an answer that is one number, else None.

    Accepts (after ``normalize_answer``) integers, decimals, signs, thousands separators, ``a/b``,
    ``\\frac{a}{b}`` (any of the spellings normalization unifies) and mixed numbers: an integer written right
    before a fraction, ``2\\frac{1}{2}``, is read as 2 + 1/2 = 5/2, as MATH writes mixed numbers (never as a
    product). A percent sign is dropped, not divided by 100 ("25%" -> 25), matching how references state percent
    answers. Anything else (``\\sqrt{2}``, ``\\pi``, expressions, scientific notation) is None.
    """
    try:
        s = normalize_answer(text)
        return _plain_number(s) if s else None
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):  # e.g. Python's digit limit for int()
        return None


def _split_top_level(s: str) -> list[str] | None:
    """Split on commas that are not inside (), [] or {}; None if a bracket closes that was never opened (the
    outer brackets of "(1)+(2,3)" do not enclose one tuple)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _sequence(s: str) -> tuple[str, list[str]] | None:
    """(kind, elements) of a tuple / interval "(a,b]" (kind = its two brackets, order matters) or a bare comma
    list "a,b" (kind "", order does not matter); None for anything else."""
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        parts = _split_top_level(s[1:-1])
        if parts is not None and len(parts) >= 2:
            return s[0] + s[-1], parts
    parts = _split_top_level(s)
    return ("", parts) if parts is not None and len(parts) >= 2 else None


def _same(a: str, b: str) -> bool:
    """Compare two normalized answers: string match, numeric match, then element by element."""
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = _plain_number(a), _plain_number(b)
    if x is not None and y is not None:
        return x == y
    sa, sb = _sequence(a), _sequence(b)
    if sa is None or sb is None or sa[0] != sb[0] or len(sa[1]) != len(sb[1]):
        return False
    if sa[0]:  # tuple or interval: position by position
        return all(_same(normalize_answer(p), normalize_answer(q)) for p, q in zip(sa[1], sb[1]))
    unmatched = [normalize_answer(q) for q in sb[1]]  # bare list: each element matched once, any order
    for p in sa[1]:
        p = normalize_answer(p)
        hit = next((i for i, q in enumerate(unmatched) if _same(p, q)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return True


def answers_equal(prediction: str | None, reference: str) -> bool:
    """True when ``prediction`` (an extracted answer, or None when nothing was found) matches ``reference``.

    Equal when both normalize to the same string, both are numbers of equal value (0.5 == 1/2 == \\frac{1}{2},
    1,000 == 1000, "$18" == "18 dollars" == 18), or both are tuples/intervals with the same brackets and equal
    elements in order, or bare comma lists with equal elements in any order. None or empty -> False; never raises.
    """
    if prediction is None or reference is None:
        return False
    try:
        return _same(normalize_answer(prediction), normalize_answer(reference))
    except (ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return False
