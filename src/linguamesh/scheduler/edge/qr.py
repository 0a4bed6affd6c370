"""``GET /api/v1/qr.svg?link=…`` — a QR code of a viewer link, for the organiser to show.

The speaker page passes the link it shows (its own origin: behind a proxy the page knows
the address people use, the scheduler may not). Only viewer links of this scheduler's
pages are drawn (``http(s)://…/view/…``, at most ``MAX_LINK`` characters), so this is not a
general QR service. Drawn by segno (pure Python, no image library), as SVG: sharp at any
size on a projector.
"""

from __future__ import annotations

import io
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from .access import error

MAX_LINK = 512


def viewer_link_problem(link: str) -> str | None:
    """Why ``link`` is not a viewer link this endpoint draws (None: it is)."""
    if not link:
        return "query parameter `link` is missing"
    if len(link) > MAX_LINK:
        return f"`link` is longer than {MAX_LINK} characters"
    try:
        parts = urlsplit(link)
    except ValueError:
        return "`link` is not a URL"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "`link` must be an http:// or https:// address"
    if not parts.path.startswith("/view/"):
        return "`link` must be a viewer link (/view/…)"
    return None


async def qr_svg(request: Request) -> Response:
    import segno

    link = request.query_params.get("link", "")
    problem = viewer_link_problem(link)
    if problem is not None:
        return error(400, "bad_message", problem)
    out = io.BytesIO()
    # error correction M: a link still reads with part of the code covered or blurred
    segno.make_qr(link, error="m").save(
        out, kind="svg", scale=8, border=2, title="QR code of the viewer link"
    )
    return Response(
        out.getvalue(),
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
