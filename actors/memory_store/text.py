"""Text as the memory store compares it: words, search terms, safe FTS5 MATCH expressions,
and whether two lessons say the same."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

MAX_QUERY_TERMS = 32
LESSON_MERGE_JACCARD = 0.8  # word-set overlap at which a new lesson merges into an old one

# Left out of search queries (they match nearly everything and slow BM25 down) and out of
# the word sets that decide whether two lessons are the same. Negations stay in: "never
# push to main" must not merge with "push to main".
STOPWORDS = frozenset(
    """a an and are as at be been by for from has have i in is it its of on or so that the
    their then there these this to was were will with you your we our can could should
    would do does did if when which who what how about into than also just any all""".split()
)

NEGATIONS = frozenset(
    """not no never none nothing nobody nowhere neither nor without avoid stop don dont
    doesn didn isn aren wasn weren won wouldn shouldn couldn cannot mustn t""".split()
)

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-case letter/digit runs: the words of `text` as the store compares them."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    return " ".join(words(text))


def query_terms(text: str, max_terms: int = MAX_QUERY_TERMS) -> list[str]:
    """The distinct words of `text` a search uses: stopwords dropped unless nothing else
    is left, at most `max_terms`."""
    terms = list(dict.fromkeys(words(text)))
    content = [t for t in terms if t not in STOPWORDS]
    return (content or terms)[:max_terms]


def match_expression(terms: Sequence[str], operator: str) -> str:
    """A safe FTS5 MATCH expression: the terms double-quoted (a quote inside doubled,
    though words never hold one) and joined by AND or OR, so operators, parentheses,
    colons and stray quotes in a user's text are plain words or dropped."""
    if operator not in ("AND", "OR"):
        raise ValueError(f"operator must be AND or OR, not {operator!r}")
    return f" {operator} ".join(quote(t) for t in terms)


def quote(term: str) -> str:
    """`term` as one FTS5 string: double-quoted, a quote inside doubled."""
    return '"' + term.replace('"', '""') + '"'


def _stem(word: str) -> str:
    """A crude English stemmer, enough to see "runs the tests" and "running tests" alike."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "zes", "ches", "shes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # running -> run, committed -> commit
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]  # make, makes, making -> mak
    return word


def signature(text: str) -> frozenset[str]:
    """The word set two lessons are compared on: stopwords out, crude stemming."""
    ws = words(text)
    return frozenset(_stem(w) for w in ws if w not in STOPWORDS) or frozenset(ws)


def near_duplicates(a: str, b: str) -> bool:
    """Whether two lessons say the same: word sets overlapping by Jaccard >=
    LESSON_MERGE_JACCARD and the same negations ("never push to main" is not a copy of
    "push to main", however much else they share)."""
    wa, wb = set(words(a)), set(words(b))
    if wa & NEGATIONS != wb & NEGATIONS:
        return False
    return jaccard(signature(a), signature(b)) >= LESSON_MERGE_JACCARD


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def better_text(old: str, new: str) -> str:
    """The more specific of two near-identical lessons: more words wins, a tie the newer."""
    return old if len(words(old)) > len(words(new)) else new
