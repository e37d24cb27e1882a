"""The probe's engine: frames in, events out.

One class keeps the hot path in one place. Live, frame by frame (`feed`): a bulk
TCP segment is a header decode, one dict lookup and four counter updates. From a
pcap file, block by block (`feed_block`): numpy reads every record's headers at
once (`batch`), and the TCP segments of a flow with nothing left to inspect are
counted per flow and block in one step, while everything else still goes through
the per-packet path in capture order; tests/probe/test_batch.py holds the two
paths to the same events. Everything slower happens once per flow or once per
lookup. The engine records facts and observations only: judging is the policy's
job, storing is the runner's.

Events leave as documents (`EventDoc`: an EgressEvent's fields as plain data) and
become models where they leave the engine's process or meet code that reads models:
building tens of thousands of nested pydantic models in the reading process took
about a quarter of its time, only for the judging process to parse them again.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from heapq import heapify, heappop, heapreplace
from itertools import islice
from typing import Any
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, Field, field_validator

from auditor.model import EgressEvent
from auditor.probe import dissect as dx
from auditor.probe.batch import BARRIER, BULK, Headers, read_headers, segments
from auditor.probe.capture import Records
from auditor.probe.dissect import (
    ACK,
    FIN,
    FRAGMENT,
    ICMP,
    ICMPV6,
    RST,
    SYN,
    TCP,
    UDP,
    ClientHello,
    DnsMessage,
    DnsRecord,
    Malformed,
    decode,
    http_request,
    ip_text,
    parse_dns,
    qtype_name,
    tls_client_hello,
)
from auditor.probe.dns import DOH_HOSTS, DOH_IPS, Provenance, Resolution, TunnelDetector, TunnelLimits, names_of
from auditor.probe.flows import (
    INSP_DNS,
    INSP_DONE,
    INSP_FIRST,
    INSP_HTTP,
    INSP_QUIC,
    INSP_TLS,
    MAX_HELD,
    Flow,
    FlowTable,
    Networks,
    Stream,
    direction,
    orient,
)
from auditor.probe.fragments import Datagram, Key, Reassembler
from auditor.probe.quic import CryptoStream, is_long_header
from auditor.redact import redact_query

EventDoc = dict[str, Any]  # an EgressEvent's fields (nested ones as dicts); validated as one where it is used
_Headers = tuple[int, bytes, int, int, int, int, int, int, int]  # what `decode` gives, laid out as `dissect.Decoded`
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_S = 1_000_000
MAX_STREAM = 65536
_BATCH_MIN = 32  # fewer records than this: numpy's fixed cost outweighs the per-packet loop
_MAX_SWEEPS_PER_BLOCK = 16


def _first_at_or_after(ts: np.ndarray, start: int, due: int) -> int:
    """The first record from `start` on whose time reaches `due` (a sweep), else len(ts)."""
    hit = np.flatnonzero(ts[start:] >= due)
    return start + int(hit[0]) if len(hit) else len(ts)


def when(time_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_us)


class ProbeConfig(BaseModel):
    """What the probe needs to know about the site; from the pack's overlay or flags."""

    sensor_id: str = "probe"
    cluster_cidrs: list[str] = Field(default_factory=list)  # empty: private, loopback, link-local ranges
    cluster_dns: list[str] = Field(default_factory=list)  # empty: any resolver inside the cluster is the cluster's
    proxies: list[str] = Field(default_factory=list)  # "ip:port" of the audit proxy
    check_bypass: bool | None = None  # None: when a proxy is configured
    tcp_idle_s: int = 300
    udp_idle_s: int = 60
    icmp_idle_s: int = 60
    linger_s: int = 2  # a closed TCP flow waits this long for its last packets
    dns_timeout_s: int = 5
    dns_warmup_s: int = 0  # flows this soon after start are not direct-ip for want of a lookup
    max_flows: int = 200_000
    max_pending_dns: int = 50_000
    icmp_payload_max: int = 64  # bytes of echo payload; ping sends 56 (Linux) or 32 (Windows)
    malformed_events_per_reason: int = 100
    fragment_timeout_s: int = 30  # of capture time since a datagram's first fragment, as Linux
    max_fragment_datagrams: int = 10_000  # pending reassembly; when full the oldest is dropped
    max_fragment_size: int = 65_535  # bytes a reassembled datagram may carry
    max_fragment_bytes: int = 32 << 20  # held by pending datagrams, bookkeeping included
    tunnel: TunnelLimits = Field(default_factory=TunnelLimits)

    @field_validator("cluster_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
        return value

    @field_validator("cluster_dns")
    @classmethod
    def _resolvers(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(ip)) for ip in value]

    @field_validator("proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        out = []
        for proxy in value:
            host, sep, port = proxy.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"proxy {proxy!r} is not IP:PORT")
            out.append(f"{ipaddress.ip_address(host.strip('[]'))}:{int(port)}")
        return out

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    @property
    def bypass_enabled(self) -> bool:
        return bool(self.proxies) if self.check_bypass is None else self.check_bypass


@dataclass
class _Query:
    time_us: int
    qname: str
    qtype: str
    over: str
    client: bytes
    cport: int
    server: bytes
    sport: int
    signs: list[str]


class ProbeStats(BaseModel):
    packets: int = 0
    bytes: int = 0
    non_ip: int = 0
    fragments: int = 0
    reassembled: int = 0
    fragments_pending: int = 0
    other_protocols: dict[str, int] = Field(default_factory=dict)
    malformed: dict[str, int] = Field(default_factory=dict)
    flows: int = 0
    active_flows: int = 0
    evicted_flows: int = 0
    dns: int = 0
    tls: int = 0
    events: int = 0
    observations: dict[str, int] = Field(default_factory=dict)


class Probe:
    """Feed it frames with `packet`; collect events from `out` (and `held`: flows
    whose proxy coverage must be checked before they are final)."""

    def __init__(self, config: ProbeConfig | None = None, *, networks: Networks | None = None) -> None:
        self.config = cfg = config or ProbeConfig()
        self.nets = networks or Networks(cfg.cluster_cidrs or None)
        self.table = FlowTable(cfg.max_flows)
        self._keys = self.table.keys
        self.provenance = Provenance()
        self.tunnels = TunnelDetector(cfg.tunnel)
        self.pending: OrderedDict[tuple[bytes, bytes, int, int], _Query] = OrderedDict()
        # queries answered within the timeout: (time, name, type, records), to know a repeated answer
        self.answered: OrderedDict[tuple[bytes, bytes, int, int], tuple[int, str, str, tuple[DnsRecord, ...]]] = OrderedDict()
        self.out: list[EventDoc] = []
        self.held: list[EgressEvent] = []
        self.cluster_dns = {socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip) for ip in cfg.cluster_dns}
        self.proxies: set[tuple[str, int]] = set()
        for proxy in cfg.proxies:
            host, _, port = proxy.rpartition(":")
            self.proxies.add((host.strip("[]"), int(port)))
        self.packets = 0
        self.bytes = 0
        self.bulk = 0  # packets the batched path counted per flow without a look of their own
        self.non_ip = 0
        self.fragments = 0
        self.reassembled = 0
        self.frags = Reassembler(
            max_datagrams=cfg.max_fragment_datagrams,
            max_size=cfg.max_fragment_size,
            max_bytes=cfg.max_fragment_bytes,
            timeout_us=cfg.fragment_timeout_s * _S,
        )
        self.other: Counter[int] = Counter()
        self.malformed: Counter[str] = Counter()
        self.obs_counts: Counter[str] = Counter()
        self.flows_out = 0
        self.dns_out = 0
        self.tls_out = 0
        self.start_us = 0
        self.now_us = 0
        self._next_sweep = 0
        self._sweep_every = _S

    # ------------------------------------------------------------ hot path

    def packet(self, ts: int, linktype: int, data: bytes, wirelen: int) -> None:
        """One frame (live capture hands them over one at a time)."""
        self.feed(((ts, linktype, data, wirelen),), 1)

    def feed(self, frames: Iterable[tuple[int, int, bytes, int]], limit: int) -> int:
        """Up to `limit` frames from `frames`; returns how many were read (0: none left).
        The loop holds the fast path itself: a call per packet is a cost at this rate."""
        keys = self._keys
        slow = self._slow
        n = 0
        nbytes = 0
        next_sweep = self._next_sweep
        for ts, linktype, data, wirelen in islice(frames, limit):
            n += 1
            nbytes += wirelen
            if ts >= next_sweep:
                self.tick(ts)
                next_sweep = self._next_sweep
            # Fast path: IPv4/TCP without IP options on a known flow with nothing left to
            # read, behind Ethernet, SLL or SLL2. Most packets of a busy node are these.
            if len(data) >= 54:
                if linktype == 1:
                    off = 14 if data[12] == 8 and data[13] == 0 else 0
                elif linktype == 276:
                    off = 20 if data[0] == 8 and data[1] == 0 else 0
                elif linktype == 113:
                    off = 16 if data[14] == 8 and data[15] == 0 else 0
                else:
                    off = 0
                if off and data[off] == 0x45 and data[off + 9] == 6 and len(data) >= off + 40:
                    l4 = off + 20
                    entry = keys.get((6, data[off + 12 : l4], (data[l4] << 8) | data[l4 + 1], (data[l4 + 2] << 8) | data[l4 + 3]))
                    if entry is not None:
                        flow = entry[0]
                        doff = (data[l4 + 12] >> 4) << 2
                        plen = ((data[off + 2] << 8) | data[off + 3]) - 20 - doff
                        # The slow path would read this packet the same way: no SYN/FIN/RST,
                        # not a fragment, header lengths that fit (else it is counted malformed).
                        if (not flow.insp or plen == 0) and not data[l4 + 13] & 7 and doff >= 20 and plen >= 0 and not (data[off + 6] & 0x3F or data[off + 7]):
                            side = entry[1]
                            flow.last = ts
                            flow.pk[side] += 1
                            flow.by[side] += plen
                            continue
            slow(ts, linktype, data)
        self.packets += n
        self.bytes += nbytes
        return n

    def feed_block(self, block: Records) -> int:
        """A block of pcap records (`FileCapture.blocks`); returns how many were read.

        The same result as `feed` over the block's frames, event for event: numpy sorts
        the records (`batch.read_headers`); whatever `feed` would send to the slow path
        still goes there, one packet at a time in capture order; TCP segments of a flow
        with nothing left to inspect are counted per flow in one step. Sweeps (`tick`)
        and records whose flow a block cannot key (VLAN, IP options) cut the block, so
        nothing reads a flow's counters while a bulk count is ahead of capture order.
        """
        n = len(block.offsets)
        h = read_headers(block) if n >= _BATCH_MIN else None
        if h is None:
            return self.feed(block.frames(), n)
        cuts = np.flatnonzero(h.cls == BARRIER).tolist()
        if len(cuts) * 8 > n:
            return self.feed(block.frames(), n)  # mostly tagged or optioned: the per-packet path is as fast
        ts = h.ts
        start = 0
        ticks = 0
        tick_at = _first_at_or_after(ts, 0, self._next_sweep)
        cut = 0
        while start < n:
            while cut < len(cuts) and cuts[cut] < start:
                cut += 1
            stop = min(tick_at, cuts[cut] if cut < len(cuts) else n)
            if stop - start >= _BATCH_MIN and len(self.table) + stop - start < self.config.max_flows:
                self._bulk(block, h, start, stop)  # no record in it can fill the table (an early flush reads counters)
            elif stop > start:
                self.feed(block.frames(start, stop), stop - start)
            if stop >= n:
                break
            sweep = self._next_sweep
            self.feed(block.frames(stop, stop + 1), 1)  # a sweep is due, or a record a block cannot key
            start = stop + 1
            if self._next_sweep != sweep:
                ticks += 1
                if ticks > _MAX_SWEEPS_PER_BLOCK:  # a sparse capture: a sweep every few packets
                    self.feed(block.frames(start), n - start)
                    break
            if start >= tick_at:
                tick_at = _first_at_or_after(ts, start, self._next_sweep)
        return n

    def _bulk(self, block: Records, h: Headers, a: int, b: int) -> None:
        """Records `a` to `b` of a block, with no sweep due and every record keyed.

        Non-BULK records go to the slow path in order. A segment (a run of one flow's
        BULK records with none of its KEYED ones between) is looked at when capture order
        reaches its head: if the flow has nothing to inspect, the whole rest of the
        segment is counted at once (nothing but the flow's own later records, which come
        after the segment, reads those counters); otherwise the head takes the per-packet
        decision and the next record becomes the head.
        """
        self.packets += b - a
        self.bytes += int(h.wirelen[a:b].sum())
        data, linktype, slow, keys = block.data, block.linktype, self._slow, self._keys
        cls = h.cls[a:b]
        other = np.flatnonzero(cls != BULK) + a
        o_ts = h.ts[other].tolist()
        o_start = h.start[other].tolist()
        o_end = (h.start[other] + h.caplen[other]).tolist()
        o_pos = other.tolist()
        seg = segments(h, a, b)
        if seg is None:
            for i in range(len(o_pos)):
                slow(o_ts[i], linktype, data[o_start[i] : o_end[i]])
            return
        heads, ends = seg.head, seg.end
        count_rev, bytes_all, bytes_rev, e_ts = seg.count_rev, seg.bytes_all, seg.bytes_rev, seg.e_ts
        back = h.ip + 12  # from the IPv4 source address back to the start of the frame

        def count(flow: Flow, side: int, c: int, e: int, rev: bool) -> None:
            """Entries c..e of a segment onto the flow, by direction; `rev`: entry c's direction."""
            n_rev = count_rev.item(e) - count_rev.item(c)
            b_rev = bytes_rev.item(e) - bytes_rev.item(c)
            n_fwd = e - c - n_rev
            b_fwd = bytes_all.item(e) - bytes_all.item(c) - b_rev
            if rev:
                n_fwd, n_rev, b_fwd, b_rev = n_rev, n_fwd, b_rev, b_fwd
            flow.pk[side] += n_fwd
            flow.by[side] += b_fwd
            flow.pk[1 - side] += n_rev
            flow.by[1 - side] += b_rev
            flow.last = e_ts.item(e - 1)
            self.bulk += e - c

        heap: list[tuple[int, int, int]] = []  # (record, segment, entry): the next record of each open segment
        for i, x in enumerate(seg.addrs):
            if seg.fresh[i]:  # nothing of this flow comes before it here: its state is as it is now
                entry = keys.get((6, data[x : x + 8], seg.sport[i], seg.dport[i]))
                if entry is not None and not entry[0].insp:
                    count(entry[0], entry[1], heads[i], ends[i], seg.rev[i])
                    continue
            heap.append((seg.pos[i], i, heads[i]))
        heapify(heap)
        j = 0
        n_other = len(o_pos)
        while heap:
            p, i, c = heap[0]
            while j < n_other and o_pos[j] < p:
                slow(o_ts[j], linktype, data[o_start[j] : o_end[j]])
                j += 1
            if c == heads[i]:
                x, sport, dport, plen, rev, t = seg.addrs[i], seg.sport[i], seg.dport[i], seg.plen[i], seg.rev[i], seg.ts[i]
            else:  # walking a segment whose flow is still being inspected
                x, sport, dport = seg.e_addrs.item(c), seg.e_sport.item(c), seg.e_dport.item(c)
                plen, rev, t = seg.e_plen.item(c), seg.e_rev.item(c), e_ts.item(c)
            entry = keys.get((6, data[x : x + 8], sport, dport))
            if entry is not None:
                flow, side = entry
                if not flow.insp:
                    count(flow, side, c, ends[i], rev)
                    heappop(heap)
                    continue
                if plen == 0:
                    flow.last = t
                    flow.pk[side] += 1
                else:
                    slow(t, linktype, data[x - back : x - back + int(h.caplen[p])])
            else:
                slow(t, linktype, data[x - back : x - back + int(h.caplen[p])])
            if c + 1 < ends[i]:
                heapreplace(heap, (seg.e_pos.item(c + 1), i, c + 1))
            else:
                heappop(heap)
        while j < n_other:
            slow(o_ts[j], linktype, data[o_start[j] : o_end[j]])
            j += 1

    def _slow(self, ts: int, linktype: int, data: bytes) -> None:
        """Everything the fast path does not take: full decode, new flows, payloads."""
        try:
            d = decode(linktype, data)
        except Malformed as exc:
            self._malformed(ts, exc.reason, None)
            return
        if d is None:
            self.non_ip += 1
            return
        proto, addrs, alen, sport, dport, flags, seq, poff, pend = d
        if proto == FRAGMENT:
            whole = self._reassemble(ts, d, data)
            if whole is None:
                return
            data, (proto, addrs, alen, sport, dport, flags, seq, poff, pend) = whole
        if proto == TCP or proto == UDP:
            ks, kd = sport, dport
        elif proto == ICMP or proto == ICMPV6:
            ks, kd = (seq, seq) if sport in (0, 8, 128, 129) else (256 + sport, dport)
        else:  # GRE, ESP, SCTP, ...: a tunnel out is egress like any other, so it is a flow
            self.other[proto] += 1
            ks, kd = 0, 0
        key = (proto, addrs, ks, kd)
        entry = self.table.keys.get(key)
        if entry is None or (proto == TCP and flags & 0x12 == SYN and (entry[0].closed_at or entry[0].midstream)):
            if entry is not None:
                self.table.remove(entry[0])
                self._emit_flow(entry[0])
            flow, side = self._new_flow(proto, addrs, alen, ks, kd, flags, ts, sport)
        else:
            flow, side = entry
        flow.last = ts
        flow.pk[side] += 1
        plen = pend - poff
        flow.by[side] += plen
        if proto == TCP:
            if flags & 7:
                self._tcp_flags(flow, side, flags, ts, seq)
            if plen > 0 and flow.insp:
                self._inspect_tcp(flow, side, data[poff:pend], seq + 1 if flags & SYN else seq, ts)
        elif proto == UDP:
            if flow.dns_only:
                self._dns_datagram(flow, side, data[poff:pend], ts, "udp")
            elif flow.insp and side == 0:
                self._inspect_udp(flow, data[poff:pend], ts)
        elif plen > flow.icmp_max and sport in (0, 8, 128, 129):
            flow.icmp_max = plen

    def _new_flow(
        self, proto: int, addrs: bytes, alen: int, sport: int, dport: int, flags: int, ts: int, itype: int
    ) -> tuple[Flow, int]:
        rev = orient(proto, sport, dport, flags, itype)
        if rev and proto == UDP and self.nets.internal(addrs[:alen]) and not self.nets.internal(addrs[alen:]):
            # From inside out, the sender opened it whatever the ports say: DNS-shaped data
            # from a pod's port 53 is egress, not a lookup by the outside host.
            rev = False
        if rev:
            flow = Flow(proto, addrs[alen:] + addrs[:alen], alen, dport, sport, ts)
        else:
            flow = Flow(proto, addrs, alen, sport, dport, ts)
        if proto == TCP:
            flow.midstream = not flags & SYN
            if flow.midstream:
                flow.notes.append("started before the capture: the opener is inferred from the ports")
            flow.insp = INSP_DNS if 53 in (sport, dport) else INSP_FIRST
        elif proto == UDP and not flow.dns_only:
            flow.insp = INSP_QUIC
        if len(self.table) >= self.config.max_flows:
            for old in self.table.evict():
                old.notes.append("flushed early: the flow table was full")
                self._emit_flow(old)
        self.table.add(flow)
        return flow, 1 if rev else 0

    def _tcp_flags(self, f: Flow, side: int, flags: int, ts: int, seq: int) -> None:
        if flags & SYN:
            # An ISN counts until the handshake is answered or data is read: a SYN with a new
            # ISN after that would re-base reassembly and hide the hello, while the real
            # connection goes on with the old one.
            if flags & ACK:
                if side == 1:
                    if f.rseq < 0 and f.dstreams is None:
                        f.rseq = (seq + 1) & 0xFFFFFFFF
                    f.synack = True
            elif side == 0:
                f.syn = True
                isn = (seq + 1) & 0xFFFFFFFF  # the client's first data byte
                if f.stream is None and f.dstreams is None and (f.nseq < 0 or not f.synack):
                    f.nseq = isn
                elif isn != f.nseq and f.nseq >= 0 and "SYN with a new ISN ignored: the connection was under way" not in f.notes:
                    f.notes.append("SYN with a new ISN ignored: the connection was under way")
        if flags & RST and not f.rst:
            f.rst = True
            f.rst_side = side
            f.closed_at = ts
        if flags & FIN:
            f.fin |= 1 << side
            if f.fin == 3 and not f.closed_at:
                f.closed_at = ts

    # ------------------------------------------------------------ payload inspection

    def _inspect_tcp(self, f: Flow, side: int, payload: bytes, seq: int, ts: int) -> None:
        if f.insp == INSP_DNS:
            self._dns_stream(f, side, payload, seq, ts)
            return
        if side:
            if f.insp == INSP_FIRST and f.pk[1] > 16:
                f.insp = INSP_DONE  # the server talks and the client never does: nothing to read
                f.stream = None
            return
        stream = f.stream
        if stream is None:
            stream = f.stream = Stream(seq if f.nseq < 0 else f.nseq)  # no SYN seen: take the stream from here
        took = stream.add(seq, payload)
        if len(stream.held) > MAX_HELD:
            self._malformed(ts, "tcp-out-of-order", f)
            f.notes.append("handshake not reassembled: too many segments out of order")
            f.insp = INSP_DONE
            f.stream = None
            return
        if not took:
            return
        buf = stream.data
        if f.insp == INSP_FIRST:
            if buf[0] == 0x16:
                f.insp = INSP_TLS
            elif dx.looks_like_http(buf):
                f.insp = INSP_HTTP
            else:
                f.insp = INSP_DONE
                f.stream = None
                return
        data = bytes(buf)
        try:
            if f.insp == INSP_TLS:
                hello = tls_client_hello(data)
                if isinstance(hello, ClientHello):
                    self._client_hello(f, hello, ts)
                elif hello is None:
                    f.insp = INSP_DONE
            else:
                req = http_request(data)
                if isinstance(req, dx.HttpRequest):
                    f.http = (req.method, req.target, req.host)
                    f.insp = INSP_DONE
                elif req is None:
                    f.insp = INSP_DONE
        except Malformed as exc:
            self._malformed(ts, exc.reason, f)
            f.insp = INSP_DONE
        if f.insp != INSP_DONE and len(buf) > MAX_STREAM:
            self._malformed(ts, "handshake-too-long", f)
            f.insp = INSP_DONE
        if f.insp == INSP_DONE:
            f.stream = None

    def _inspect_udp(self, f: Flow, payload: bytes, ts: int) -> None:
        if f.pk[0] > 8:
            f.insp = INSP_DONE
            f.crypto = None
            return
        if not is_long_header(payload):
            if not f.quic and len(payload) >= 7 and payload[0] & 0xC0 == 0xC0 and f.dport in (443, 853, 8443):
                f.quic = True
                f.notes.append(f"QUIC version {payload[1:5].hex()} not decrypted")
            if not f.quic:
                f.insp = INSP_DONE
            return
        f.quic = True
        if f.crypto is None:
            f.crypto = CryptoStream()
        try:
            hello = f.crypto.feed(payload)  # type: ignore[attr-defined]
        except Malformed as exc:
            self._malformed(ts, exc.reason, f)
            f.insp = INSP_DONE
            f.crypto = None
            return
        if hello is not None:
            f.crypto = None
            self._client_hello(f, hello, ts)

    def _client_hello(self, f: Flow, hello: ClientHello, ts: int) -> None:
        f.insp = INSP_DONE
        f.sni = hello.sni
        f.alpn = hello.alpn
        f.ech = hello.ech
        f.grease = hello.grease
        if hello.alpn:
            f.notes.append("alpn offered: " + ",".join(hello.alpn))
        if hello.ech:
            f.notes.append("encrypted client hello offered: the SNI may be a cover name")
        if hello.grease:
            f.notes.append("GREASE values in the hello")
        if not hello.sni:
            f.notes.append("client hello without server name")
        self.tls_out += 1
        obs, notes, name, chain, dirn = self._observe(f)
        dst = ip_text(f.dst)
        self._emit({
            "sensor_id": self.config.sensor_id,
            "kind": "tls",
            "time": when(ts),
            "source": {"ip": ip_text(f.src), "port": f.sport, "scope": "external" if dirn == "inbound" else "unknown"},
            "destination": {
                "host": hello.sni or name,
                "sni": hello.sni,
                "ip": dst,
                "port": f.dport,
                "transport": "udp" if f.proto == UDP else "tcp",
                "app_protocol": "quic" if f.quic else "tls",
                "tls": True,
            },
            "flow": {"direction": dirn, "first_seen": when(f.first), "last_seen": when(ts), "resolved_name": name, "cname_chain": chain},
            "observations": sorted(obs - {"bypass"}),
            "notes": notes,
        })

    # ------------------------------------------------------------ DNS

    def _dns_datagram(self, f: Flow, side: int, msg: bytes, ts: int, over: str) -> None:
        try:
            m = parse_dns(msg)
        except Malformed as exc:
            f.dns_only = False
            self._malformed(ts, exc.reason, f)
            return
        self._dns_message(f, side, m, ts, over)

    def _dns_stream(self, f: Flow, side: int, payload: bytes, seq: int, ts: int) -> None:
        """DNS over TCP, per direction in sequence order: a length, then a message. Taken by
        sequence number, as a receiver does: one retransmitted segment read as new bytes
        shifts the framing and hides every message after it."""
        streams = f.dstreams
        if streams is None:
            streams = [None, None]
            f.dstreams = streams
        stream = streams[side]
        if stream is None:
            start = f.nseq if side == 0 else f.rseq
            stream = streams[side] = Stream(seq if start < 0 else start)  # no handshake seen: from here
        took = stream.add(seq, payload)
        if len(stream.held) > MAX_HELD:
            self._malformed(ts, "tcp-out-of-order", f)
            f.notes.append("DNS over TCP not followed: too many segments out of order")
            f.insp = INSP_DONE
            f.dstreams = None
            return
        if not took:
            return
        buf = stream.data
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                if len(buf) > MAX_STREAM + 2:
                    f.insp = INSP_DONE
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            try:
                m = parse_dns(msg)
            except Malformed as exc:
                self._malformed(ts, exc.reason, f)
                f.insp = INSP_DONE
                f.dstreams = None
                return
            self._dns_message(f, side, m, ts, "tcp")

    def _dns_message(self, f: Flow, side: int, m: DnsMessage, ts: int, over: str) -> None:
        a = f.alen
        snd, rcv = (f.addrs[:a], f.addrs[a:]) if side == 0 else (f.addrs[a:], f.addrs[:a])
        sport, dport = (f.sport, f.dport) if side == 0 else (f.dport, f.sport)
        f.dns_servers |= 1 << (side if m.response else 1 - side)
        if not m.response:
            key = (snd, rcv, sport, m.id)
            qtype = qtype_name(m.qtype)
            signs = self.tunnels.signs(snd, m.qname, qtype, ts)
            if key in self.pending:
                self._dns_event(self.pending.pop(key), None, ts)
            self.pending[key] = _Query(ts, m.qname, qtype, over, snd, sport, rcv, dport, signs)
            if len(self.pending) > self.config.max_pending_dns:
                _, old = self.pending.popitem(last=False)
                self._dns_event(old, None, ts, note="pending-query table full: recorded unanswered")
            return
        # An answer explains addresses only when it answers a query seen from that client to
        # that resolver (id, ports, question) within the timeout: anyone can send a packet
        # shaped like an answer, and one that named api.gretel.cloud at an attacker's
        # address made a direct connection there look resolved.
        key = (rcv, snd, dport, m.id)
        qtype = qtype_name(m.qtype)
        timeout = self.config.dns_timeout_s * _S
        q = self.pending.get(key)
        if q is not None and q.qname == m.qname and q.qtype == qtype and q.sport == sport and ts - q.time_us <= timeout:
            del self.pending[key]
            answered = self.answered
            answered[key] = (ts, m.qname, qtype, m.answers)
            answered.move_to_end(key)
            if len(answered) > self.config.max_pending_dns:
                answered.popitem(last=False)
            self._dns_event(q, m, ts)
            return
        seen = self.answered.get(key)
        if seen is not None and seen[1] == m.qname and seen[2] == qtype and ts - seen[0] <= timeout:
            q = _Query(ts, m.qname, qtype, over, rcv, dport, snd, sport, [])
            if _records(seen[3]) == _records(m.answers):
                self._dns_event(q, m, ts, note="a repeat of the answer to this query", explains=False)
            else:
                note = "a second answer to a query already answered, naming other addresses: they are not taken as resolved"
                self._dns_event(q, m, ts, note=note, explains=False, unsolicited=True)
            return
        q = _Query(ts, m.qname, qtype, over, rcv, dport, snd, sport, self.tunnels.signs(rcv, m.qname, qtype, ts))
        since_start = ts - self.start_us
        if since_start < timeout and since_start < self.config.dns_warmup_s * _S:
            self._dns_event(q, m, ts, note="answer without a query seen, within the DNS warm-up after start: its query may predate the capture")
        elif since_start < timeout:
            note = "answer without a query seen, just after the capture started: its query may predate the capture; its addresses are not taken as resolved"
            self._dns_event(q, m, ts, note=note, explains=False)
        else:
            note = f"answer to no query seen (same id, ports and question, to this resolver, within {self.config.dns_timeout_s} s): its addresses are not taken as resolved"
            self._dns_event(q, m, ts, note=note, explains=False, unsolicited=True)

    def _dns_event(
        self, q: _Query, m: DnsMessage | None, ts: int, note: str | None = None, *, explains: bool = True, unsolicited: bool = False
    ) -> None:
        """One lookup. `explains`: the answer's addresses enter provenance (for a client inside
        the cluster: an outside host's lookup says nothing of where pods connect);
        `unsolicited`: it answered no query seen."""
        explains = explains and m is not None and self.nets.internal(q.client)
        chain: list[str] = []
        answers: list[str] = []
        ttl: int | None = None
        notes = [note] if note else []
        if m is not None:
            cnames = {r.name: r.value for r in m.answers if r.rtype == 5}
            cur = m.qname
            while cur in cnames and len(chain) < 16:
                cur = cnames[cur]
                chain.append(cur)
            for r in m.answers:
                if r.rtype in (1, 28):
                    answers.append(r.value)
                    ttl = r.ttl if ttl is None else min(ttl, r.ttl)
                    if explains:
                        addr = socket.inet_pton(socket.AF_INET6 if r.rtype == 28 else socket.AF_INET, r.value)
                        self.provenance.add(q.client, addr, Resolution(q.qname, tuple(chain), ts, r.ttl))
                elif r.rtype != 5:
                    answers.append(r.value)
            if m.truncated:
                notes.append("truncated answer (TC): the client retries over TCP")
        else:
            notes.append("unanswered")
        obs: list[str] = ["dns-unsolicited-answer"] if unsolicited else []
        if q.signs:
            obs.append("dns-tunnel")
            notes.append("tunnelling signs: " + ", ".join(q.signs))
        if self._foreign_resolver(q.server):
            obs.append("dns-foreign-resolver")
        self.dns_out += 1
        server = ip_text(q.server)
        over = "tcp" if q.over == "tcp" else "udp"
        self._emit({
            "sensor_id": self.config.sensor_id,
            "kind": "dns",
            "time": when(q.time_us),
            "source": {"ip": ip_text(q.client), "port": q.cport},
            "destination": {"ip": server, "port": q.sport, "transport": over, "app_protocol": "dns"},
            "dns": {
                "qname": q.qname,
                "qtype": q.qtype,
                "rcode": dx.RCODES.get(m.rcode, f"RCODE{m.rcode}") if m is not None else None,
                "answers": answers,
                "cname_chain": chain,
                "ttl": ttl,
                "resolver": server,
                "over": over,
            },
            "observations": obs,
            "notes": notes,
        })

    def _foreign_resolver(self, server: bytes) -> bool:
        if self.cluster_dns:
            return server not in self.cluster_dns
        return not self.nets.internal(server)

    # ------------------------------------------------------------ observations and events

    def _observe(self, f: Flow) -> tuple[set[str], list[str], str | None, list[str], str]:
        dirn = direction(self.nets, f)
        obs = set(f.obs)
        notes = list(f.notes)
        name: str | None = None
        chain: list[str] = []
        dst_ip = ip_text(f.dst)
        to_proxy = (dst_ip, f.dport) in self.proxies
        if dirn == "inbound":
            obs.add("inbound")
        if to_proxy:
            notes.append("to the audit proxy")
        if dirn == "egress" and not to_proxy and f.proto in (TCP, UDP):
            found, same = self.provenance.explain(f.src, f.dst)
            if found:
                latest = max(found, key=lambda r: r.time_us)
                name, chain = latest.name, list(latest.chain)
                if not same:
                    notes.append("address explained by another client's lookup")
                if f.first > latest.time_us + (latest.ttl + 300) * _S:
                    notes.append(f"lookup of {latest.name} is older than its TTL")
            elif f.midstream and (f.sni is None or f.first - self.start_us < self.config.dns_timeout_s * _S):
                notes.append("DNS provenance unknown: the flow began before the capture")
            elif f.first - self.start_us < self.config.dns_warmup_s * _S:
                notes.append("no lookup seen, within the DNS warm-up after start")
            else:
                obs.add("direct-ip")
                if f.midstream:  # a hello opens a connection: this one began well after the capture did
                    notes.append("no SYN seen, yet a ClientHello began the flow after the capture started")
            names = names_of(found)
            if f.sni and found and f.sni not in names:
                obs.add("sni-dns-mismatch")
                notes.append(f"SNI {f.sni} is not among the names resolved: {', '.join(sorted(names)[:4])}")
            if f.http and f.http[2]:
                host = f.http[2].rsplit(":", 1)[0] if f.http[2].count(":") == 1 else f.http[2].strip("[]")
                if found and host not in names and host != dst_ip:
                    obs.add("sni-dns-mismatch")
                    notes.append(f"Host header {host} is not among the names resolved: {', '.join(sorted(names)[:4])}")
            if f.dport == 853:
                obs.add("dot")
                if f.proto == UDP:
                    notes.append("DNS over QUIC (UDP 853)")
            if f.dport == 443 and (dst_ip in DOH_IPS or (f.sni is not None and f.sni in DOH_HOSTS)):
                obs.add("doh")
            if f.http and "/dns-query" in f.http[1]:
                obs.add("doh")
        if f.quic:
            obs.add("quic")
        if f.icmp_max > self.config.icmp_payload_max:
            obs.add("icmp-payload")
            notes.append(f"ICMP echo payload of {f.icmp_max} bytes")
        return obs, notes, name, chain, dirn

    def _emit_flow(self, f: Flow) -> None:
        if f.dns_only and f.proto == UDP and not self._serves_outside(f):
            return  # every datagram was DNS and is recorded as dns events
        self.flows_out += 1
        if f.crypto is not None or f.insp in (INSP_TLS, INSP_HTTP):
            f.notes.append("handshake incomplete when the flow ended")
        obs, notes, name, chain, dirn = self._observe(f)
        is_icmp = f.proto in (ICMP, ICMPV6)
        http = None
        http_host = None
        if f.http:
            method, target, http_host = f.http
            http = _http_info(method, target)
        host = f.sni or (http["path"] if http is not None and method == "CONNECT" else http_host) or name
        ev: EventDoc = {
            "sensor_id": self.config.sensor_id,
            "kind": "icmp" if is_icmp else "flow",
            "time": when(f.first),
            "source": {"ip": ip_text(f.src), "port": None if is_icmp or f.transport == "other" else f.sport, "scope": "external" if dirn == "inbound" else "unknown"},
            "destination": {
                "host": host,
                "sni": f.sni,
                "http_host": http_host,
                "ip": ip_text(f.dst),
                "port": None if is_icmp or f.transport == "other" else f.dport,
                "transport": f.transport,
                "app_protocol": _app_protocol(f),
                "tls": True if (f.sni or f.alpn or f.quic) else False if f.http else None,
            },
            "http": http,
            "flow": {
                "direction": dirn,
                "tcp_state": f.tcp_state(),
                "bytes_up": f.by[0],
                "bytes_down": f.by[1],
                "packets_up": f.pk[0],
                "packets_down": f.pk[1],
                "first_seen": when(f.first),
                "last_seen": when(f.last),
                "resolved_name": name,
                "cname_chain": chain,
            },
            "observations": sorted(obs),
            "notes": notes,
        }
        candidate = (
            dirn == "egress" and not is_icmp and self.config.bypass_enabled and "to the audit proxy" not in notes and f.insp != INSP_DNS
        )
        if candidate:
            self.held.append(EgressEvent.model_validate(ev))  # judged later, once the proxy's records are in: a model, as coverage reads it
        else:
            self._emit(ev)

    def _serves_outside(self, f: Flow) -> bool:
        """A resolver inside the cluster answered, or was asked by, a client outside it: a pod
        serving DNS to an outside host, or sending answer-shaped data out. Kept as a flow, with
        its bytes and direction, rather than folded into lookups by that host."""
        a = f.alen
        for side in (0, 1):
            if f.dns_servers >> side & 1:
                server, client = (f.addrs[:a], f.addrs[a:]) if side == 0 else (f.addrs[a:], f.addrs[:a])
                if not self.nets.internal(client) and self.nets.internal(server):
                    f.notes.append("DNS between a resolver inside the cluster and a client outside it")
                    return True
        return False

    def _emit(self, ev: EventDoc) -> None:
        for o in ev["observations"]:
            self.obs_counts[o] += 1
        self.out.append(ev)

    def _malformed(self, ts: int, reason: str, f: Flow | None, detail: str | None = None) -> None:
        self.malformed[reason] += 1
        if f is not None:
            f.obs.add("malformed")
            if reason not in f.notes:
                f.notes.append(f"malformed: {reason}")
            return
        if self.malformed[reason] > self.config.malformed_events_per_reason:
            return
        self._emit({
            "sensor_id": self.config.sensor_id,
            "kind": "flow",
            "time": when(ts) if ts > 0 else when(self.now_us),
            "observations": ["malformed"],
            "notes": [f"malformed: {reason}", detail] if detail else [f"malformed: {reason}"],
        })

    # ------------------------------------------------------------ IP fragments

    def _reassemble(self, ts: int, d: _Headers, data: bytes) -> tuple[bytes, _Headers] | None:
        """A fragment into its datagram; the datagram rebuilt and decoded once it is whole,
        for the per-packet path to take as if it had arrived so."""
        self.fragments += 1
        _, addrs, _, offset, more, proto, ident, poff, pend = d
        if pend < poff:
            self._malformed(ts, "fragment-length", None)
            return None
        frags = self.frags
        whole = frags.add(ts, addrs, proto, ident, offset, more, data[poff:pend], pend - poff)
        if frags.problems:
            self._fragment_problems()
        if whole is None:
            return None
        self.reassembled += 1
        try:
            got = decode(dx.LINK_RAW, whole)
        except Malformed as exc:
            self._malformed(ts, exc.reason, None)
            return None
        if got is None or got[0] == FRAGMENT:  # a fragment header inside a reassembled datagram
            self._malformed(ts, "fragment-nested", None)
            return None
        return whole, got

    def _fragment_problems(self) -> None:
        """Record what the reassembler gave up on or found rewritten, naming what it knew of each datagram."""
        for reason, key, d in self.frags.problems:
            self._malformed(d.first, reason, None, _datagram_note(key, d))
        self.frags.problems.clear()

    # ------------------------------------------------------------ time

    def tick(self, now: int) -> None:
        """Flush idle and closed flows and unanswered lookups, as of capture time `now`."""
        if not self.start_us:
            self.start_us = now
        self.now_us = max(self.now_us, now)
        self._next_sweep = now + self._sweep_every
        cfg = self.config
        for f in self.table.expired(now, tcp_idle=cfg.tcp_idle_s * _S, udp_idle=cfg.udp_idle_s * _S, icmp_idle=cfg.icmp_idle_s * _S, linger=cfg.linger_s * _S):
            self._emit_flow(f)
        if self.frags.pending:
            self.frags.expire(now)
            if self.frags.problems:
                self._fragment_problems()
        limit = now - cfg.dns_timeout_s * _S
        while self.pending:
            key, q = next(iter(self.pending.items()))
            if q.time_us > limit:
                break
            del self.pending[key]
            self._dns_event(q, None, now)
        answered = self.answered
        while answered and next(iter(answered.values()))[0] <= limit:
            answered.popitem(last=False)

    def finish(self) -> None:
        """The capture ended: every open flow and pending lookup becomes an event."""
        self.frags.drain()
        self._fragment_problems()
        for f in self.table.drain():
            if not f.closed_at:
                f.notes.append("still open when the capture ended")
            self._emit_flow(f)
        while self.pending:
            _, q = self.pending.popitem(last=False)
            self._dns_event(q, None, self.now_us, note="capture ended before an answer")

    def stats(self) -> ProbeStats:
        return ProbeStats(
            packets=self.packets,
            bytes=self.bytes,
            non_ip=self.non_ip,
            fragments=self.fragments,
            reassembled=self.reassembled,
            fragments_pending=len(self.frags.pending),
            other_protocols={str(k): v for k, v in self.other.items()},
            malformed=dict(self.malformed),
            flows=self.flows_out,
            active_flows=len(self.table),
            evicted_flows=self.table.evictions,
            dns=self.dns_out,
            tls=self.tls_out,
            observations=dict(self.obs_counts),
        )


def _datagram_note(key: Key, d: Datagram) -> str:
    """Who sent what to whom, as far as the fragments received tell."""
    addrs, _, _ = key
    alen = len(addrs) // 2
    src, dst = ip_text(addrs[:alen]), ip_text(addrs[alen:])
    name = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP", ICMPV6: "ICMPv6"}.get(d.proto, f"protocol {d.proto}")
    if d.proto in (TCP, UDP) and d.starts and d.starts[0] == 0 and len(d.chunks[0]) >= 4:
        head = d.chunks[0]
        if alen == 16:
            src, dst = f"[{src}]", f"[{dst}]"
        src, dst = f"{src}:{(head[0] << 8) | head[1]}", f"{dst}:{(head[2] << 8) | head[3]}"
    total = f"{d.total:,}" if d.total >= 0 else "unknown"
    family = "IPv6" if alen == 16 else "IPv4"
    return f"{family} {name} fragments {src} -> {dst}: {d.count} received, {d.covered:,} of {total} bytes"


def _records(answers: tuple[DnsRecord, ...]) -> frozenset[tuple[int, str]]:
    """What an answer says, in any order and whatever the TTLs: a resolver answering a
    retried query again may shuffle its records or count their TTLs down."""
    return frozenset((r.rtype, r.value) for r in answers)


_IP_PROTOCOLS = {47: "gre", 50: "esp", 51: "ah", 132: "sctp", 4: "ipip", 41: "ipv6-in-ipv4", 115: "l2tp"}


def _app_protocol(f: Flow) -> str | None:
    if f.transport == "other":
        return _IP_PROTOCOLS.get(f.proto, f"ip-proto-{f.proto}")
    if f.quic:
        return "quic"
    if f.sni or f.alpn:
        return "tls"
    if f.http:
        return "http/1.1"
    if 53 in (f.sport, f.dport):
        return "dns"
    return None


def _http_info(method: str, target: str) -> dict[str, str | None]:
    """Method, path and redacted query of a plaintext request (origin, absolute or authority form)."""
    if method == "CONNECT":
        return {"method": method, "scheme": None, "path": target}
    try:
        parts = urlsplit(target) if "://" in target else None
    except ValueError:  # a hostile absolute form (`http://[x/`): read as a path
        parts = None
    if parts is not None:
        path, query = parts.path or "/", parts.query
    else:
        path, _, query = target.partition("?")
    return {"method": method, "scheme": "http", "path": path or "/", "query": redact_query(query) if query else None}
