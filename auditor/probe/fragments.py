"""IPv4 and IPv6 reassembly for the probe, bounded in datagrams, size, memory and time.

Why: the kernel fragments any UDP datagram larger than the path MTU, so an
unprivileged `sendto()` of a few kilobytes leaves the node as fragments whose
later pieces carry no transport header and whose first piece carries a UDP length
that covers the whole datagram. Judged fragment by fragment, such traffic had no
flow and no destination. Reassembled here, it takes the per-packet path as if it
had arrived whole.

Fragments are keyed as the receiving kernel keys them: IPv4 by source, destination,
protocol and identification; IPv6 by source, destination and fragment
identification (the next header of the first fragment is the datagram's, RFC 8200),
and where fragments disagree this reads what a Linux receiver reads
(`inet_frag_queue_insert`): a fragment wholly inside bytes already received is a
duplicate and the first copy stands, and one that overlaps them only in part ruins
the datagram (RFC 5722; partial overlaps with the same bytes are accepted here).
A duplicate with other bytes than the first copy is an evasion attempt (a reader
that kept the second copy would read something else) and is recorded as one, but
the datagram still reaches the per-packet path, so its flow is judged. A non-last
IPv4 fragment whose length is not a multiple of 8 is cut down to one, an IPv6 one
is refused, and an empty fragment ruins its datagram, again as Linux does.

A pending datagram costs what it holds plus a fixed overhead per piece, and when
the table's datagram or byte budget is spent the oldest is dropped to make room,
so a flood of first fragments that never complete holds memory to the budget.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from struct import Struct

_V4_HEAD = Struct("!BBHHHBBH").pack  # version/IHL, TOS, total length, id, flags/offset, TTL, protocol, checksum
_V6_HEAD = Struct("!IHBB").pack  # version/class/label, payload length, next header, hop limit
_DATAGRAM_COST = 512  # bytes of bookkeeping charged per pending datagram
_PIECE_COST = 128  # and per piece it holds, so floods of tiny fragments are bounded too
V4_MAX_PAYLOAD = 65535 - 20  # what a rebuilt IPv4 header's total length can describe
V6_MAX_PAYLOAD = 65535

TOO_BIG = "fragment-too-big"
OVERLAP = "fragment-overlap"  # overlaps bytes received in part, with other bytes: the datagram is dropped
DUPLICATE = "fragment-duplicate-differs"  # repeats bytes received, with other bytes: the first copy stands
INCONSISTENT = "fragment-inconsistent"  # two last fragments, or bytes past the end the last one set
LENGTH = "fragment-length"  # empty, or (IPv6) not the last and not a multiple of 8 bytes long
TIMEOUT = "fragment-timeout"
EVICTED = "fragment-evicted"
INCOMPLETE = "fragment-incomplete"  # still pending when the capture ended

Key = tuple[bytes, int, int]  # addresses, identification, protocol (-1 for IPv6)


class Datagram:
    """The pieces of one datagram received so far: sorted, never overlapping, each
    (start, end) as the IP header claims and the bytes captured (fewer when the
    capture cut the frame short)."""

    __slots__ = ("first", "proto", "total", "starts", "ends", "chunks", "covered", "held", "count")

    DUPLICATE = -2  # `insert`: wholly inside bytes already held, and other bytes than those
    OVERLAP = -1  # `insert`: partly over bytes already held, and other bytes than those

    def __init__(self, first: int, proto: int) -> None:
        self.first = first
        self.proto = proto
        self.total = -1  # known once the last fragment is in
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.chunks: list[bytes] = []
        self.covered = 0
        self.held = _DATAGRAM_COST
        self.count = 0

    def insert(self, start: int, end: int, chunk: bytes) -> int:
        """Add [start, end); returns the bytes newly held (0: a duplicate), DUPLICATE or
        OVERLAP. Only bytes both copies captured are compared."""
        starts, ends, chunks = self.starts, self.ends, self.chunks
        i = bisect_right(ends, start)
        j = i
        pos = start
        new_s: list[int] = []
        new_e: list[int] = []
        new_c: list[bytes] = []
        covered = cost = 0
        differs = False
        while j < len(starts) and starts[j] < end:
            ps, pe, pc = starts[j], ends[j], chunks[j]
            if ps > pos:
                gap = chunk[pos - start : ps - start]
                new_s.append(pos)
                new_e.append(ps)
                new_c.append(gap)
                covered += ps - pos
                cost += len(gap) + _PIECE_COST
            a, b = max(ps, start), min(pe, end)
            mine, theirs = chunk[a - start : b - start], pc[a - ps : b - ps]
            common = min(len(mine), len(theirs))
            differs = differs or mine[:common] != theirs[:common]
            new_s.append(ps)
            new_e.append(pe)
            new_c.append(pc)
            pos = pe
            j += 1
        if pos < end:
            gap = chunk[pos - start :]
            new_s.append(pos)
            new_e.append(end)
            new_c.append(gap)
            covered += end - pos
            cost += len(gap) + _PIECE_COST
        if differs:
            return self.OVERLAP if covered else self.DUPLICATE
        if covered:
            starts[i:j] = new_s
            ends[i:j] = new_e
            chunks[i:j] = new_c
            self.covered += covered
            self.held += cost
        return cost

    def payload(self) -> bytes:
        """The reassembled bytes, up to the first byte the capture did not keep."""
        out = bytearray()
        for s, e, c in zip(self.starts, self.ends, self.chunks):
            out += c
            if len(c) < e - s:
                break
        return bytes(out)


class Reassembler:
    """Pending datagrams by key, oldest first. `add` returns a rebuilt IP packet when a
    datagram completes. What it gives up on, and duplicates with other bytes, are
    appended to `problems` as (reason, key, datagram) for the engine to count and record."""

    def __init__(self, *, max_datagrams: int, max_size: int, max_bytes: int, timeout_us: int) -> None:
        self.max_datagrams = max_datagrams
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.timeout_us = timeout_us
        self.pending: OrderedDict[Key, Datagram] = OrderedDict()
        self.held = 0
        self.problems: list[tuple[str, Key, Datagram]] = []

    def add(self, ts: int, addrs: bytes, proto: int, ident: int, offset: int, more: int, chunk: bytes, length: int) -> bytes | None:
        """One fragment: `length` bytes at `offset` as its header claims, `chunk` what was captured of them."""
        v6 = len(addrs) == 32
        key = (addrs, ident, -1 if v6 else proto)
        d = self.pending.get(key)
        if d is None:
            while len(self.pending) >= self.max_datagrams:
                self._drop(next(iter(self.pending)), EVICTED)
            d = self.pending[key] = Datagram(ts, proto)
            self.held += d.held
        d.count += 1
        if more and length % 8:
            if v6:  # refused alone (RFC 8200 answers it with a parameter problem)
                self.problems.append((LENGTH, key, d))
                return None
            length -= length % 8
            chunk = chunk[:length]
        end = offset + length
        reason = None
        if not length:
            reason = LENGTH
        elif end > min(self.max_size, V6_MAX_PAYLOAD if v6 else V4_MAX_PAYLOAD):
            reason = TOO_BIG
        elif more:
            if 0 <= d.total < end:
                reason = INCONSISTENT
        elif (d.total >= 0 and d.total != end) or (d.ends and d.ends[-1] > end):
            reason = INCONSISTENT
        else:
            d.total = end
        if reason is None:
            cost = d.insert(offset, end, chunk)
            if cost == Datagram.OVERLAP:
                reason = OVERLAP
            elif cost == Datagram.DUPLICATE:
                self.problems.append((DUPLICATE, key, d))
            else:
                self.held += cost
                if offset == 0 and cost:
                    d.proto = proto
        if reason is not None:
            self._drop(key, reason)
            return None
        if d.covered == d.total:
            del self.pending[key]
            self.held -= d.held
            return self._rebuild(addrs, ident, d)
        while self.held > self.max_bytes and self.pending:
            self._drop(next(iter(self.pending)), EVICTED)
        return None

    def expire(self, now: int) -> None:
        """Drop datagrams whose first fragment came more than the timeout before `now`."""
        limit = now - self.timeout_us
        pending = self.pending
        while pending:
            key = next(iter(pending))
            if pending[key].first > limit:
                break
            self._drop(key, TIMEOUT)

    def drain(self) -> None:
        """The capture ended: every pending datagram is incomplete."""
        while self.pending:
            self._drop(next(iter(self.pending)), INCOMPLETE)

    def _drop(self, key: Key, reason: str) -> None:
        d = self.pending.pop(key)
        self.held -= d.held
        self.problems.append((reason, key, d))

    @staticmethod
    def _rebuild(addrs: bytes, ident: int, d: Datagram) -> bytes:
        """An unfragmented IP packet with the datagram's addresses, protocol and claimed
        length; its bytes end where the capture's did, as a snaplen would cut it."""
        body = d.payload()
        if len(addrs) == 32:
            return _V6_HEAD(0x60000000, d.total, d.proto, 64) + addrs + body
        return _V4_HEAD(0x45, 0, 20 + d.total, ident & 0xFFFF, 0, 64, d.proto, 0) + addrs + body
