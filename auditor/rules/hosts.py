"""Host normalisation: one spelling per destination, so a rule cannot be dodged by
writing the same host another way (case, trailing dot, IDNA, IPv6 brackets,
``0x7f.1`` or ``2130706433`` for 127.0.0.1, IPv4-mapped IPv6).

Every function here is total: junk in gives a stable string out (which then
matches no rule), never an exception, because sensors hand us whatever they saw.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Literal

HostKind = Literal["name", "ipv4", "ipv6"]

_NUMERIC_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def _parse_ipv4_part(part: str) -> int | None:
    """One dotted part as inet_aton/WHATWG read it: 0x.. hex, leading 0 octal, else decimal."""
    if part[:2] in ("0x", "0X"):
        return int(part[2:], 16) if len(part) > 2 else 0
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def parse_ipv4(host: str) -> str | None:
    """Dotted quad for any legacy IPv4 spelling (1 to 4 parts), or None if it is not one."""
    parts = host.split(".")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    values: list[int] = []
    for part in parts:
        value = _parse_ipv4_part(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, value in enumerate(head):
        number += value << (8 * (3 - i))
    return str(ipaddress.IPv4Address(number))


def _parse_ipv6(host: str) -> str | None:
    """Compressed IPv6 without zone; an IPv4-mapped address becomes its IPv4 form."""
    if ":" not in host:
        return None
    addr_text = host.split("%", 1)[0]
    try:
        addr = ipaddress.IPv6Address(addr_text)
    except ValueError:
        return None
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else addr.compressed


def _idna(host: str) -> str:
    """Punycode for non-ASCII names (IDNA 2003 with nameprep, as resolvers do)."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return host


def _normalise_once(raw: str) -> str:
    host = raw.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ipv6 = _parse_ipv6(host)
    if ipv6 is not None:
        return ipv6
    host = _idna(host).strip().rstrip(".")
    ip = _parse_ipv6(host) or parse_ipv4(host)
    return ip if ip is not None else host


_CANON_V4 = re.compile(r"^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
_CANON_NAME = re.compile(r"^(?:[a-z0-9_-]+\.)*[a-z0-9_-]+$")


def _already_canonical(host: str) -> bool:
    """Most hosts are already in their one spelling: a plain lower-case name or a dotted quad."""
    if _CANON_V4.match(host):
        return True
    if not _CANON_NAME.match(host):
        return False
    last = host.rpartition(".")[2]
    return not _NUMERIC_PART.match(last)


MAX_HOST = 300  # longer than any DNS name (253) plus brackets and a port: junk, and not worth caching


def normalise_host(raw: str) -> str:
    """The one spelling of a host: lower case, no brackets, no trailing dot,
    punycode, canonical IP text. Idempotent: applied until nothing changes."""
    if len(raw) > MAX_HOST:
        host = raw.strip().lower()
        if len(host) > MAX_HOST:
            return host  # no name that long exists; keep it out of the cache
        raw = host
    return _normalise_cached(raw)


@lru_cache(maxsize=65536)
def _normalise_cached(raw: str) -> str:
    if _already_canonical(raw):
        return raw
    host = _normalise_once(raw)
    for _ in range(4):
        again = _normalise_once(host)
        if again == host:
            break
        host = again
    return host


@lru_cache(maxsize=65536)
def host_kind(host: str) -> HostKind:
    """What a normalised host is."""
    if _CANON_V4.match(host):
        return "ipv4"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
            return "ipv6"
        except ValueError:
            return "name"
    try:
        ipaddress.IPv4Address(host)
        return "ipv4"
    except ValueError:
        return "name"


def is_ip(host: str) -> bool:
    return host_kind(host) != "name"


def split_host_port(raw: str) -> tuple[str, int | None]:
    """Split ``host:port``, ``[v6]:port``, bare IPv6 or a plain host (Host headers, CONNECT targets)."""
    text = raw.strip()
    if text.startswith("["):
        end = text.find("]")
        if end != -1:
            rest = text[end + 1 :]
            if rest.startswith(":") and _PORT.match(rest[1:]):
                return text[1:end], int(rest[1:])
            return text[1:end], None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if _PORT.match(port):
            return host, int(port)
    return text, None
