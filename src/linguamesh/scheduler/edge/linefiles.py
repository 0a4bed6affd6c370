"""Operator files of one entry per line (node tokens, API keys): ``#`` starts a comment."""

from __future__ import annotations

from collections.abc import Iterator


def entries(text: str) -> Iterator[tuple[int, list[str]]]:
    """Each line that holds an entry: its number (from 1) and its whitespace-separated fields."""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield n, line.split()
