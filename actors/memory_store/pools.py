"""The SQL of recall's two bounded pools (store.py's module doc): one ranked statement
per pool, so the store can run them at once on its two connections.

Ranking is where recall's time goes: FTS5's bm25() first counts, for every query word,
all the memories that hold it (about 20 ns a memory: 6 ms for a word in 300,000 of a
million), then scores each row it returns (about 1 us). Each ranked statement pays that
count again (the AND pool only when it has a match).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .text import match_expression, quote

Statement = tuple[str, dict[str, Any]]

# The first letters of the kind names (records.MEMORY_KINDS). The porter tokenizer only
# rewrites a word's ending, so a word whose stem is a kind name's (fact, lesson, reflect,
# episod) starts with one of these; unicode61 also strips diacritics, so any word with a
# letter outside ASCII counts as maybe one too.
_KIND_STARTS = ("fac", "les", "ref", "epi")


def _may_name_a_kind(term: str) -> bool:
    return not term.isascii() or term.startswith(_KIND_STARTS)


@dataclass(frozen=True, slots=True)
class Pools:
    """The pools of one query: its words, the kinds and origin it is limited to, and how
    many matches each pool holds (`scan_limit`)."""

    terms: Sequence[str]
    kinds: Sequence[str]
    origin: str
    scan_limit: int
    columns: str  # the memory columns each ranked row carries, as m.<column>

    def _expression(self, operator: str) -> str:
        restrict = ""
        if self.kinds:
            names = " OR ".join(quote(k) for k in dict.fromkeys(self.kinds))
            restrict = f" AND kind : ({names})"
        words = match_expression(self.terms, operator)
        if any(_may_name_a_kind(t) for t in self.terms):
            return f"text : ({words}){restrict}"
        # The kind column holds only kind names, so no other word matches it: without
        # `text :`, FTS5 need not read each match's column to count it (bm25's first
        # pass over every memory holding the word: about 15% less time), and the
        # matches and scores are the same.
        return f"({words}){restrict}"

    @property
    def every(self) -> str:
        """The AND pool's MATCH expression (all the words)."""
        return self._expression("AND")

    @property
    def any(self) -> str:
        """The OR pool's MATCH expression (any of the words)."""
        return self._expression("OR")

    def _matches(self, select: str, expression: str) -> str:
        """The newest `:scan` matches of `:every` or `:any` (`expression`), of `:origin`
        only when the pools have an origin."""
        if self.origin:
            return (
                f"SELECT {select} FROM memories_fts JOIN memories AS o"
                f" ON o.id = memories_fts.rowid WHERE memories_fts MATCH :{expression}"
                f" AND o.origin = :origin ORDER BY memories_fts.rowid DESC LIMIT :scan"
            )
        return (
            f"SELECT {select} FROM memories_fts WHERE memories_fts MATCH :{expression}"
            " ORDER BY memories_fts.rowid DESC LIMIT :scan"
        )

    def _parameters(self, count: int) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "every": self.every, "scan": self.scan_limit, "count": count,
        }
        if len(self.terms) > 1:
            parameters["any"] = self.any
        if self.origin:
            parameters["origin"] = self.origin
        return parameters

    def _best(self, matches: str) -> str:
        return (
            f"SELECT {self.columns}, top.r AS rank FROM"
            f" (SELECT id, r FROM ({matches}) ORDER BY r, id LIMIT :count) AS top"
            " JOIN memories AS m ON m.id = top.id"
        )

    def statements(self, count: int) -> list[Statement]:
        """One ranked statement per pool (the AND pool, then the OR pool when the query
        has more than one word), each giving its `count` best by BM25 joined with their
        rows, with their `rank`. They are independent of each other: a memory in both
        pools has the same BM25 in each (the same words are ranked)."""
        ranked = "memories_fts.rowid AS id, memories_fts.rank AS r"
        parameters = self._parameters(count)
        expressions = ("every", "any") if len(self.terms) > 1 else ("every",)
        return [(self._best(self._matches(ranked, e)), parameters) for e in expressions]
