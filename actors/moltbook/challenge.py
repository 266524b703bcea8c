"""A deterministic solver of Moltbook's verification challenges.

Documented (SKILL.md 1.11, "AI Verification Challenges"): "an obfuscated math problem
with two numbers and one operation (+, -, *, /)", "lobster + physics themed, with
alternating caps, scattered symbols, and shattered words"; the answer is the number with
two decimals ("15.00"). The documented example:

    "A] lO^bSt-Er S[wImS aT/ tW]eNn-Tyy mE^tE[rS aNd] SlO/wS bY^ fI[vE"
    -> a lobster swims at twenty meters and slows by five -> 20 - 5 = 15.00

Observed in the wild as well: letters doubled ("ThIrRtY", "LooObSsTtErR"), words split by
a space ("tW o", "lO-bS tErS"), filler words ("um"), a bare operator between the two
numbers ("* nInE", "+~ fOuRtEeEn").

How it reads one:
1. Tokens are split on whitespace; a token of symbols only is kept as a possible operator,
   the others lose every character but letters and digits and are lowercased.
2. Number words are found in runs of up to four adjacent tokens joined (shattered words),
   compared with every letter run collapsed to one letter ("tWeNnTyy" -> "twenty",
   "fOuRtEeEn" -> "fourten", as "fourteen" collapses), longest run first; digits count too.
   Adjacent number words make one number ("twenty three" -> 23, "one hundred and five").
3. The operands are the two numbers; when there are more, the two followed by a unit
   ("newtons", "meters", ...); otherwise the challenge is not understood.
4. The operation: a bare operator token between the operands; else a verb: multiply
   ("multiplies", "times"), divide ("divided", "split"), subtract ("slows", "loses",
   "decreases", "minus", ...), add ("increases", "gains", "plus", ...), in that order when
   several kinds appear; else a product quantity ("power" = force x velocity) multiplies;
   else a word that hints at a sum ("total", "sum", "combined") adds.

Anything it cannot read raises Unsolvable rather than guessing a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The multiplication and division signs by code point (ruff flags the first as an "x").
OPERATORS = {"+": "+", "-": "-", "*": "*", "\u00d7": "*", "/": "/", "\u00f7": "/"}
MAX_JOIN = 4  # tokens one shattered word may span

_UNITS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
          "seven": 7, "eight": 8, "nine": 9}
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
          "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
         "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000}

# The words that name the operation, strongest first: verbs (several kinds: multiply,
# then divide, then subtract, then add), then physics quantities that are products
# (power = force x velocity), then words that only hint at a sum.
_VERBS: dict[str, tuple[str, ...]] = {
    "*": ("multiply", "multiplies", "multiplied", "multiplying", "times", "product"),
    "/": ("divide", "divides", "divided", "dividing", "split", "splits", "ratio",
          "quotient"),
    "-": ("slows", "slowed", "slow", "loses", "lose", "lost", "decreases", "decrease",
          "decreased", "reduces", "reduced", "minus", "subtract", "subtracts",
          "subtracted", "drops", "dropped", "remaining", "remains", "fewer", "less",
          "difference", "retreats", "weakens"),
    "+": ("increases", "increase", "increased", "gains", "gain", "gained", "adds", "add",
          "added", "plus", "accelerates", "speeds", "grows"),
}
_PRODUCTS = ("power", "torque", "momentum")
_WEAK_ADD = ("total", "sum", "combined", "together", "altogether", "more", "another")
_PRIORITY = ("*", "/", "-", "+")
_FILLERS = frozenset({"um", "uh", "uhm", "hm", "er", "erm"})  # "thirty um five" is 35
_UNIT_WORDS = ("newton", "noton", "nuton", "meter", "metre", "centimeter", "kilometer",
               "second", "minute", "kilogram", "gram", "joule", "watt", "degre", "liter",
               "litre", "mile", "knot", "pascal", "volt", "amp", "hertz", "kg", "cm", "km")


class Unsolvable(Exception):
    """The challenge was not understood; no answer is sent for it."""


def collapse(word: str) -> str:
    """`word` with every run of one letter made one letter: "tWeNnTyy" -> "twenty"."""
    return re.sub(r"(.)\1+", r"\1", word)


def _table() -> dict[str, tuple[str, int]]:
    table: dict[str, tuple[str, int]] = {}
    for kind, words in (("unit", _UNITS), ("teen", _TEENS), ("tens", _TENS),
                        ("scale", _SCALES)):
        for word, value in words.items():
            table[collapse(word)] = (kind, value)
    table[collapse("point")] = ("point", 0)
    return table


_NUMBER_WORDS = _table()
_OPERATIONS = {collapse(w): op for op, words in _VERBS.items() for w in words}
_PRODUCT_WORDS = {collapse(w) for w in _PRODUCTS}
_WEAK = {collapse(w) for w in _WEAK_ADD}
_UNIT_STEMS = tuple(collapse(w) for w in _UNIT_WORDS)


@dataclass(frozen=True)
class _Word:
    text: str  # letters and digits, lowercased
    index: int  # its token's position


@dataclass
class _Number:
    value: float
    start: int  # token positions it spans
    end: int


def solve(challenge: str) -> str:
    """The answer to `challenge` as Moltbook wants it: a number with two decimals."""
    tokens = challenge.split()
    words: list[_Word] = []
    symbols: dict[int, str] = {}
    for index, token in enumerate(tokens):
        text = re.sub(r"[^a-z0-9]", "", token.lower())
        if text:
            words.append(_Word(text, index))
        else:
            ops = {OPERATORS[c] for c in token if c in OPERATORS}
            if len(ops) == 1:
                symbols[index] = ops.pop()
    numbers = _numbers(words)
    first, second = _operands(numbers, words)
    operation = _operation(words, symbols, first, second)
    if operation == "+":
        result = first.value + second.value
    elif operation == "-":
        result = first.value - second.value
    elif operation == "*":
        result = first.value * second.value
    else:
        if second.value == 0:
            raise Unsolvable("it divides by zero")
        result = first.value / second.value
    return f"{result:.2f}"


@dataclass
class _Entry:
    kind: str  # unit, teen, tens, scale, point, digits, or other (not a number word)
    value: float
    start: int  # the positions of the tokens it spans
    end: int
    text: str


def _numbers(words: list[_Word]) -> list[_Number]:
    """The numbers in `words`, in order: number words (joined across shattered tokens)
    and runs of digits."""
    entries: list[_Entry] = []
    position = 0
    while position < len(words):
        word = words[position]
        if word.text.isdigit():
            entries.append(_Entry("digits", float(word.text), word.index, word.index,
                                  word.text))
            position += 1
            continue
        for span in range(min(MAX_JOIN, len(words) - position), 0, -1):
            joined = collapse("".join(w.text for w in words[position:position + span]))
            if joined in _NUMBER_WORDS:
                kind, value = _NUMBER_WORDS[joined]
                entries.append(_Entry(kind, value, word.index,
                                      words[position + span - 1].index, joined))
                position += span
                break
        else:
            entries.append(_Entry("other", 0, word.index, word.index, word.text))
            position += 1
    return _assemble(entries)


def _assemble(entries: list[_Entry]) -> list[_Number]:
    """Adjacent number words made numbers: "twenty three" 23, "one hundred and five"
    105, "three point five" 3.5; "five twenty" is two numbers."""
    numbers: list[_Number] = []
    current: _Number | None = None
    last = ""  # the kind of the word before, within the current number
    decimals = 0  # digits after "point" so far
    for position, entry in enumerate(entries):
        following = entries[position + 1] if position + 1 < len(entries) else None
        if entry.kind == "other":
            if collapse(entry.text) in _FILLERS or (
                    current is not None and last == "scale" and entry.text == "and"
                    and following is not None and following.kind in ("unit", "teen", "tens")):
                continue
            current, last, decimals = None, "", 0
        elif entry.kind == "digits":
            numbers.append(_Number(entry.value, entry.start, entry.end))
            current, last, decimals = None, "", 0
        elif entry.kind == "point":
            if current is not None and not decimals and following is not None \
                    and following.kind == "unit":
                decimals, last = 1, "point"
            else:
                current, last, decimals = None, "", 0
        elif decimals:
            if current is not None and entry.kind == "unit":
                decimals += 1
                current.value += entry.value / 10 ** (decimals - 1)
                current.end = entry.end
            else:
                current = _Number(entry.value, entry.start, entry.end)
                numbers.append(current)
                last, decimals = entry.kind, 0
        elif current is not None and (
                entry.kind == "scale"
                or (entry.kind in ("unit", "teen") and last in ("tens", "scale"))
                or (entry.kind == "tens" and last == "scale")):
            if entry.kind == "scale":
                current.value = (current.value or 1) * entry.value
            else:
                current.value += entry.value
            current.end = entry.end
            last = entry.kind
        else:
            current = _Number(entry.value, entry.start, entry.end)
            numbers.append(current)
            last = entry.kind
    return numbers


def _operands(numbers: list[_Number], words: list[_Word]) -> tuple[_Number, _Number]:
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    if len(numbers) < 2:
        raise Unsolvable(f"it names {len(numbers)} number(s), not two")
    meaningful = [w for w in words if collapse(w.text) not in _FILLERS]
    after: dict[int, str] = {}  # what follows each token: the next words, joined
    for position, word in enumerate(meaningful):
        after[word.index] = collapse("".join(w.text for w in meaningful[position + 1:
                                                                         position + 4]))
    with_units = [n for n in numbers
                  if after.get(n.end, "").startswith(_UNIT_STEMS)]
    if len(with_units) == 2:
        return with_units[0], with_units[1]
    raise Unsolvable(f"it names {len(numbers)} numbers and {len(with_units)} with a unit")


def _operation(words: list[_Word], symbols: dict[int, str], first: _Number,
               second: _Number) -> str:
    between = {op for index, op in symbols.items() if first.end < index < second.start}
    if len(between) == 1:
        return between.pop()
    verbs: set[str] = set()
    product = weak = False
    for position in range(len(words)):
        for span in range(1, min(3, len(words) - position) + 1):
            joined = collapse("".join(w.text for w in words[position:position + span]))
            if joined in _OPERATIONS:
                verbs.add(_OPERATIONS[joined])
            product = product or joined in _PRODUCT_WORDS
            weak = weak or joined in _WEAK
    for operation in _PRIORITY:
        if operation in verbs:
            return operation
    if product:
        return "*"
    if weak:
        return "+"
    raise Unsolvable("no operation found in it")
