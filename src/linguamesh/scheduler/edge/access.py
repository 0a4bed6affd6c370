"""Who may read operator data over HTTP.

On loopback everything is open (the operator is on the machine), unless the request
came through a trusted proxy (``--trusted-proxies``: its client is elsewhere). Bound elsewhere,
the operator routes — ``/admin``'s data, ``/api/v1/nodes``, ``/api/v1/pools``,
``/api/v1/jobs/{id}`` and ``/metrics`` (unless ``--metrics-public``) — need
an operator token (``Authorization: Bearer …`` or ``?token=``) from ``--operator-token``
or ``--operator-token-file`` (one token per line, each accepted: a new one is added, the
file reloaded with SIGHUP, then the old one removed); with no token configured they are
off. Open to all: ``/healthz``, ``/readyz``,
``/api/v1/languages`` (the speaker page offers the servable pairs from it) and the
viewer routes, which check the session's view token themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import is_loopback
from ..tokens import same_token

Handler = Callable[[Request], Awaitable[Response]]


def operator_access(
    bind_host: str, configured: str | tuple[str, ...] | None, given: str | None, proxied: bool = False
) -> tuple[int, str] | None:
    """None when allowed, else (HTTP status, message). Open on loopback unless a token is
    set — but not for a request a trusted proxy forwarded: its client is elsewhere. Any
    of several configured tokens is accepted (rotation); each is compared in constant time."""
    accepted = (configured,) if isinstance(configured, str) else (configured or ())
    if not accepted:
        if is_loopback(bind_host) and not proxied:
            return None
        return 403, "operator data is off: start the scheduler with --operator-token or --operator-token-file"
    # every token is compared, so the time taken does not say which one came close
    matches = [same_token(given or "", token) for token in accepted]
    if not any(matches):
        return 401, "operator token missing or wrong"
    return None


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def denied(request: Request) -> Response | None:
    """The refusal for a request to an operator route, or None when it may go on."""
    sched = request.app.state.scheduler
    config = sched.config
    given = request.query_params.get("token") or bearer(request)
    peer = request.client.host if request.client is not None else "unknown"
    proxied = sched.admission.client(peer, request.headers).proxied
    refused = operator_access(config.host, sched.operator_tokens, given, proxied)
    return None if refused is None else error(refused[0], "unauthorized", refused[1])


def operator_only(handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        return denied(request) or await handler(request)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded
