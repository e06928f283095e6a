"""Cutting a stream of LLM text deltas into speakable sentences and clauses as they arrive."""

from __future__ import annotations

import re

_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n+")
_ABBREVIATIONS = frozenset({"mr", "ms", "mrs", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "approx"})
_CLAUSE = re.compile(r"[,;:—–](?=\s)")


class SentenceSplitter:
    """Feed text deltas, get whole sentences back as soon as they are complete.

    The first piece of a reply may be cut at a clause boundary (a comma after ``first_clause_chars`` characters)
    so that the first audio starts sooner; later pieces are whole sentences, or clauses once a sentence grows past
    ``max_chars``.
    """

    def __init__(self, first_clause_chars: int = 24, max_chars: int = 220) -> None:
        self.first_clause_chars = first_clause_chars
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the sentences it completed."""
        self._buffer += delta
        out: list[str] = []
        while True:
            piece = self._cut()
            if piece is None:
                return out
            if piece.strip():
                out.append(piece.strip())
                self._emitted += 1

    def flush(self) -> list[str]:
        """The rest of the text once the stream has ended."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    def _cut(self) -> str | None:
        for match in _END.finditer(self._buffer):
            before = self._buffer[: match.start()].split()
            word = before[-1].lower() if before else ""
            if match.group().startswith(".") and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
                continue
            return self._take(match.end())
        limit = self.first_clause_chars if self._emitted == 0 else self.max_chars
        if len(self._buffer) >= limit:
            clauses = [m.end() for m in _CLAUSE.finditer(self._buffer) if m.end() >= min(limit, 12)]
            if clauses:
                return self._take(clauses[0])
        return None

    def _take(self, end: int) -> str:
        piece, self._buffer = self._buffer[:end], self._buffer[end:].lstrip()
        return piece
