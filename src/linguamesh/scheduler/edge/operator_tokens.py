"""The operator tokens: ``--operator-token`` and each line of ``--operator-token-file``."""

from __future__ import annotations

from pathlib import Path

from .linefiles import entries


def operator_tokens(flag: str | None, path: str | None) -> tuple[str, ...]:
    """Every token accepted (a file may list several: a rotation adds the new one beside
    the old). ValueError names the file's line at fault."""
    tokens = [flag] if flag else []
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--operator-token-file {path}: {exc.strerror or exc}") from None
        found = 0
        for n, parts in entries(text):
            if len(parts) != 1 or len(parts[0]) < 16:
                raise ValueError(
                    f"--operator-token-file {path}, line {n}: expected one token of 16+ characters"
                )
            tokens.append(parts[0])
            found += 1
        if not found:
            raise ValueError(f"--operator-token-file {path}: no token in the file")
    return tuple(tokens)
