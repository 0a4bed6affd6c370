"""Who the client is behind reverse proxies: ``--trusted-proxies``. Pure.

A request's forwarding headers (``Forwarded``, ``X-Forwarded-For``,
``X-Forwarded-Host``, ``X-Forwarded-Proto``) are believed only when the peer that
sent them is a trusted proxy. The client is then the first hop, read from the
right, that is not a trusted proxy (every proxy appends the address it got the
request from; a client may write anything on the left). With no trusted proxies
the headers are ignored and the peer is the client — so nobody can claim another
address by sending the header.

The host and scheme the browser used (for the Origin check) come from the
forwarding headers of a trusted proxy, else from ``Host``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    """``10.0.0.0/8, 127.0.0.1`` -> networks. Raises ValueError naming a bad entry."""
    out: list[Network] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {part!r} is not an address or a CIDR network") from None
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in networks)


@dataclass(frozen=True, slots=True)
class Client:
    """The client as this scheduler sees it."""

    #: the address used for limits and logs
    address: str
    #: the request came through a trusted proxy (it carried forwarding headers we believed)
    proxied: bool
    #: the host and scheme the client used (None: not known beyond ``Host``)
    host: str | None
    scheme: str | None


def _forwarded_pairs(value: str) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded``: one dict per element, names lower-cased."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep:
                pairs[name.strip().lower()] = val.strip().strip('"')
        elements.append(pairs)
    return elements


def client_of(peer: str, headers: Mapping[str, str], trusted: tuple[Network, ...]) -> Client:
    """Who sent this request: ``peer`` is the socket's remote address, ``headers`` the
    request's (lower-case names, as Starlette gives them)."""
    host = headers.get("host")
    if not trusted or not _trusted(_address(peer), trusted):
        return Client(peer, False, host, None)
    fwd_host: str | None = None
    fwd_proto: str | None = None
    chain: list[str] = []
    if "forwarded" in headers:
        elements = _forwarded_pairs(headers["forwarded"])
        chain = [e["for"] for e in elements if "for" in e]
        if elements:
            fwd_host = elements[0].get("host")
            fwd_proto = elements[0].get("proto")
    elif "x-forwarded-for" in headers:
        chain = [x.strip() for x in headers["x-forwarded-for"].split(",") if x.strip()]
    if not chain:
        return Client(peer, False, host, None)
    # from the right: the last hop our proxy appended, then further left while trusted
    address = peer
    for hop in reversed(chain):
        ip = _address(hop)
        if ip is None:
            break  # a hop we cannot read (e.g. "unknown"): believe nothing left of it
        address = str(ip)
        if not _trusted(ip, trusted):
            break
    fwd_host = fwd_host or headers.get("x-forwarded-host", "").split(",")[0].strip() or None
    fwd_proto = fwd_proto or headers.get("x-forwarded-proto", "").split(",")[0].strip() or None
    return Client(address, True, fwd_host or host, fwd_proto)
