"""Secrets compared in constant time (resume, view, room, operator and node tokens)."""

from __future__ import annotations

import hmac


def same_token(a: str, b: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())
