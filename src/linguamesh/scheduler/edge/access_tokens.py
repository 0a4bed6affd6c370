"""API keys and access tokens: who may speak and who may watch.

The operator's backend holds an API key (``KEY_ID SECRET``) and mints short-lived access
tokens — JWTs signed HS256 with the key's secret — for its speakers and viewers; the
scheduler only verifies them (PyJWT). Claims: ``iss`` the key id (required), ``sub`` the
identity, ``exp`` (required), ``nbf`` (optional), and ``grants``::

    {"speak": bool, "view": bool, "room": "<the only room it may use>", "langs": ["en", ...]}

The keys file (``--api-keys``): one key per line, ``KEY_ID SECRET [name=value ...]``,
``#`` comments; per-key options ``max_sessions``, ``audio_seconds_per_hour``,
``max_targets``. It is read again on SIGHUP (and ``POST /api/v1/admin/reload``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from .linefiles import entries

#: The only algorithm accepted (``alg: none`` and every other one are refused).
ALGORITHMS = ["HS256"]
#: Seconds of clock skew allowed on ``exp`` and ``nbf``.
LEEWAY = 30
OPTIONS = ("max_sessions", "audio_seconds_per_hour", "max_targets")


class TokenError(Exception):
    """A token that does not admit its bearer; the message says why (never the secret)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    secret: str
    options: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Grants:
    speak: bool = False
    view: bool = False
    room: str | None = None
    langs: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class AccessToken:
    key: ApiKey
    identity: str
    grants: Grants


class ApiKeys:
    def __init__(self, keys: dict[str, ApiKey], path: str | None = None) -> None:
        self.keys = keys
        self.path = path

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @classmethod
    def load(cls, path: str | None) -> ApiKeys:
        """Read a keys file (none: tokens are not required). Raises ValueError naming the
        line of a bad entry."""
        if path is None:
            return cls({}, None)
        keys: dict[str, ApiKey] = {}
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"--api-keys {path}: {exc.strerror or exc}") from None
        for n, parts in entries(text):
            if len(parts) < 2:
                raise ValueError(f"--api-keys {path}, line {n}: expected `KEY_ID SECRET [name=value ...]`")
            key_id, secret, *rest = parts
            if len(secret) < 32:  # RFC 7518: an HS256 key of at least 256 bits
                raise ValueError(
                    f"--api-keys {path}, line {n}: the secret of {key_id!r} is shorter than 32 characters"
                )
            options: dict[str, int] = {}
            for opt in rest:
                name, _, value = opt.partition("=")
                if name not in OPTIONS or not value.isdigit():
                    known = ", ".join(OPTIONS)
                    raise ValueError(
                        f"--api-keys {path}, line {n}: bad option {opt!r} (known: {known}; whole numbers)"
                    )
                options[name] = int(value)
            if key_id in keys:
                raise ValueError(f"--api-keys {path}, line {n}: key {key_id!r} appears twice")
            keys[key_id] = ApiKey(key_id, secret, options)
        if not keys:
            raise ValueError(f"--api-keys {path}: no key in the file")
        return cls(keys, path)

    def verify(self, token: str, now: float | None = None) -> AccessToken:
        """The token's key, identity and grants; TokenError when it does not hold."""
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenError(f"not a valid token ({exc})") from None
        kid = unverified.get("iss")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("the token's key (iss) is not known here")
        try:
            claims = jwt.decode(
                token,
                key.secret,
                algorithms=ALGORITHMS,
                issuer=key.key_id,
                leeway=LEEWAY,
                options={"require": ["exp", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the token is not valid yet (nbf)") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token does not verify ({exc})") from None
        raw = claims.get("grants") or {}
        if not isinstance(raw, dict):
            raise TokenError("`grants` must be an object")
        langs = raw.get("langs")
        grants = Grants(
            speak=raw.get("speak") is True,
            view=raw.get("view") is True,
            room=raw["room"] if isinstance(raw.get("room"), str) else None,
            langs=frozenset(str(x) for x in langs) if isinstance(langs, list) else None,
        )
        return AccessToken(key, str(claims.get("sub") or ""), grants)


def mint(key: ApiKey, identity: str, grants: dict[str, Any], ttl: float, now: float | None = None) -> str:
    """A token for ``identity`` with ``grants``, valid ``ttl`` seconds (what an operator's
    backend does; here for ``linguamesh token`` and the docs' example)."""
    issued = int(now if now is not None else time.time())
    claims = {"iss": key.key_id, "sub": identity, "iat": issued, "exp": issued + int(ttl), "grants": grants}
    return jwt.encode(claims, key.secret, algorithm="HS256")
