"""The batched path's header reader: numpy reads the link, IPv4 and TCP headers of
every record in a block of a pcap file at once and sorts the records into what the
engine may count in bulk and what only its per-packet path may see.

Why: a per-packet Python loop costs microseconds a packet, and most packets of a
busy node are TCP segments of flows with nothing left to inspect. Those are
counted per flow and block (bytes, packets, last seen) once the engine has
checked, in order, that their flow has nothing left to read (`Probe.feed_block`).
Everything else goes through the per-packet path, in capture order; the tests run
both paths over the same captures and compare every event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditor.probe.capture import Records
from auditor.probe.dissect import LINK_ETHERNET, LINK_SLL, LINK_SLL2, VLAN_TYPES

# What a record is to the batched path.
OTHER = 0  # not plain IPv4/TCP: can never touch a TCP/IPv4 flow (UDP, ICMP, IPv6, ARP, runts)
KEYED = 1  # plain IPv4/TCP that the per-packet path must see: SYN/FIN/RST, odd lengths
BULK = 2  # plain IPv4/TCP segment the fast path counts when its flow has nothing to inspect
BARRIER = 3  # may belong to a TCP/IPv4 flow, but its ports are not where a block reads them (VLAN, IP options, fragments)

# Link types the batched path reads: where the ethertype and the IP header are.
LINK_LAYOUT = {LINK_ETHERNET: (12, 14), LINK_SLL: (14, 16), LINK_SLL2: (0, 20)}


@dataclass(frozen=True, slots=True)
class Headers:
    """Per record of a block (numpy arrays, one entry per record)."""

    ts: np.ndarray  # capture time, microseconds (int64)
    wirelen: np.ndarray  # length on the wire (int64)
    start: np.ndarray  # offset of the frame in the block's data (int64)
    caplen: np.ndarray  # captured length (int64)
    cls: np.ndarray  # OTHER, KEYED, BULK or BARRIER (uint8)
    plen: np.ndarray  # TCP payload length per the IP header (int64; meaningful for BULK)
    lo: np.ndarray  # the flow's lower endpoint, (address << 16) | port (uint64; KEYED and BULK)
    hi: np.ndarray  # the higher endpoint
    rev: np.ndarray  # True when the packet travels from the higher endpoint to the lower
    sport: np.ndarray  # int64
    dport: np.ndarray  # int64
    ip: int  # offset of the IP header in each frame


def read_headers(block: Records) -> Headers | None:
    """The headers of every record in `block`; None for a link type the batched path does not read."""
    layout = LINK_LAYOUT.get(block.linktype)
    if layout is None or not block.offsets:
        return None
    et, ip = layout
    data = block.data
    size = len(data)
    # Views of the block's bytes as an integer starting at every byte (no copy): one gather
    # per field reads that field of every record, unaligned and in its byte order.
    u8 = np.frombuffer(data, dtype=np.uint8)
    be16 = np.ndarray((size - 1,), dtype=">u2", buffer=data, strides=(1,))
    be32 = np.ndarray((size - 3,), dtype=">u4", buffer=data, strides=(1,))
    rec32 = np.ndarray((size - 3,), dtype=block.endian + "u4", buffer=data, strides=(1,))
    offs = np.asarray(block.offsets, dtype=np.int64)
    frac = rec32[offs + 4].astype(np.int64)
    ts = rec32[offs].astype(np.int64) * 1_000_000 + (frac // 1000 if block.nano else frac)
    caplen = rec32[offs + 8].astype(np.int64)
    start = offs + 16

    def field(view: np.ndarray, at: int) -> np.ndarray:
        """The field at byte `at` of every frame, as int64. Runts read past their end (clipped
        to the data), and are told apart by their captured length before any of it is believed."""
        idx = start + at
        np.minimum(idx, len(view) - 1, out=idx)
        return view[idx].astype(np.int64)

    ethertype = field(be16, et)
    vihl = field(u8, ip)
    total = field(be16, ip + 2)
    fragment = field(be16, ip + 6) & 0x3FFF  # more-fragments flag or an offset: DF alone is fine
    proto = field(u8, ip + 9)
    src = field(be32, ip + 12)
    dst = field(be32, ip + 16)
    sport = field(be16, ip + 20)
    dport = field(be16, ip + 22)
    doff = (field(u8, ip + 32) >> 4) << 2
    flags = field(u8, ip + 33)
    whole = caplen >= max(54, ip + 40)
    ipv4 = whole & (ethertype == 0x0800)
    plain = ipv4 & (vihl == 0x45) & (proto == 6)
    plen = total - 20 - doff
    bulk = plain & ((flags & 7) == 0) & (fragment == 0) & (doff >= 20) & (plen >= 0)
    tagged = (ethertype == VLAN_TYPES[0]) | (ethertype == VLAN_TYPES[1]) | (ethertype == VLAN_TYPES[2])
    barrier = whole & (tagged | (ipv4 & ((vihl >> 4) == 4) & (vihl != 0x45) & (proto == 6)))
    # A TCP fragment completes its datagram, whose flow it cannot name, when the engine reaches it.
    barrier |= (caplen >= ip + 20) & (ethertype == 0x0800) & ((vihl >> 4) == 4) & (proto == 6) & (fragment != 0)
    cls = np.zeros(len(offs), dtype=np.uint8)
    cls[plain] = KEYED
    cls[bulk] = BULK
    cls[barrier] = BARRIER
    a = (src << 16) | sport
    b = (dst << 16) | dport
    rev = a > b
    return Headers(
        ts=ts,
        wirelen=rec32[offs + 12].astype(np.int64),
        start=start,
        caplen=caplen,
        cls=cls,
        plen=plen,
        lo=np.where(rev, b, a).astype(np.uint64),
        hi=np.where(rev, a, b).astype(np.uint64),
        rev=rev,
        sport=sport,
        dport=dport,
        ip=ip,
    )


@dataclass(frozen=True, slots=True)
class Segments:
    """The BULK records of a stretch of a block, ordered by flow then capture order, cut
    into segments: runs of one flow's BULK records with none of its KEYED records between.

    Per segment (lists: the engine walks them): its head's entry, record, time, IPv4
    source offset, ports and payload length, its end, and its totals. Per entry (numpy,
    read with .item() only when a flow still inspecting makes the engine walk a segment).
    """

    head: list[int]  # entry index of the segment's first record
    end: list[int]  # entry index one past its last
    pos: list[int]  # the head's record index in the block
    ts: list[int]
    addrs: list[int]  # offset of the head's IPv4 source address in the block's data
    sport: list[int]
    dport: list[int]
    plen: list[int]
    rev: list[bool]
    fresh: list[bool]  # no KEYED record of its flow comes before it in the stretch
    e_pos: np.ndarray  # per entry, as above
    e_ts: np.ndarray
    e_addrs: np.ndarray
    e_sport: np.ndarray
    e_dport: np.ndarray
    e_plen: np.ndarray
    e_rev: np.ndarray
    count_rev: np.ndarray  # prefix sums, one longer than the entries: reversed records,
    bytes_all: np.ndarray  # payload bytes,
    bytes_rev: np.ndarray  # and payload bytes of reversed records


def segments(h: Headers, a: int, b: int) -> Segments | None:
    """Segments of records `a` to `b` (None: no BULK record there)."""
    cls = h.cls[a:b]
    tcp = np.flatnonzero((cls == KEYED) | (cls == BULK)) + a
    if not len(tcp) or not (cls == BULK).any():
        return None
    lo, hi = h.lo[tcp], h.hi[tcp]
    order = np.lexsort((hi, lo))  # stable: capture order within a flow
    pos = tcp[order]
    lo, hi = lo[order], hi[order]
    new_flow = np.ones(len(pos), dtype=bool)
    new_flow[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    is_bulk = h.cls[pos] == BULK
    after_keyed = np.ones(len(pos), dtype=bool)
    after_keyed[1:] = ~is_bulk[:-1]
    head = (is_bulk & (new_flow | after_keyed))[is_bulk]
    fresh = (is_bulk & new_flow)[is_bulk]
    pos = pos[is_bulk]
    heads = np.flatnonzero(head)
    ends = np.append(heads[1:], len(pos))
    e_ts = h.ts[pos]
    e_addrs = h.start[pos] + (h.ip + 12)
    e_sport, e_dport = h.sport[pos], h.dport[pos]
    e_rev = h.rev[pos]
    e_plen = h.plen[pos]
    zero = np.zeros(1, dtype=np.int64)
    return Segments(
        head=heads.tolist(),
        end=ends.tolist(),
        pos=pos[heads].tolist(),
        ts=e_ts[heads].tolist(),
        addrs=e_addrs[heads].tolist(),
        sport=e_sport[heads].tolist(),
        dport=e_dport[heads].tolist(),
        plen=e_plen[heads].tolist(),
        rev=e_rev[heads].tolist(),
        fresh=fresh[heads].tolist(),
        e_pos=pos,
        e_ts=e_ts,
        e_addrs=e_addrs,
        e_sport=e_sport,
        e_dport=e_dport,
        e_plen=e_plen,
        e_rev=e_rev,
        count_rev=np.concatenate((zero, np.cumsum(e_rev))),
        bytes_all=np.concatenate((zero, np.cumsum(e_plen))),
        bytes_rev=np.concatenate((zero, np.cumsum(np.where(e_rev, e_plen, 0)))),
    )
