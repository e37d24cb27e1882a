"""IP fragments: reassembled before the probe reads them, so fragmented traffic is judged
as if it had arrived whole, with overlaps, floods, oversize and stale datagrams
dropped, counted and recorded. Every capture here is written with scapy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from auditor.model import EgressEvent
from auditor.probe.capture import FileCapture
from auditor.probe.engine import Probe, ProbeConfig
from auditor.probe.quic import crypto_frame, protect_initial
from auditor.probe.runner import feed_file
from auditor.rules import judge, load_pack

from .test_batch import assert_same, bulk_flow, with_bulk
from .traffic import Trace, client_hello, hello_body, of_kind, run_trace

AUDITOR = [sys.executable, "-m", "auditor.cli"]
POD = "10.42.0.5"
POD6 = "fd00:42::5"
DNS_SERVER = "10.43.0.10"
API_IP = "34.1.2.3"
OUTSIDE = "6.6.6.6"
OUTSIDE6 = "2600:6::6"


def flows_to(events: list[EgressEvent], ip: str) -> list[EgressEvent]:
    return [e for e in events if e.kind == "flow" and e.destination.ip == ip]


def malformed(events: list[EgressEvent]) -> list[EgressEvent]:
    return [e for e in events if e.kind == "flow" and "malformed" in e.observations and e.destination.ip is None]


def stop_detail(events: list[EgressEvent]) -> dict:
    return json.loads(events[-1].sensor.detail)


def udp_sends(t: Trace, src: str, dst: str, count: int, size: int = 4000, *, sport: int = 40000) -> None:
    """What the kernel puts on a 1500-byte link for each unprivileged `sendto()` of `size` bytes."""
    for i in range(count):
        if ":" in src:
            pkt = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=0x10000 + i) / UDP(sport=sport, dport=9999) / (b"x" * size)
            pieces = fragment6(pkt, 1280)
        else:
            pieces = fragment(IP(src=src, dst=dst, id=1000 + i) / UDP(sport=sport, dport=9999) / (b"x" * size), fragsize=1480)
        for piece in pieces:
            t.add(piece, dt=0.0001)


def with_fragmented(t: Trace, payload: bytes, fragsize: int, *, reverse: bool = False) -> Trace:
    """The trace with the packet carrying `payload` sent as IP fragments of `fragsize` bytes."""
    out = Trace(l2=False)
    for pkt in t.packets:
        ip = pkt[IP]
        if ip.haslayer(TCP) and bytes(ip[TCP].payload) == payload:
            pieces = fragment(IP(src=ip.src, dst=ip.dst, id=4242) / ip[TCP], fragsize=fragsize)
            for piece in reversed(pieces) if reverse else pieces:
                piece = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / piece
                piece.time = pkt.time
                out.packets.append(piece)
        else:
            out.packets.append(pkt)
    return out


def test_udp_the_kernel_fragments_is_a_flow_to_its_destination_and_a_violation(tmp_path: Path) -> None:
    """The red team's case: 300 sendto()s of 4000 bytes to an outside address, both families."""
    t = Trace()
    udp_sends(t, POD, OUTSIDE, 300)
    udp_sends(t, POD6, OUTSIDE6, 300)
    events = run_trace(t, tmp_path)
    for dst in (OUTSIDE, OUTSIDE6):
        (flow,) = flows_to(events, dst)
        assert flow.flow.packets_up == 300 and flow.flow.bytes_up == 300 * 4000
        assert flow.destination.port == 9999 and flow.destination.transport == "udp" and "direct-ip" in flow.observations
    assert not malformed(events)
    stop = stop_detail(events)
    assert stop["reassembled"] == 600 and stop["malformed"] == {}
    store = tmp_path / "ev.db"
    proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(t.write(tmp_path / "udp.pcap")), "--store", str(store), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run([*AUDITOR, "check", "--store", str(store)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "obs.direct-ip" in check.stdout and "egress.no-destination" not in check.stdout


def test_a_quic_initial_padded_past_the_mtu_is_decrypted(tmp_path: Path) -> None:
    dcid = bytes.fromhex("0011223344556677")
    initial = protect_initial(dcid, b"\x01\x02", crypto_frame(bytes(hello_body("exfil.example", ("h3",)))), pad_to=1800)
    t = Trace()
    for piece in fragment(IP(src=POD, dst="203.0.113.9", id=7) / UDP(sport=50000, dport=443) / initial, fragsize=1480):
        t.add(piece)
    pkt6 = IPv6(src=POD6, dst=OUTSIDE6) / IPv6ExtHdrFragment(id=99) / UDP(sport=50001, dport=443) / initial
    for piece in reversed(fragment6(pkt6, 1280)):
        t.add(piece)
    events = run_trace(t, tmp_path)
    assert sorted((e.destination.ip, e.destination.sni, e.destination.app_protocol) for e in of_kind(events, "tls")) == [
        ("203.0.113.9", "exfil.example", "quic"),
        (OUTSIDE6, "exfil.example", "quic"),
    ]
    for dst in ("203.0.113.9", OUTSIDE6):
        (flow,) = flows_to(events, dst)
        assert "quic" in flow.observations and flow.destination.sni == "exfil.example" and flow.flow.bytes_up == 1800


def test_a_client_hello_split_by_ip_fragments_is_read_for_its_sni(tmp_path: Path) -> None:
    """Resolved one name, asked for another in a hello cut into 40-byte fragments, in and out of order."""
    hello = client_hello("evil.example")
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [hello])
    for reverse in (False, True):
        events = run_trace(with_fragmented(t, hello, 40, reverse=reverse), tmp_path)
        (flow,) = flows_to(events, API_IP)
        assert flow.destination.sni == "evil.example" and "sni-dns-mismatch" in flow.observations
        assert flow.flow.bytes_up == len(hello) and flow.flow.tcp_state == "closed"
        assert [e.destination.sni for e in of_kind(events, "tls")] == ["evil.example"]
        assert stop_detail(events)["fragments"] == -(-(len(hello) + 20) // 40)


def test_a_duplicate_fragment_with_other_bytes_is_recorded_and_the_first_copy_read(tmp_path: Path) -> None:
    """A receiver keeps the first copy of a fragment it already holds; so does the probe,
    and a second copy that says something else is an evasion attempt on record."""
    hello = client_hello("evil.example")
    decoy = hello.replace(b"evil.example", b"good.example")
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [hello])
    real = with_fragmented(t, hello, 40)
    pieces = [p for p in real.packets if p[IP].flags.MF or p[IP].frag]
    segment = TCP(bytes(next(p for p in t.packets if p.haslayer(TCP) and bytes(p[TCP].payload) == hello)[TCP]))
    segment.remove_payload()  # keeps the checksum: only the fragment holding the name differs
    decoys = fragment(IP(src=POD, dst=API_IP, id=4242) / (segment / decoy), fragsize=40)
    (changed,) = [i for i, (a, b) in enumerate(zip(pieces, decoys)) if bytes(a[IP].payload) != bytes(b[IP].payload)]
    for first, second, sni in ((pieces[changed], decoys[changed], "evil.example"), (decoys[changed], pieces[changed], "good.example")):
        out = Trace(l2=False)
        for pkt in real.packets:
            if pkt is pieces[changed]:
                for copy in (first, second):
                    copy = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / copy[IP]
                    copy.time = pkt.time
                    out.packets.append(copy)
            else:
                out.packets.append(pkt)
        events = run_trace(out, tmp_path)
        (flow,) = flows_to(events, API_IP)
        assert flow.destination.sni == sni and flow.flow.bytes_up == len(hello)
        (record,) = malformed(events)
        assert record.notes[0] == "malformed: fragment-duplicate-differs" and f"{POD}:{segment.sport} -> {API_IP}:443" in record.notes[1]


def test_partial_overlaps_with_other_bytes_drop_the_datagram_and_odd_lengths_are_read_as_linux_does(tmp_path: Path) -> None:
    head = bytes(UDP(sport=40000, dport=9999, len=8 + 32))
    t = Trace()
    # 10.42.0.5: the second fragment rewrites bytes the first one carried, and brings new ones.
    t.add(IP(src=POD, dst=OUTSIDE, id=1, proto=17, flags="MF") / Raw(head + b"a" * 16))
    t.add(IP(src=POD, dst=OUTSIDE, id=1, proto=17, frag=2) / Raw(b"B" * 8 + b"c" * 16))
    # 10.42.0.6: the same fragment twice, then the rest, overlapping with the same bytes.
    t.add(IP(src="10.42.0.6", dst=OUTSIDE, id=1, proto=17, flags="MF") / Raw(head + b"a" * 16))
    t.add(IP(src="10.42.0.6", dst=OUTSIDE, id=1, proto=17, flags="MF") / Raw(head + b"a" * 16))
    t.add(IP(src="10.42.0.6", dst=OUTSIDE, id=1, proto=17, frag=2) / Raw(b"a" * 8 + b"c" * 16))
    # 10.42.0.7: a first fragment 3 bytes past a multiple of 8, which an IPv4 receiver cuts off.
    t.add(IP(src="10.42.0.7", dst=OUTSIDE, id=1, proto=17, flags="MF") / Raw(head + b"a" * 16 + b"xyz"))
    t.add(IP(src="10.42.0.7", dst=OUTSIDE, id=1, proto=17, frag=3) / Raw(b"c" * 16))
    # fd00:42::5: the same, over IPv6, is refused; the first fragment sent again as it should be completes it.
    head6 = bytes(UDP(sport=40000, dport=9999, len=8 + 32))
    t.add(IPv6(src=POD6, dst=OUTSIDE6) / IPv6ExtHdrFragment(id=1, m=1, nh=17) / Raw(head6 + b"a" * 16 + b"xyz"))
    t.add(IPv6(src=POD6, dst=OUTSIDE6) / IPv6ExtHdrFragment(id=1, offset=3, nh=17) / Raw(b"c" * 16))
    t.add(IPv6(src=POD6, dst=OUTSIDE6) / IPv6ExtHdrFragment(id=1, m=1, nh=17) / Raw(head6 + b"a" * 16))
    events = run_trace(t, tmp_path)
    assert sorted((f.source.ip, f.flow.bytes_up, f.flow.packets_up) for f in of_kind(events, "flow") if f.destination.ip) == [
        ("10.42.0.6", 32, 1), ("10.42.0.7", 32, 1), (POD6, 32, 1)
    ]
    notes = sorted(e.notes for e in malformed(events))
    assert notes == [
        ["malformed: fragment-length", f"IPv6 UDP fragments {POD6} -> {OUTSIDE6}: 1 received, 0 of unknown bytes"],
        ["malformed: fragment-overlap", f"IPv4 UDP fragments {POD}:40000 -> {OUTSIDE}:9999: 2 received, 24 of 40 bytes"],
    ]


def test_a_flood_of_fragments_that_never_complete_stays_within_its_budget(tmp_path: Path) -> None:
    t = Trace()
    for i in range(3000):  # first fragments whose rest never comes
        t.add(IP(src="198.51.100.7", dst=POD, id=i, proto=17, flags="MF") / Raw(b"f" * 1480), dt=0.00001)
    path = t.write(tmp_path / "flood.pcap")
    cfg = ProbeConfig(max_fragment_datagrams=1000, max_fragment_bytes=1 << 20)
    probe = Probe(cfg)
    peak = 0
    with FileCapture(path) as cap:
        frames = cap.frames()
        while probe.feed(frames, 1):
            peak = max(peak, probe.frags.held)
            assert len(probe.frags.pending) <= 1000
    assert 0 < peak <= 1 << 20
    assert probe.stats().fragments_pending == len(probe.frags.pending) < 3000 - 2000
    probe.finish()
    stats = probe.stats()
    assert stats.fragments == 3000 and stats.reassembled == 0 and stats.fragments_pending == 0
    assert stats.malformed["fragment-evicted"] + stats.malformed["fragment-incomplete"] == 3000  # every one given up on is counted
    records = [e for e in probe.out if e.get("destination") is None]
    assert sum(1 for e in records if e["notes"][0] == "malformed: fragment-evicted") == cfg.malformed_events_per_reason  # records capped, counts not


def test_stale_and_oversized_datagrams_are_dropped_and_recorded_with_what_they_named(tmp_path: Path) -> None:
    t = Trace()
    t.add(IP(src=POD, dst=OUTSIDE, id=5, proto=17, flags="MF") / Raw(bytes(UDP(sport=40000, dport=53, len=3000)) + b"q" * 1472))
    t.add(IP(src=POD, dst=OUTSIDE, id=6, proto=17, frag=8190) / Raw(b"z" * 64))  # ends past 65,535 bytes
    t.add(IP(src=POD, dst=OUTSIDE, id=5, proto=17, frag=185) / Raw(b"q" * 1480), dt=31.0)  # too late: a new datagram
    t.add(IPv6(src=POD6, dst=OUTSIDE6) / IPv6ExtHdrFragment(id=8, offset=2, m=1, nh=6) / Raw(b"w" * 64))
    events = run_trace(t, tmp_path)
    assert not flows_to(events, OUTSIDE) and not flows_to(events, OUTSIDE6)
    assert sorted(e.notes for e in malformed(events)) == [
        ["malformed: fragment-incomplete", f"IPv4 UDP fragments {POD} -> {OUTSIDE}: 1 received, 1,480 of 2,960 bytes"],
        ["malformed: fragment-incomplete", f"IPv6 TCP fragments {POD6} -> {OUTSIDE6}: 1 received, 64 of unknown bytes"],
        ["malformed: fragment-timeout", f"IPv4 UDP fragments {POD}:40000 -> {OUTSIDE}:53: 1 received, 1,480 of unknown bytes"],
        ["malformed: fragment-too-big", f"IPv4 UDP fragments {POD} -> {OUTSIDE}: 1 received, 0 of unknown bytes"],
    ]
    assert stop_detail(events)["fragments"] == 4


def test_fragments_give_the_same_events_on_the_batched_path(tmp_path: Path) -> None:
    """A fragmented TCP segment completes inside another flow's bulk run: the batched path
    must take it in capture order, as the per-packet path does."""
    case = Trace()
    packets = bulk_flow("10.42.0.9", "34.9.9.7", 120, sport=31113)
    data = next(i for i, p in enumerate(packets) if p.haslayer(Raw) and i > 10)
    segment = packets[data]
    pieces = fragment(IP(src=segment[IP].src, dst=segment[IP].dst, id=77) / segment[TCP], fragsize=400)
    # Without its FIN exchange the flow's last packet is whatever the engine counted last.
    packets = packets[:data] + pieces[:1] + packets[data + 1 : data + 30] + pieces[1:] + packets[data + 30 : -3]
    for pkt in packets:
        case.add(pkt, dt=0.0001)
    udp_sends(case, POD, OUTSIDE, 3)
    path = with_bulk(case).write(tmp_path / "mixed.pcap")
    assert assert_same(path) > 0
    probe = Probe()
    with FileCapture(path) as cap:
        for _ in feed_file(probe, cap):
            pass
    probe.finish()
    assert probe.reassembled == 4
    events = [EgressEvent.model_validate(e) for e in probe.out] + probe.held
    assert {e.destination.ip for e in judge(flows_to(events, OUTSIDE), load_pack()) if e.decision.action == "violation"} == {OUTSIDE}
