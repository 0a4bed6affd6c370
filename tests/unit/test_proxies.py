"""Who the client is behind reverse proxies (``scheduler/edge/proxies.py``): pure."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linguamesh.scheduler.edge.proxies import Client, client_of, parse_networks

LB = parse_networks("10.0.0.0/8, 127.0.0.1")


def test_networks_parse_and_a_bad_entry_is_named() -> None:
    assert [str(n) for n in parse_networks(" 10.1.2.3/8 ,::1,")] == ["10.0.0.0/8", "::1/128"]
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match="'nonsense' is not an address"):
        parse_networks("10.0.0.0/8,nonsense")


def test_without_trusted_proxies_the_headers_are_ignored() -> None:
    headers = {"x-forwarded-for": "203.0.113.9", "host": "example.test", "x-forwarded-host": "evil.test"}
    assert client_of("127.0.0.1", headers, ()) == Client("127.0.0.1", False, "example.test", None)
    # a peer that is not one of the trusted proxies cannot claim an address either
    assert client_of("192.0.2.7", headers, LB).address == "192.0.2.7"


def test_through_a_trusted_proxy_the_client_is_the_first_untrusted_hop_from_the_right() -> None:
    headers = {
        # the client wrote "1.2.3.4" itself; the first proxy saw 203.0.113.9; a second, trusted one 10.0.0.2
        "x-forwarded-for": "1.2.3.4, 203.0.113.9, 10.0.0.2",
        "x-forwarded-host": "events.example.org:8443",
        "x-forwarded-proto": "https",
        "host": "10.0.0.5:5010",
    }
    c = client_of("10.0.0.3", headers, LB)
    assert c == Client("203.0.113.9", True, "events.example.org:8443", "https")


def test_the_forwarded_header_and_ipv6() -> None:
    headers = {"forwarded": 'for="[2001:db8::7]:4711";proto=https;host=events.example.org, for=10.0.0.2'}
    c = client_of("127.0.0.1", headers, LB)
    assert c == Client("2001:db8::7", True, "events.example.org", "https")


def test_an_unreadable_hop_stops_the_walk_and_no_header_means_the_peer() -> None:
    assert client_of("10.0.0.1", {"x-forwarded-for": "unknown, 198.51.100.4"}, LB).address == "198.51.100.4"
    assert client_of("10.0.0.1", {"x-forwarded-for": "198.51.100.4, unknown"}, LB).address == "10.0.0.1"
    assert client_of("10.0.0.1", {"host": "h"}, LB) == Client("10.0.0.1", False, "h", None)
    # every hop trusted (the client is on the proxies' own network): the leftmost
    assert client_of("10.0.0.1", {"x-forwarded-for": "10.9.9.9, 10.0.0.2"}, LB).address == "10.9.9.9"


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=6), st.ip_addresses(v=4).map(str))
def test_a_client_cannot_choose_its_address_by_what_it_writes(forged: list[str], real: str) -> None:
    """Whatever the client writes to the left, the address is the one the trusted proxy
    appended (unless that one is itself trusted)."""
    headers = {"x-forwarded-for": ", ".join([*forged, real])}
    c = client_of("127.0.0.1", headers, LB)
    if not any(ipaddress.ip_address(real) in n for n in LB):
        assert c.address == real
