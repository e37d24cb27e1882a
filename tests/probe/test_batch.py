"""The batched path for pcap files (`Probe.feed_block`) against the per-packet path
(`Probe.feed`): over every kind of capture the probe's tests cover, fuzzed frames, and
a hypothesis-generated mix of flows, both must give the same events in the same order
(ids aside) and the same counts."""

from __future__ import annotations

import gzip
import random
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import GRE, CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.packet import Packet, Raw, raw

from auditor.errors import AuditorError
from auditor.model import EgressEvent
from auditor.probe.capture import FileCapture
from auditor.probe.engine import Probe, ProbeConfig, ProbeStats
from auditor.probe.runner import feed_file

from .test_fuzz import _frames
from .traffic import Trace, client_hello, quic_initial

POD = "10.42.0.5"
DNS_SERVER = "10.43.0.10"
API_IP = "34.1.2.3"
MSS = 1200


def run(path: Path, batched: bool, **config: object) -> tuple[list[dict], ProbeStats, int]:
    """Events (ids dropped), counters, and how many packets were counted in bulk."""
    probe = Probe(ProbeConfig(**config))  # type: ignore[arg-type]
    with FileCapture(path) as cap:
        if batched:
            for _ in feed_file(probe, cap):
                pass
        else:
            frames = cap.frames()
            while probe.feed(frames, 1024):
                pass
    probe.finish()
    events = [e.model_dump(mode="json", exclude={"id"}) for e in [*map(EgressEvent.model_validate, probe.out), *probe.held]]
    return events, probe.stats(), probe.bulk


def assert_same(path: Path, **config: object) -> int:
    """Both paths agree on `path`; returns the packets the batched path counted in bulk."""
    ref, ref_stats, ref_bulk = run(path, False, **config)
    got, got_stats, bulk = run(path, True, **config)
    assert ref_bulk == 0
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(ref, got)):
        assert b == a, f"event {i} differs"
    assert got_stats == ref_stats
    return bulk


def bulk_flow(client: str, server: str, segments: int, *, sport: int = 33333) -> list[Packet]:
    """A TLS-port connection that is mostly bulk: handshake, hello, many server segments with ACKs."""
    ip_c, ip_s = IP(src=client, dst=server), IP(src=server, dst=client)
    hello = client_hello("api.gretel.cloud")
    c, s = 1000, 9000
    out = [ip_c / TCP(sport=sport, dport=443, flags="S", seq=c), ip_s / TCP(sport=443, dport=sport, flags="SA", seq=s, ack=c + 1)]
    c, s = c + 1, s + 1
    out.append(ip_c / TCP(sport=sport, dport=443, flags="A", seq=c, ack=s))
    out.append(ip_c / TCP(sport=sport, dport=443, flags="PA", seq=c, ack=s) / hello)
    c += len(hello)
    for i in range(segments):
        out.append(ip_s / TCP(sport=443, dport=sport, flags="A" if i % 3 else "PA", seq=s, ack=c) / (b"\x17" * MSS))
        s += MSS
        if i % 2:
            out.append(ip_c / TCP(sport=sport, dport=443, flags="A", seq=c, ack=s))
    out.append(ip_c / TCP(sport=sport, dport=443, flags="FA", seq=c, ack=s))
    out.append(ip_s / TCP(sport=443, dport=sport, flags="FA", seq=s, ack=c + 1))
    out.append(ip_c / TCP(sport=sport, dport=443, flags="A", seq=c + 1, ack=s + 1))
    return out


def with_bulk(case: Trace, segments: int = 60, *, wrap: type | None = None) -> Trace:
    """The case's packets in their times, with a bulk connection spread across the same span,
    and another before it starts and after it ends (so whole blocks are batched)."""
    first, last = float(case.packets[0].time), float(case.packets[-1].time)
    extra = bulk_flow("10.42.0.77", "34.9.9.9", segments, sport=31111) + bulk_flow("10.42.0.78", "34.9.9.8", segments, sport=31112)
    span = max(last - first, 0.001)
    timed = [(float(p.time), i, p) for i, p in enumerate(case.packets)]
    for k, pkt in enumerate(extra):
        timed.append((first - 0.0005 + span * k / len(extra), len(case.packets) + k, pkt))
    timed.sort(key=lambda x: (x[0], x[1]))
    out = Trace(l2=False, linktype=case.linktype)
    for t, _, pkt in timed:
        if wrap is not None:
            pkt = pkt if isinstance(pkt, wrap) else wrap(proto=0x0800) / (pkt[Ether].payload if isinstance(pkt, Ether) else pkt)
        elif not isinstance(pkt, Ether):
            pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt
        pkt.time = t
        out.packets.append(pkt)
    return out


# ---------------------------------------------------------------- every case the probe tests cover


def case_dns_and_tls() -> Trace:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "CNAME", "edge.gretel.cloud"), ("edge.gretel.cloud", "A", API_IP)], ttl=60)
    t.dns(POD, DNS_SERVER, "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "AAAA", "2600:1f14::5")], qtype="AAAA")
    t.dns(POD, DNS_SERVER, "nope.gretel.cloud", [], rcode=3)
    t.dns(POD, DNS_SERVER, "silent.example", answered=False)
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")], [b"\x16\x03\x03\x00\x02ok"] * 40)
    return t


def case_dns_over_tcp() -> Trace:
    t = Trace()
    t.dns(POD, DNS_SERVER, "big.gretel.cloud", [("big.gretel.cloud", "A", API_IP)], tcp=True)
    t.tcp(POD, API_IP, 443, [client_hello("big.gretel.cloud")], [b"y" * 900] * 30)
    return t


def case_split_hellos() -> Trace:
    hello = client_hello("artifacts.gretel.cloud", alpn=("http/1.1",), ech=True, grease=True)
    t = Trace()
    t.tcp(POD, "52.1.1.1", 443, [hello[:40], hello[40:]], [b"z" * 700] * 30)
    t.tcp(POD, "52.1.1.2", 443, [hello[:7], hello[7:90], hello[90:]], [b"z" * 700] * 30, reorder=True)
    return t


def case_quic_ipv6_icmp_gre() -> Trace:
    t = Trace()
    t.udp(POD, "142.250.1.1", 443, quic_initial("quic.gretel.example", split=True))
    pod6, srv6 = "fd00:42::5", "2600:1f14::5"
    t.dns(pod6, "fd00:43::a", "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "AAAA", srv6)], qtype="AAAA")
    t.add(IPv6(src=pod6, dst=srv6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=5555, dport=443, flags="S", seq=1))
    t.add(IPv6(src=srv6, dst=pod6) / TCP(sport=443, dport=5555, flags="SA", seq=10, ack=2))
    t.add(IPv6(src=pod6, dst=srv6) / IPv6ExtHdrHopByHop() / TCP(sport=5555, dport=443, flags="PA", seq=2, ack=11) / client_hello("artifacts.gretel.cloud"))
    t.ping(POD, "203.0.113.51", 1200, count=3)
    for _ in range(3):
        t.add(IP(src=POD, dst="198.51.100.20") / GRE() / IP(src="192.0.2.1", dst="192.0.2.2") / Raw(b"x" * 40))
    t.add(IP(src=POD, dst="198.51.100.21", proto=50) / Raw(b"\x00\x00\x10\x01" + b"z" * 60))
    return t


def case_direct_ip_tunnel_foreign() -> Trace:
    t = Trace()
    t.tcp(POD, "198.51.100.20", 443, [client_hello("api.gretel.cloud")], [b"k" * 1000] * 20)
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [client_hello("evil.example")], [b"k" * 1000] * 20)
    for i in range(30):
        t.dns(POD, DNS_SERVER, f"{i:02d}mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpi{i:03d}.t.exfil.example", [("x", "A", "192.0.2.1")])
    t.dns(POD, "8.8.8.8", "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, "8.8.8.8", 443, [client_hello("dns.google")])
    t.tcp(POD, "9.9.9.9", 853, [client_hello("dns.quad9.net")])
    return t


def case_inbound_states_http() -> Trace:
    t = Trace()
    t.tcp("203.0.113.7", POD, 22, answer="none")
    t.tcp("203.0.113.8", POD, 8080, answer="rst")
    t.tcp("203.0.113.9", POD, 443, [b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n"], [b"HTTP/1.1 200 OK\r\n\r\n"] + [b"p" * 800] * 20)
    t.tcp(POD, "10.42.0.9", 5432, [b"a" * 100], [b"b" * 300] * 25, close=False)
    t.tcp(POD, "10.42.0.10", 6379, [b"ping"], [b"pong"] * 25)
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 80, [b"POST /v1/workflows?token=s3cr3tvalue HTTP/1.1\r\nHost: api.gretel.cloud\r\n\r\n{}"], [b"r" * 600] * 20)
    t.tcp(POD, "10.43.12.7", 3128, [b"CONNECT api.gretel.cloud:443 HTTP/1.1\r\nHost: api.gretel.cloud:443\r\n\r\n"], [b"c" * 500] * 20)
    return t


def case_midstream_and_idle() -> Trace:
    t = Trace()
    t.tcp(POD, "34.5.5.5", 443, [b"\x17" * 300], [b"\x17" * 1000] * 30, handshake=False, close=False)  # began before the capture
    t.udp(POD, "203.0.113.77", 5000, [b"hello"])
    t.tcp(POD, "10.42.0.9", 5432, [b"q"], [b"w" * 200] * 20, close=False)
    t.add(IP(src=POD, dst="10.42.0.10") / UDP(sport=1, dport=2) / b"later", dt=400)  # everything before is idle by now
    t.tcp(POD, "34.5.5.6", 443, [client_hello("api.gretel.cloud")], [b"\x17" * 1000] * 30)
    t.add(IP(src=POD, dst="10.42.0.10") / UDP(sport=1, dport=2) / b"later", dt=1.5)
    t.tcp(POD, "34.5.5.7", 443, [client_hello("api.gretel.cloud")], [b"\x17" * 1000] * 30)
    return t


def case_vlan_and_options() -> Trace:
    """Records a block cannot key: VLAN tags and IP options, between plain ones of the same flows."""
    t = Trace(l2=False)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    inner = Trace()
    inner.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    inner.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")], [b"v" * 900] * 40)
    for i, pkt in enumerate(inner.packets):
        ip = pkt[IP]
        if i % 17 == 3:
            t.add(eth / Dot1Q(vlan=42) / ip)
        elif i % 17 == 11 and ip.haslayer(TCP):
            t.add(eth / IP(src=ip.src, dst=ip.dst, options=[IPOption_RR()]) / ip[TCP])
        else:
            t.add(eth / ip)
    return t


def case_malformed() -> Trace:
    t = Trace(l2=False, linktype=1)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    t.add(Raw(b"\x00\x01\x02"))
    t.add(Ether(type=0x0800) / Raw(b"\x45\x00\x00"))
    t.add(eth / IP(src=POD, dst=API_IP, ihl=2) / Raw(b"x" * 30))
    t.add(eth / IP(src=POD, dst=API_IP) / TCP(sport=1, dport=443, dataofs=2))
    t.add(eth / IP(src="10.42.0.77", dst="34.9.9.9") / TCP(sport=31111, dport=443, flags="A", dataofs=15) / b"short")  # a bulk flow's segment whose header overruns
    t.add(eth / IP(src="34.9.9.9", dst="10.42.0.77", len=30) / TCP(sport=443, dport=31111, flags="A") / (b"x" * 40))  # IP length below the TCP header
    t.add(eth / IP(src="34.9.9.9", dst="10.42.0.77", flags="MF") / TCP(sport=443, dport=31111, flags="A") / (b"f" * 40))  # first fragment
    t.add(eth / IP(src="34.9.9.9", dst="10.42.0.77", frag=100) / Raw(b"g" * 40))  # a later fragment
    t.add(eth / IP(src=POD, dst=DNS_SERVER) / UDP(sport=4444, dport=53) / Raw(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"))
    t.add(eth / IP(src=POD, dst=API_IP) / TCP(sport=2222, dport=443, flags="PA") / Raw(b"\x16\x03\x01\xff\xff\x01" + b"\x00" * 20))
    return t


CASES = {
    "dns-and-tls": case_dns_and_tls,
    "dns-over-tcp": case_dns_over_tcp,
    "split-hellos": case_split_hellos,
    "quic-ipv6-icmp-gre": case_quic_ipv6_icmp_gre,
    "direct-ip-tunnel-foreign": case_direct_ip_tunnel_foreign,
    "inbound-states-http": case_inbound_states_http,
    "midstream-and-idle": case_midstream_and_idle,
    "vlan-and-options": case_vlan_and_options,
    "malformed": case_malformed,
}


def test_every_capture_case_gives_the_same_events_on_both_paths(tmp_path: Path) -> None:
    for name, build in CASES.items():
        path = with_bulk(build()).write(tmp_path / f"{name}.pcap")
        assert assert_same(path) > 0, name  # the batched path did count bulk itself
        assert assert_same(path, proxies=["10.43.12.7:3128"], cluster_cidrs=["10.42.0.0/16", "10.43.0.0/16"], cluster_dns=[DNS_SERVER]), name


def test_cooked_captures_and_a_truncated_file_give_the_same_events(tmp_path: Path) -> None:
    for layer, linktype in ((CookedLinux, 113), (CookedLinuxV2, 276)):
        case = Trace(l2=False, linktype=linktype)
        src = case_dns_and_tls()
        for pkt in src.packets:
            wrapped = layer(proto=0x0800) / pkt[Ether].payload
            wrapped.time = pkt.time
            case.packets.append(wrapped)
        path = with_bulk(case, wrap=layer).write(tmp_path / f"cooked{linktype}.pcap", linktype=linktype)
        assert assert_same(path) > 100, linktype
    full = with_bulk(case_dns_and_tls()).write(tmp_path / "full.pcap")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(full.read_bytes()[:-700])
    assert assert_same(cut) > 100


def test_a_flood_that_fills_the_flow_table_gives_the_same_events(tmp_path: Path) -> None:
    t = Trace()
    for i, pkt in enumerate(bulk_flow("10.42.0.77", "34.9.9.9", 80)):
        t.add(pkt, dt=0.0001)
        if i % 3 == 0:
            t.add(IP(src="198.51.100.9", dst=POD) / TCP(sport=10000 + i, dport=443, flags="S"), dt=0.0001)
    path = t.write(tmp_path / "flood.pcap")
    assert_same(path, max_flows=20)
    assert assert_same(path, max_flows=2000) > 50


def test_fuzzed_frames_give_the_same_events(tmp_path: Path) -> None:
    frames = [frame for _, frame in _frames(4321)]
    random.Random(7).shuffle(frames)
    for linktype, strip in ((1, 0), (113, 0), (276, 0), (101, 14)):
        t = Trace(l2=False, linktype=linktype)
        for frame in frames[:600]:
            t.add(Raw(frame[strip:]), dt=0.0003)
        assert_same(t.write(tmp_path / f"fuzz{linktype}.pcap", linktype=linktype))


def test_records_cut_by_the_read_chunks_are_read_whole_and_damage_is_found(tmp_path: Path) -> None:
    """A file larger than two read chunks, the first ending inside a record header and the
    second inside a record body: every record as scapy's RawPcapReader reads it; then the
    file cut short, and a corrupt length, at each of those places."""
    from struct import pack

    from scapy.utils import RawPcapReader

    from auditor.probe.capture import CHUNK

    rng = random.Random(5)
    out = bytearray(pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    header_cut, body_cut = CHUNK - 8, 2 * CHUNK - 100
    starts: list[int] = []
    while len(out) < 2 * CHUNK + 5000:
        size = 500 if len(out) == body_cut else rng.randrange(0, 1400)
        for target in (header_cut, body_cut):
            if 70 <= target - len(out) < 1470:  # land the next record there
                size = target - len(out) - 70
        frame = raw(Ether() / IP(src=POD, dst=API_IP) / TCP(sport=4000, dport=443, flags="A") / bytes(size))
        starts.append(len(out))
        out += pack("<IIII", 1_700_000_000 + len(starts), len(starts), len(frame), len(frame)) + frame
    assert header_cut in starts and body_cut in starts
    full = tmp_path / "big.pcap"
    full.write_bytes(out)
    expected = [(data, meta.sec * 1_000_000 + meta.usec) for data, meta in RawPcapReader(str(full))]
    with FileCapture(full) as cap:
        assert [(frame, ts) for ts, _, frame, _ in cap.frames()] == expected and cap.problem is None
    assert_same(full)
    for at, record, words in ((CHUNK + 3, header_cut, "truncated"), (2 * CHUNK + 50, body_cut, "truncated")):
        short = tmp_path / f"short{at}.pcap"
        short.write_bytes(out[:at])
        with FileCapture(short) as cap:
            assert [f[2] for f in cap.frames()] == [e[0] for e in expected[: starts.index(record)]]
            assert cap.problem is not None and words in cap.problem
    for record in (header_cut, body_cut):
        corrupt = bytearray(out)
        corrupt[record + 8 : record + 12] = (1 << 30).to_bytes(4, "little")
        (tmp_path / "corrupt.pcap").write_bytes(corrupt)
        with FileCapture(tmp_path / "corrupt.pcap") as cap:
            assert len(list(cap.frames())) == starts.index(record)
            assert cap.problem is not None and "corrupt" in cap.problem


# ---------------------------------------------------------------- a hypothesis-generated mix

CLIENTS = ["10.42.0.5", "10.42.0.6"]
SERVERS = ["34.1.2.3", "198.51.100.7", "10.43.0.10", "10.42.0.6"]
PORTS = [443, 80, 53, 5432, 40000]
# Weighted by repetition: mostly what a busy node sends (data on open flows, back to back),
# with every rarity (options, tags, fragments, sweeps, idle flushes) drawn now and then.
KINDS = ["syn", "synack", "ack", "ack", *["data"] * 6, *["burst"] * 6, "hello", "hello-head", "hello-tail", "http", "dns-tcp",
         "fin", "fin-data", "rst", "rst-data", "synack-data", "retransmit", "ahead", "vlan", "options", "fragment", "bad-offset", "udp",
         "dns-query", "dns-answer"]  # fmt: skip
GAPS = [*[0.00001] * 60, *[0.0002] * 6, 0.001, 0.001, 0.3, 1.2, 2.5, 70.0, 400.0]


@st.composite
def mixes(draw: st.DrawFn) -> tuple[list[tuple], int]:
    flows = draw(st.lists(st.tuples(st.sampled_from(CLIENTS), st.sampled_from(SERVERS), st.sampled_from(PORTS), st.integers(20000, 20003)), min_size=1, max_size=5, unique=True))
    step = st.tuples(st.integers(0, len(flows) - 1), st.booleans(), st.sampled_from(KINDS), st.sampled_from(GAPS), st.integers(1, 1400))
    steps = draw(st.lists(step, min_size=30, max_size=120))
    return [(flows[f], up, kind, gap, size) for f, up, kind, gap, size in steps], draw(st.sampled_from([200_000, 200_000, 4]))


def build_mix(steps: list[tuple]) -> Trace:
    """Packets for the steps, with sequence numbers kept per flow and direction."""
    t = Trace(l2=False)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    seqs: dict[tuple, int] = {}
    hello = client_hello("api.gretel.cloud")
    for (client, server, port, sport), up, kind, gap, size in steps:
        src, dst, sp, dp = (client, server, sport, port) if up else (server, client, port, sport)
        key = (src, dst, sp, dp)
        seq = seqs.setdefault(key, 1000 if up else 9000)
        ip = IP(src=src, dst=dst)
        payload, flags = b"", "A"
        if kind == "syn":
            flags, seqs[key] = "S", seq + 1
        elif kind == "synack":
            flags, seqs[key] = "SA", seq + 1
        elif kind in ("fin", "rst"):
            flags = "FA" if kind == "fin" else "R"
        elif kind in ("fin-data", "rst-data", "synack-data"):  # flags with a payload: read only while the flow inspects
            flags, payload = {"fin-data": "FPA", "rst-data": "RA", "synack-data": "SA"}[kind], (hello if size % 3 == 0 else bytes([0x17]) * size)
        elif kind in ("data", "burst", "retransmit", "ahead", "vlan", "options", "bad-offset", "fragment"):
            payload = bytes([0x17]) * size
        elif kind == "hello":
            payload = hello
        elif kind == "hello-head":
            payload = hello[: size % len(hello) or 1]
        elif kind == "hello-tail":
            payload, seq = hello[size % len(hello) :] or hello, seq + size % len(hello)
        elif kind == "http":
            payload = b"GET /x?token=abc HTTP/1.1\r\nHost: api.gretel.cloud\r\n\r\n"
        elif kind == "dns-tcp":
            msg = raw(DNS(id=7, rd=1, qd=DNSQR(qname="api.gretel.cloud")))
            payload = len(msg).to_bytes(2, "big") + msg
        if kind == "retransmit":
            seq -= size
        elif kind == "ahead":
            seq += 5000
        if kind in ("udp", "dns-query", "dns-answer"):
            if kind == "udp":
                body: bytes | Packet = bytes(size)
            elif kind == "dns-query":
                body = DNS(id=sport, rd=1, qd=DNSQR(qname=f"h{size % 7}.example.com"))
            else:
                body = DNS(id=port, qr=1, qd=DNSQR(qname=f"h{size % 7}.example.com"), an=DNSRR(rrname=f"h{size % 7}.example.com", rdata=server if ":" not in server else "192.0.2.9"))
            pkt: Packet = eth / ip / UDP(sport=sp, dport=53 if kind == "dns-query" else dp) / body
        else:
            keep = not payload or kind in ("hello", "fin-data", "rst-data", "synack-data")
            tcp = TCP(sport=sp, dport=dp, flags=flags if keep else "PA" if size % 2 else "A", seq=seq & 0xFFFFFFFF, ack=1)
            if kind == "bad-offset":
                tcp.dataofs = 15
            layer3 = IP(src=src, dst=dst, options=[IPOption_RR()]) if kind == "options" else IP(src=src, dst=dst, flags="MF") if kind == "fragment" else ip
            pkt = (eth / Dot1Q(vlan=5) if kind == "vlan" else eth) / layer3 / tcp / payload
            if kind not in ("retransmit", "ahead", "hello-tail") and payload:
                seqs[key] = seq + len(payload)
        count = 2 + size % 24 if kind == "burst" else 1
        for i in range(count):
            if kind == "burst" and i:
                pkt = pkt.copy()
                pkt[TCP].seq = seqs[key] & 0xFFFFFFFF
                seqs[key] += len(payload)
            t.add(pkt, dt=gap if i == 0 else 0.00001)
    return t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mixes())
def test_any_mix_of_flows_gives_the_same_events_on_both_paths(tmp_path: Path, mix: tuple[list[tuple], int]) -> None:
    steps, max_flows = mix
    path = build_mix(steps).write(tmp_path / "mix.pcap")
    assert_same(path, max_flows=max_flows)
    assert_same(path, max_flows=max_flows, proxies=["10.43.0.10:53"], cluster_dns=[DNS_SERVER])


def _multi_chunk_pcap(path: Path, chunks: int) -> int:
    """A pcap of about `chunks` read chunks of bulk segments with random payloads (so it
    does not compress either); returns its record count."""
    from struct import pack

    from auditor.probe.capture import CHUNK

    rng = random.Random(9)
    head = raw(Ether() / IP(src=POD, dst=API_IP, len=1440) / TCP(sport=4000, dport=443, flags="A"))
    size = len(head) + 1400
    count = chunks * CHUNK // (16 + size)
    out = bytearray(pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(count):
        out += pack("<IIII", 1_700_000_000, i, size, size) + head + rng.randbytes(1400)
    path.write_bytes(out)
    return count


def test_the_read_ahead_thread_starts_with_reading_and_ends_with_the_capture(tmp_path: Path) -> None:
    path = tmp_path / "long.pcap"
    _multi_chunk_pcap(path, 6)
    cap = FileCapture(path)
    ahead = lambda: [t for t in threading.enumerate() if t.name == "capture-read-ahead"]  # noqa: E731
    assert ahead() == []  # nothing runs before the first read (a fork then inherits no thread)
    next(cap.blocks())
    [thread] = ahead()
    cap.close()  # mid-file, with the thread waiting for room to queue the next chunk
    assert not thread.is_alive()
    assert list(cap.blocks()) == []  # reading a closed capture ends at once (it must not wait for a thread that is gone)


def test_a_gzip_stream_broken_chunks_in_keeps_every_record_before_the_break(tmp_path: Path) -> None:
    plain = tmp_path / "long.pcap"
    total = _multi_chunk_pcap(plain, 3)
    packed = bytearray(gzip.compress(plain.read_bytes(), compresslevel=1))
    middle = len(packed) // 2
    packed[middle : middle + 64] = bytes(64)  # deflate data that no longer decodes (or no longer checks)
    broken = tmp_path / "long.pcap.gz"
    broken.write_bytes(packed)
    with FileCapture(broken) as cap:
        got = sum(len(b.offsets) for b in cap.blocks())
    assert 0 < got < total
    assert cap.problem is not None


def test_a_gzip_stream_broken_before_the_capture_header_is_a_one_line_error(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(b"\xd4\xc3\xb2\xa1" + bytes(100_000)))
    packed[-8:-4] = b"\xff\xff\xff\xff"  # the stream's CRC: checked when its first (only) megabyte is read
    (tmp_path / "bad.pcap.gz").write_bytes(packed)
    with pytest.raises(AuditorError, match="cannot read the capture: corrupt gzip stream"):
        FileCapture(tmp_path / "bad.pcap.gz")
