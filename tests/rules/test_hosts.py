"""Host normalisation: one spelling per destination, whatever the client wrote."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.rules.hosts import host_kind, normalise_host, parse_ipv4, split_host_port


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("api.gretel.cloud", "api.gretel.cloud"),
        ("API.Gretel.CLOUD", "api.gretel.cloud"),
        ("api.gretel.cloud.", "api.gretel.cloud"),
        ("  api.gretel.cloud  ", "api.gretel.cloud"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("\uff21\uff30\uff29.gretel.cloud", "api.gretel.cloud"),  # full-width letters, as nameprep maps them
        ("api\u3002gretel\u3002cloud", "api.gretel.cloud"),  # ideographic full stops are dots in IDNA
        ("127.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.258", "10.1.1.2"),
        ("0X7F.0.0.1.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[2001:DB8:0:0::1]", "2001:db8::1"),
        ("2001:0db8::0001", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("[::ffff:7f00:1]", "127.0.0.1"),
        ("08.1.1.1", "08.1.1.1"),  # 08 is not octal: not an address, stays a (bogus) name
        ("256.1.1.1", "256.1.1.1"),
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("4294967296", "4294967296"),
        ("", ""),
    ],
)
def test_normalise_host(raw: str, expected: str) -> None:
    assert normalise_host(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("api.gretel.cloud:443", ("api.gretel.cloud", 443)),
        ("api.gretel.cloud", ("api.gretel.cloud", None)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("2001:db8::1", ("2001:db8::1", None)),
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("host:notaport", ("host:notaport", None)),
    ],
)
def test_split_host_port(raw: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(raw) == expected


@pytest.mark.parametrize(
    ("host", "kind"),
    [("api.gretel.cloud", "name"), ("127.0.0.1", "ipv4"), ("::1", "ipv6"), ("2001:db8::1", "ipv6"), ("a:b", "name")],
)
def test_host_kind(host: str, kind: str) -> None:
    assert host_kind(host) == kind


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(min_size=290, max_size=320)))
def test_normalise_is_idempotent_on_any_text(raw: str) -> None:
    once = normalise_host(raw)
    assert normalise_host(once) == once


_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_äöüßéΑλ", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LABEL, min_size=1, max_size=5), st.booleans())
def test_normalise_is_idempotent_on_names(labels: list[str], trailing_dot: bool) -> None:
    raw = ".".join(labels) + ("." if trailing_dot else "")
    once = normalise_host(raw)
    assert normalise_host(once) == once
    assert once == once.lower()
    assert not once.endswith(".")


def _spell(value: int, style: str) -> str:
    if style == "hex":
        return hex(value)
    if style == "oct":
        return "0" + oct(value)[2:] if value else "0"
    return str(value)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=1, max_value=4),
    st.lists(st.sampled_from(["dec", "hex", "oct"]), min_size=4, max_size=4),
)
def test_every_ipv4_spelling_normalises_to_the_dotted_quad(number: int, parts: int, styles: list[str]) -> None:
    """1 to 4 parts, each decimal, octal or hex: what inet_aton (and so curl, and so an attacker) accepts."""
    octets = list(number.to_bytes(4, "big"))
    values = octets[: parts - 1] + [int.from_bytes(bytes(octets[parts - 1 :]), "big")]
    raw = ".".join(_spell(v, s) for v, s in zip(values, styles, strict=False))
    expected = str(ipaddress.IPv4Address(number))
    assert normalise_host(raw) == expected
    assert socket.inet_ntoa(socket.inet_aton(raw)) == expected  # the C library agrees


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=6))
def test_ipv6_spellings(addr: ipaddress.IPv6Address) -> None:
    mapped = addr.ipv4_mapped
    expected = str(mapped) if mapped is not None else addr.compressed
    assert normalise_host(addr.exploded.upper()) == expected
    assert normalise_host(f"[{addr.exploded}]") == expected


def test_parse_ipv4_rejects_non_numbers() -> None:
    assert parse_ipv4("api.gretel.cloud") is None
    assert parse_ipv4("1.2.3.4.5") is None
    assert parse_ipv4("1.2.3.256") is None
    assert parse_ipv4("0x") == "0.0.0.0"
