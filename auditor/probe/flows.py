"""The flow table: one record per 5-tuple, with bytes and packets each way,
first and last seen, TCP state and who opened it, so direction (egress, inbound,
internal) is a fact about the connection rather than about a packet.

Memory stays bounded: idle and closed flows are flushed on a sweep, and when the
table is full the least recently active tenth is flushed early (and says so).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from auditor.model import Direction, TcpState
from auditor.probe.dissect import ICMP, ICMPV6, TCP, UDP

# When no cluster CIDRs are configured, these are inside: private, shared,
# loopback, link-local and multicast space in both families.
DEFAULT_INTERNAL = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "224.0.0.0/4", "255.255.255.255/32", "0.0.0.0/32", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "::/128",
)  # fmt: skip
_ALWAYS_LOCAL = ("224.0.0.0/4", "255.255.255.255/32", "ff00::/8")  # multicast and broadcast never leave

# Ports a server listens on, for telling client from server in flows seen mid-stream.
SERVER_PORTS = frozenset({21, 22, 25, 53, 80, 110, 123, 143, 389, 443, 465, 587, 636, 853, 993, 995, 1080, 1194, 1433, 1521,
                          2049, 2379, 3128, 3306, 4443, 5000, 5432, 5671, 5672, 6379, 6443, 8000, 8080, 8443, 8888, 9000,
                          9092, 9200, 9443, 10250, 11211, 27017, 51820})  # fmt: skip

INSP_DONE = 0
INSP_FIRST = 1  # waiting for the client's first bytes
INSP_TLS = 2
INSP_HTTP = 3
INSP_DNS = 4  # DNS over TCP, both directions
INSP_QUIC = 5


class Networks:
    """Inside or outside the cluster: the configured CIDRs (else the private ranges),
    plus the networks the pack calls internal (`also`: its overlay's CIDRs, cluster DNS
    and proxy addresses), all as integer masks: a new address costs a few comparisons."""

    def __init__(self, cidrs: Iterable[str] | None = None, also: Iterable[str] = ()) -> None:
        given = list(cidrs or [])
        self.configured = bool(given)
        self.cidrs = [ipaddress.ip_network(c, strict=False) for c in (given or DEFAULT_INTERNAL)]
        self.cidrs += [ipaddress.ip_network(c) for c in _ALWAYS_LOCAL]
        self.cidrs += [n for n in (ipaddress.ip_network(c, strict=False) for c in also) if n not in self.cidrs]
        self._v4 = [(int(n.network_address), int(n.netmask)) for n in self.cidrs if n.version == 4]
        self._v6 = [(int(n.network_address), int(n.netmask)) for n in self.cidrs if n.version == 6]
        self._cache: dict[bytes, bool] = {}

    def internal(self, addr: bytes) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            value = int.from_bytes(addr, "big")
            if len(addr) == 16 and value >> 32 == 0xFFFF:  # IPv4-mapped IPv6
                addr, value = addr[12:], value & 0xFFFFFFFF
            hit = any(value & mask == net for net, mask in (self._v4 if len(addr) == 4 else self._v6))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[addr] = hit
        return hit


_SEQ = 0xFFFFFFFF
MAX_HELD = 32  # pieces a stream holds out of order before the engine gives up on it
_AHEAD = 1 << 17  # bytes past the next expected one worth holding: a handshake or DNS message is shorter


class Stream:
    """One direction of a TCP connection in sequence order, for what the engine reads
    (a ClientHello, a request head, DNS messages over TCP).

    A receiver keeps the first copy of every byte it has, so this does too: a
    retransmission or an overlapping segment never replaces bytes already taken or
    held out of order. Otherwise a sender could show the probe one hello (or one
    framing of DNS messages) and the server another.
    """

    __slots__ = ("next", "data", "held")

    def __init__(self, start: int) -> None:
        self.next = start & _SEQ  # sequence number of the next byte to take
        self.data = bytearray()  # bytes taken in order, not yet consumed by the reader
        self.held: dict[int, bytes] = {}  # ahead of `next`: sequence number -> bytes, never overlapping

    def add(self, seq: int, payload: bytes) -> bool:
        """Take the segment's new bytes; True when `data` grew. More than MAX_HELD pieces
        in `held` afterwards means the stream cannot be followed."""
        nxt = self.next
        start = (seq - nxt) & _SEQ
        if start >= 0x80000000:
            start -= _SEQ + 1  # begins before `next`: only its tail can be new
        end = start + len(payload)
        if end <= 0 or start >= _AHEAD:
            return False
        held = self.held
        if start <= 0 and not held:
            self.data += payload[-start:] if start else payload
            self.next = (nxt + end) & _SEQ
            return True
        lo = max(start, 0)
        for at, size in sorted(((s - nxt) & _SEQ, len(b)) for s, b in held.items()):
            if at >= end:
                break
            if at + size <= lo:
                continue
            if at > lo:
                held[(nxt + lo) & _SEQ] = payload[lo - start : at - start]
            lo = at + size
            if lo >= end:
                break
        if lo < end:
            held[(nxt + lo) & _SEQ] = payload[lo - start :]
        chunk = held.pop(nxt, None)
        if chunk is None:
            return False
        data = self.data
        while chunk is not None:
            data += chunk
            nxt = (nxt + len(chunk)) & _SEQ
            chunk = held.pop(nxt, None)
        self.next = nxt
        return True


class Flow:
    """One connection. Side 0 opened it (the initiator), side 1 answered."""

    __slots__ = (
        "proto", "addrs", "alen", "sport", "dport", "first", "last", "pk", "by", "syn", "synack", "fin", "rst",
        "rst_side", "insp", "nseq", "rseq", "stream", "dstreams", "sni", "alpn", "ech", "grease", "http", "quic",
        "crypto", "midstream", "notes", "obs", "closed_at", "icmp_max", "dns_only", "dns_servers", "evicted",
    )  # fmt: skip

    def __init__(self, proto: int, addrs: bytes, alen: int, sport: int, dport: int, ts: int) -> None:
        self.proto = proto
        self.addrs = addrs
        self.alen = alen
        self.sport = sport
        self.dport = dport
        self.first = ts
        self.last = ts
        self.pk = [0, 0]
        self.by = [0, 0]
        self.syn = False
        self.synack = False
        self.fin = 0
        self.rst = False
        self.rst_side = -1
        self.insp = INSP_DONE
        self.nseq = -1  # the client's first data byte, from its SYN (-1: no SYN seen)
        self.rseq = -1  # the server's, from its SYN-ACK
        self.stream: Stream | None = None  # the client's bytes while a handshake or request head is read
        self.dstreams: list[Stream | None] | None = None  # DNS over TCP, per side
        self.sni: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.ech = False
        self.grease = False
        self.http: tuple[str, str, str | None] | None = None  # method, target, host
        self.quic = False
        self.crypto: object | None = None
        self.midstream = False
        self.notes: list[str] = []
        self.obs: set[str] = set()
        self.closed_at = 0
        self.icmp_max = 0
        self.dns_only = proto == UDP and (sport == 53 or dport == 53)
        self.dns_servers = 0  # DNS: bit per side that answered, or was asked, as a resolver
        self.evicted = False

    @property
    def src(self) -> bytes:
        return self.addrs[: self.alen]

    @property
    def dst(self) -> bytes:
        return self.addrs[self.alen :]

    @property
    def transport(self) -> str:
        return {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmp"}.get(self.proto, "other")

    def tcp_state(self) -> TcpState | None:
        if self.proto != TCP:
            return None
        if self.rst:
            return "refused" if self.syn and not self.synack and self.rst_side == 1 else "reset"
        if self.fin == 3:
            return "closed"
        if self.synack or (self.pk[0] and self.pk[1] and (self.by[0] or self.by[1])):
            return "established"
        return "attempted"


def direction(nets: Networks, flow: Flow) -> Direction:
    src_in = nets.internal(flow.src)
    dst_in = nets.internal(flow.dst)
    if src_in:
        return "internal" if dst_in else "egress"
    return "inbound" if dst_in else "unknown"


def orient(proto: int, sport: int, dport: int, flags: int, itype: int) -> bool:
    """True when the first packet seen travels server -> client, so the flow's
    sides must be swapped: a SYN-ACK, an echo reply, or a reply from a server port."""
    if proto == TCP:
        if flags & 0x02:
            return bool(flags & 0x10)
    elif proto in (ICMP, ICMPV6):
        return itype in (0, 129)
    elif proto not in (UDP,):
        return False  # no ports to go by: whoever sent first opened it
    s_srv = sport in SERVER_PORTS or sport < 1024
    d_srv = dport in SERVER_PORTS or dport < 1024
    if s_srv and not d_srv:
        return True
    if d_srv and not s_srv:
        return False
    return sport < dport and dport >= 32768


class FlowTable:
    """5-tuple -> (flow, side). Both directions' keys point at the same flow."""

    def __init__(self, max_flows: int = 200_000) -> None:
        self.max_flows = max_flows
        self.keys: dict[tuple[int, bytes, int, int], tuple[Flow, int]] = {}
        self.flows: dict[int, Flow] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.flows)

    def add(self, flow: Flow) -> None:
        a = flow.alen
        self.keys[(flow.proto, flow.addrs, flow.sport, flow.dport)] = (flow, 0)
        self.keys[(flow.proto, flow.addrs[a:] + flow.addrs[:a], flow.dport, flow.sport)] = (flow, 1)
        self.flows[id(flow)] = flow

    def remove(self, flow: Flow) -> None:
        a = flow.alen
        self.keys.pop((flow.proto, flow.addrs, flow.sport, flow.dport), None)
        self.keys.pop((flow.proto, flow.addrs[a:] + flow.addrs[:a], flow.dport, flow.sport), None)
        self.flows.pop(id(flow), None)

    def expired(self, now: int, *, tcp_idle: int, udp_idle: int, icmp_idle: int, linger: int) -> list[Flow]:
        """Flows closed for `linger` or idle past their protocol's timeout (microseconds)."""
        out = []
        for flow in self.flows.values():
            idle = now - flow.last
            if flow.closed_at and now - flow.closed_at >= linger:
                out.append(flow)
            elif idle >= (tcp_idle if flow.proto == TCP else udp_idle if flow.proto == UDP else icmp_idle):
                out.append(flow)
        for flow in out:
            self.remove(flow)
        return out

    def evict(self) -> list[Flow]:
        """The least recently active tenth, when the table is full."""
        ordered = sorted(self.flows.values(), key=lambda f: f.last)
        out = ordered[: max(1, len(ordered) // 10)]
        for flow in out:
            flow.evicted = True
            self.remove(flow)
        self.evictions += len(out)
        return out

    def drain(self) -> list[Flow]:
        out = list(self.flows.values())
        self.keys.clear()
        self.flows.clear()
        return out
