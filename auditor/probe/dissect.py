"""Packet dissection: a fast path for link, IP and transport headers, and parsers
for the few payloads the audit needs (TLS ClientHello, HTTP request head, DNS).

Why our own parsers: the probe must keep up with a busy node in Python, and a
scapy layer costs hundreds of microseconds per packet (its DNS alone ~330 us),
while a bulk TCP segment here costs a few struct reads. Scapy builds the test
traffic and is the oracle the tests compare these parsers against.

Every parser is total on hostile input: it returns a result, returns `None` for
"not this protocol", or raises `Malformed` with a short reason the probe counts.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

# Link types (pcap LINKTYPE_*): what `any`, Ethernet ports, tunnels and loopback give.
LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW = 101
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset({LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_LOOP, LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2})

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
FRAGMENT = -1  # an IP fragment: reassembled by the engine (`fragments`) before anything reads it

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

VLAN_TYPES = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, the old QinQ tag
_V6_EXT = frozenset({0, 43, 44, 51, 60, 135, 139, 140})
_PORTS_SEQ = Struct("!HHI").unpack_from
_U16 = Struct("!H").unpack_from
_U32 = Struct("!I").unpack_from
_NULL_V4 = {2}
_NULL_V6 = {10, 24, 28, 30}


class Malformed(Exception):
    """A packet or payload that breaks its own format; `reason` is a short counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Decoded(NamedTuple):
    """One IP packet's transport view. `addrs` is source then destination address
    bytes (4 or 16 each), contiguous as on the wire, so flow keys are one slice.
    A FRAGMENT holds its offset in bytes in `sport`, the more-fragments flag in
    `dport`, the protocol it carries in `flags`, its identification in `seq`, and its
    data at `poff:pend`."""

    proto: int
    addrs: bytes
    alen: int
    sport: int  # ICMP: type
    dport: int  # ICMP: code
    flags: int
    seq: int  # ICMP echo: identifier
    poff: int  # payload offset in the frame
    pend: int  # payload end per the IP/UDP lengths (may exceed the captured bytes)


def decode(linktype: int, data: bytes) -> tuple[int, bytes, int, int, int, int, int, int, int] | None:
    """Headers of one frame, laid out as `Decoded` (a plain tuple: this runs per packet).
    None: not IP (ARP, LLDP, ...). Raises Malformed."""
    n = len(data)
    if linktype == LINK_ETHERNET:
        if n < 14:
            raise Malformed("ethernet-truncated")
        et = (data[12] << 8) | data[13]
        off = 14
    elif linktype == LINK_SLL:
        if n < 16:
            raise Malformed("sll-truncated")
        et = (data[14] << 8) | data[15]
        off = 16
    elif linktype == LINK_SLL2:
        if n < 20:
            raise Malformed("sll2-truncated")
        et = (data[0] << 8) | data[1]
        off = 20
    elif linktype in (LINK_RAW, LINK_IPV4, LINK_IPV6):
        if n < 1:
            raise Malformed("raw-empty")
        et = 0x0800 if data[0] >> 4 == 4 else 0x86DD
        off = 0
    elif linktype in (LINK_NULL, LINK_LOOP):
        if n < 4:
            raise Malformed("null-truncated")
        family = int.from_bytes(data[:4], "big" if linktype == LINK_LOOP else "little")
        if family not in _NULL_V4 and family not in _NULL_V6:
            family = int.from_bytes(data[:4], "little" if linktype == LINK_LOOP else "big")
        et = 0x0800 if family in _NULL_V4 else 0x86DD if family in _NULL_V6 else 0
        off = 4
    else:
        raise Malformed(f"linktype-{linktype}")
    depth = 0
    while et in VLAN_TYPES:
        if off + 4 > n or depth > 4:
            raise Malformed("vlan-truncated")
        et = (data[off + 2] << 8) | data[off + 3]
        off += 4
        depth += 1
    if et == 0x0800:
        if n < off + 20:
            raise Malformed("ipv4-truncated")
        vihl = data[off]
        if vihl >> 4 != 4:
            raise Malformed("ipv4-version")
        ihl = (vihl & 15) * 4
        total = (data[off + 2] << 8) | data[off + 3]
        if total == 0:  # segmentation offload: the length lives in the capture
            total = n - off
        if ihl < 20 or total < ihl or n < off + ihl:
            raise Malformed("ipv4-header-length")
        proto = data[off + 9]
        addrs = data[off + 12 : off + 20]
        alen = 4
        l4 = off + ihl
        end = off + total
        frag = (data[off + 6] << 8) | data[off + 7]
        if frag & 0x3FFF:  # an offset or more-fragments (DF alone is no fragment)
            return (FRAGMENT, addrs, alen, (frag & 0x1FFF) << 3, (frag >> 13) & 1, proto, (data[off + 4] << 8) | data[off + 5], l4, end)
    elif et == 0x86DD:
        if n < off + 40:
            raise Malformed("ipv6-truncated")
        if data[off] >> 4 != 6:
            raise Malformed("ipv6-version")
        plen = (data[off + 4] << 8) | data[off + 5]
        proto = data[off + 6]
        addrs = data[off + 8 : off + 40]
        alen = 16
        l4 = off + 40
        end = l4 + plen if plen else n
        hops = 0
        while proto in _V6_EXT:
            if l4 + 8 > n or hops > 16:
                raise Malformed("ipv6-extension-truncated")
            nxt = data[l4]
            if proto == 44:
                frag = (data[l4 + 2] << 8) | data[l4 + 3]
                if frag & 0xFFF9:  # an offset or more-fragments; an atomic fragment (RFC 6946) is whole
                    return (FRAGMENT, addrs, alen, frag & 0xFFF8, frag & 1, nxt, _U32(data, l4 + 4)[0], l4 + 8, end)
                l4 += 8
            elif proto == 51:
                l4 += (data[l4 + 1] + 2) * 4
            else:
                l4 += (data[l4 + 1] + 1) * 8
            proto = nxt
            hops += 1
        if l4 > end:
            raise Malformed("ipv6-extension-length")
    else:
        return None
    if proto == TCP:
        if l4 + 20 > n:
            raise Malformed("tcp-truncated")
        doff = (data[l4 + 12] >> 4) * 4
        if doff < 20 or l4 + doff > end:
            raise Malformed("tcp-header-length")
        sport, dport, seq = _PORTS_SEQ(data, l4)
        return (TCP, addrs, alen, sport, dport, data[l4 + 13], seq, l4 + doff, end)
    if proto == UDP:
        if l4 + 8 > n:
            raise Malformed("udp-truncated")
        sport, dport = (data[l4] << 8) | data[l4 + 1], (data[l4 + 2] << 8) | data[l4 + 3]
        ulen = (data[l4 + 4] << 8) | data[l4 + 5]
        if ulen < 8 or l4 + ulen > end:
            if ulen != 0:  # 0: jumbogram; otherwise the length lies
                raise Malformed("udp-length")
            ulen = end - l4
        return (UDP, addrs, alen, sport, dport, 0, 0, l4 + 8, l4 + ulen)
    if proto == ICMP or proto == ICMPV6:
        if l4 + 8 > n:
            raise Malformed("icmp-truncated")
        itype = data[l4]
        ident = (data[l4 + 4] << 8) | data[l4 + 5] if itype in (0, 8, 128, 129) else 0
        return (proto, addrs, alen, itype, data[l4 + 1], 0, ident, l4 + 8, end)
    return (proto, addrs, alen, 0, 0, 0, 0, l4, end)


# ---------------------------------------------------------------- TLS ClientHello

NEED_MORE = -1


class ClientHello(NamedTuple):
    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    ech: bool  # encrypted_client_hello offered: the outer SNI may be a cover name
    grease: bool


def _is_grease(value: int) -> bool:
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _text(raw: bytes) -> str:
    """Names from the wire as text: ASCII kept, anything else escaped, never decoded into markup."""
    return raw.decode("ascii", "backslashreplace").lower().rstrip(".")


def tls_client_hello(stream: bytes) -> ClientHello | int | None:
    """The ClientHello at the start of a client's TCP stream, reassembled across
    records. NEED_MORE when the stream is cut short, None when it is not TLS."""
    if len(stream) < 6:
        return NEED_MORE if stream[:1] == b"\x16" and stream[1:2] in (b"", b"\x03") else None
    if stream[0] != 0x16 or stream[1] != 3 or stream[5] != 1:
        return None
    hs = bytearray()
    pos = 0
    n = len(stream)
    while pos + 5 <= n:
        if stream[pos] != 0x16:
            raise Malformed("tls-record-type")
        rlen = (stream[pos + 3] << 8) | stream[pos + 4]
        if rlen == 0 or rlen > 18432:
            raise Malformed("tls-record-length")
        hs += stream[pos + 5 : pos + 5 + rlen]
        pos += 5 + rlen
        if len(hs) >= 4:
            need = 4 + ((hs[1] << 16) | (hs[2] << 8) | hs[3])
            if len(hs) >= need:
                return client_hello_body(bytes(hs[4:need]))
            if need > 65536:
                raise Malformed("tls-clienthello-length")
    return NEED_MORE


def client_hello_body(body: bytes) -> ClientHello:
    """Parse a ClientHello handshake body (after its 4-byte header): TLS and QUIC share it."""
    n = len(body)
    if n < 38:
        raise Malformed("tls-clienthello-short")
    pos = 34
    pos += 1 + body[pos]
    if pos + 2 > n:
        raise Malformed("tls-clienthello-session")
    cs_len = (body[pos] << 8) | body[pos + 1]
    grease = any(_is_grease(_U16(body, pos + 2 + i)[0]) for i in range(0, min(cs_len, n - pos - 3), 2))
    pos += 2 + cs_len
    if pos + 1 > n:
        raise Malformed("tls-clienthello-ciphers")
    pos += 1 + body[pos]
    if pos > n:
        raise Malformed("tls-clienthello-compression")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    ech = False
    if pos + 2 > n:
        return ClientHello(None, (), (), False, grease)
    ext_end = pos + 2 + ((body[pos] << 8) | body[pos + 1])
    if ext_end > n:
        raise Malformed("tls-clienthello-extensions")
    pos += 2
    while pos + 4 <= ext_end:
        etype = (body[pos] << 8) | body[pos + 1]
        elen = (body[pos + 2] << 8) | body[pos + 3]
        start = pos + 4
        pos = start + elen
        if pos > ext_end:
            raise Malformed("tls-extension-length")
        if etype == 0 and elen >= 5:
            p = start + 2
            while p + 3 <= pos:
                nlen = (body[p + 1] << 8) | body[p + 2]
                if body[p] == 0 and p + 3 + nlen <= pos:
                    sni = _text(body[p + 3 : p + 3 + nlen])
                    break
                p += 3 + nlen
        elif etype == 16 and elen >= 2:
            p = start + 2
            names = []
            while p < pos:
                plen = body[p]
                if p + 1 + plen > pos:
                    raise Malformed("tls-alpn-length")
                names.append(body[p + 1 : p + 1 + plen].decode("ascii", "backslashreplace"))
                p += 1 + plen
            alpn = tuple(names)
        elif etype == 43 and elen >= 1:
            vals = [_U16(body, start + 1 + i)[0] for i in range(0, min(body[start], elen - 1) - 1, 2)]
            versions = tuple(v for v in vals if not _is_grease(v))
            grease = grease or len(versions) != len(vals)
        elif etype == 0xFE0D:
            ech = True
        elif _is_grease(etype):
            grease = True
    return ClientHello(sni, alpn, versions, ech, grease)


# ---------------------------------------------------------------- plaintext HTTP

_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ", b"CONNECT ", b"TRACE ")


class HttpRequest(NamedTuple):
    method: str
    target: str
    version: str
    host: str | None


def looks_like_http(data: bytes) -> bool:
    return data.startswith(_METHODS)


def http_request(data: bytes) -> HttpRequest | int | None:
    """Request line and Host of a plaintext HTTP/1.x request; NEED_MORE until the head is in."""
    if not data.startswith(_METHODS):
        return None
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        if len(data) < 16384:
            return NEED_MORE
        head_end = len(data)
    lines = data[:head_end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise Malformed("http-request-line")
    host = None
    for line in lines[1:]:
        if line[:5].lower() == b"host:":
            host = _text(line[5:].strip())
            break
    return HttpRequest(
        parts[0].decode("ascii", "backslashreplace"),
        parts[1].decode("ascii", "backslashreplace"),
        parts[2].decode("ascii", "backslashreplace"),
        host,
    )


# ---------------------------------------------------------------- DNS messages

QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA",
}  # fmt: skip
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}  # fmt: skip
_PRINTABLE_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"
_PRINTABLE = frozenset(_PRINTABLE_BYTES)
_DNS_HEADER = Struct("!HHHH").unpack_from


def qtype_name(value: int) -> str:
    return QTYPES.get(value) or f"TYPE{value}"


class DnsRecord(NamedTuple):
    name: str
    rtype: int
    ttl: int
    value: str  # an address, a name, or a summary ("TXT 45 bytes"): never raw record data


class DnsMessage(NamedTuple):
    id: int
    response: bool
    opcode: int
    rcode: int
    truncated: bool
    qname: str
    qtype: int
    answers: tuple[DnsRecord, ...]


def _label_text(raw: bytes) -> str:
    if not raw.translate(None, _PRINTABLE_BYTES):
        return raw.decode("ascii").lower()
    return "".join(chr(c).lower() if c in _PRINTABLE else f"\\{c:03d}" for c in raw)


def dns_name(msg: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed name: (text, offset after it). Pointers must go backwards."""
    labels: list[str] = []
    end = -1
    total = 0
    n = len(msg)
    limit = pos
    while True:
        if pos >= n:
            raise Malformed("dns-name-truncated")
        length = msg[pos]
        if length == 0:
            pos += 1
            break
        if length >= 0xC0:
            if pos + 1 >= n:
                raise Malformed("dns-pointer-truncated")
            target = ((length & 0x3F) << 8) | msg[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= limit:
                raise Malformed("dns-pointer-loop")
            pos = limit = target
            continue
        if length > 63:
            raise Malformed("dns-label-type")
        total += length + 1
        if total > 255 or pos + 1 + length > n:
            raise Malformed("dns-name-length")
        labels.append(_label_text(msg[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return ".".join(labels), end if end >= 0 else pos


def _ip4(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def ip_text(raw: bytes) -> str:
    """Address bytes as the canonical text form (IPv6 compressed)."""
    if len(raw) == 4:
        return _ip4(raw)
    import ipaddress  # noqa: PLC0415 - rare path, kept off the import of the hot module

    return str(ipaddress.IPv6Address(raw))


def parse_dns(msg: bytes, max_records: int = 64) -> DnsMessage:
    """Header, first question and the answer section of a DNS message."""
    n = len(msg)
    if n < 12:
        raise Malformed("dns-header-truncated")
    ident, flags, qd, an = _DNS_HEADER(msg, 0)
    pos = 12
    qname = ""
    qtype = 0
    if qd:
        qname, pos = dns_name(msg, pos)
        if pos + 4 > n:
            raise Malformed("dns-question-truncated")
        qtype = (msg[pos] << 8) | msg[pos + 1]
        pos += 4
        for _ in range(min(qd, 8) - 1):
            _, pos = dns_name(msg, pos)
            pos += 4
    answers: list[DnsRecord] = []
    for _ in range(min(an, max_records)):
        name, pos = dns_name(msg, pos)
        if pos + 10 > n:
            raise Malformed("dns-answer-truncated")
        rtype = (msg[pos] << 8) | msg[pos + 1]
        ttl = _U32(msg, pos + 4)[0]
        rdlen = (msg[pos + 8] << 8) | msg[pos + 9]
        rd = pos + 10
        pos = rd + rdlen
        if pos > n:
            raise Malformed("dns-rdata-truncated")
        if rtype == 1 and rdlen == 4:
            value = _ip4(msg[rd:pos])
        elif rtype == 28 and rdlen == 16:
            value = ip_text(msg[rd:pos])
        elif rtype in (5, 2, 12):
            value = dns_name(msg, rd)[0]
        elif rtype in (1, 28):
            raise Malformed("dns-address-length")
        else:
            value = f"{qtype_name(rtype)} {rdlen} bytes"
        answers.append(DnsRecord(name, rtype, ttl if ttl < 2**31 else 0, value))
    return DnsMessage(
        ident, bool(flags & 0x8000), (flags >> 11) & 15, flags & 15, bool(flags & 0x0200), qname, qtype, tuple(answers)
    )
