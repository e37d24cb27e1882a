"""Scapy's fuzz() on every layer the probe reads: nothing may crash the probe, and
whatever it records must still be valid evidence."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether
from scapy.packet import Packet, Raw, fuzz, raw

from auditor.model import EgressEvent
from auditor.probe.engine import Probe
from auditor.probe.quic import VERSION_1
from auditor.probe.runner import run_pcap
from auditor.store.base import open_store

from .traffic import Trace, hello_body

PER_LAYER = 150

TEMPLATES: dict[str, object] = {
    "ethernet": lambda: fuzz(Ether()) / fuzz(IP()),
    "vlan": lambda: Ether() / fuzz(Dot1Q()) / IP(),
    "ipv4": lambda: Ether() / fuzz(IP()),
    "ipv6": lambda: Ether() / fuzz(IPv6()) / fuzz(IPv6ExtHdrHopByHop()) / TCP(),
    "tcp": lambda: Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / fuzz(TCP()),
    "udp": lambda: Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / fuzz(UDP()),
    "icmp": lambda: Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / fuzz(ICMP()),
    "dns-query": lambda: Ether() / IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=5353, dport=53) / fuzz(DNS(qd=DNSQR())),
    "dns-answer": lambda: Ether() / IP(src="10.0.0.53", dst="10.0.0.1") / UDP(sport=53, dport=5353) / fuzz(DNS(qr=1, an=DNSRR())),
    "tls": lambda: Ether() / IP(src="10.0.0.1", dst="1.2.3.4") / TCP(sport=random.randint(1024, 65535), dport=443, flags="PA") / Raw(_tls()),
    "quic": lambda: Ether() / IP(src="10.0.0.1", dst="1.2.3.4") / UDP(sport=random.randint(1024, 65535), dport=443) / Raw(_quic()),
    "cooked": lambda: fuzz(CookedLinux()) / IP(),
}


def _tls() -> bytes:
    body = raw(fuzz(hello_body("fuzz.example")))
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


def _quic() -> bytes:
    return bytes([0xC0 | random.randint(0, 15)]) + VERSION_1.to_bytes(4, "big") + bytes([8]) + random.randbytes(random.randint(1, 1300))


def _frames(seed: int) -> list[tuple[str, bytes]]:
    random.seed(seed)
    out = []
    for name, make in TEMPLATES.items():
        for _ in range(PER_LAYER):
            try:
                pkt: Packet = make()  # type: ignore[operator]
                out.append((name, raw(pkt)))
            except Exception:  # scapy cannot always serialise what fuzz() drew; that frame is not ours to test
                continue
    return out


def test_fuzzed_frames_never_crash_the_engine_and_events_stay_valid() -> None:
    frames = _frames(1234)
    assert len(frames) > PER_LAYER * len(TEMPLATES) * 0.8
    probe = Probe()
    ts = 1_700_000_000_000_000
    for i, (_, frame) in enumerate(frames):
        probe.packet(ts + i * 1000, 1, frame, len(frame))
        probe.packet(ts + i * 1000 + 1, 113, frame, len(frame))  # the same bytes read as cooked capture
        probe.packet(ts + i * 1000 + 2, 276, frame, len(frame))
        probe.packet(ts + i * 1000 + 3, 101, frame[14:], len(frame))  # and as raw IP
    probe.finish()
    assert probe.packets == 4 * len(frames)
    for doc in probe.out:
        EgressEvent.model_validate_json(orjson.dumps(doc))  # as the judging process reads them
    for ev in probe.held:
        EgressEvent.model_validate_json(ev.model_dump_json())
    assert sum(probe.malformed.values()) > 0  # fuzzing does produce broken packets, and they were counted


def test_fuzzed_capture_goes_into_a_verifiable_store(tmp_path: Path) -> None:
    t = Trace(l2=False, linktype=1)
    for _, frame in _frames(99)[::3]:
        t.add(Raw(frame))
    path = t.write(tmp_path / "fuzz.pcap")
    summary = run_pcap(path, str(tmp_path / "fuzz.db"))
    assert summary.events_written == summary.events_submitted and summary.writer_dropped == 0
    st = open_store(str(tmp_path / "fuzz.db"), create=False)
    assert st.verify().ok and st.count() == summary.events_written
    st.close()
