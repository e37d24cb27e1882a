"""A pcap written with scapy imports through the probe."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from auditor.errors import AuditorError
from auditor.importers import import_file
from auditor.store.base import open_store


def test_pcap_import_yields_dns_and_flows(tmp_path: Path) -> None:
    client, resolver, server = "10.42.0.17", "10.96.0.10", "203.0.113.10"
    pkts = [
        Ether() / IP(src=client, dst=resolver) / UDP(sport=5353, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname="api.gretel.cloud")),
        Ether() / IP(src=resolver, dst=client) / UDP(sport=53, dport=5353)
        / DNS(id=7, qr=1, aa=1, qd=DNSQR(qname="api.gretel.cloud"), an=DNSRR(rrname="api.gretel.cloud", rdata=server, ttl=60)),
        Ether() / IP(src=client, dst=server) / TCP(sport=40000, dport=443, flags="S", seq=1),
        Ether() / IP(src=server, dst=client) / TCP(sport=443, dport=40000, flags="SA", seq=100, ack=2),
        Ether() / IP(src=client, dst=server) / TCP(sport=40000, dport=443, flags="A", seq=2, ack=101),
        Ether() / IP(src=client, dst="198.51.100.7") / TCP(sport=40001, dport=443, flags="S", seq=1),
    ]
    for i, p in enumerate(pkts):
        p.time = 1764145200 + i * 0.01
    path = tmp_path / "capture.pcap"
    wrpcap(str(path), pkts)
    store = str(tmp_path / "e.db")
    result = import_file([path], store)
    assert result.format == "pcap" and result.rejected == 0 and result.imported >= 3
    events = [e for e in open_store(store).events() if e.kind != "sensor"]
    assert all(e.sensor_id == result.sensor_id for e in events)
    dns = next(e for e in events if e.kind == "dns")
    assert dns.dns and dns.dns.qname == "api.gretel.cloud" and server in dns.dns.answers
    flows = {e.destination.ip: e for e in events if e.kind == "flow"}
    assert flows[server].flow and flows[server].flow.resolved_name == "api.gretel.cloud"
    assert "direct-ip" in flows["198.51.100.7"].observations
    assert open_store(store).verify().ok


def test_a_truncated_capture_is_recorded_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"\xd4\xc3\xb2\xa1garbage")
    store = str(tmp_path / "e.db")
    result = import_file([path], store)
    assert result.rejected == 1 and "truncated" in result.problems[0]
    errors = [e for e in open_store(store).events() if e.sensor and e.sensor.lifecycle == "error"]
    assert len(errors) == 1


def test_an_unreadable_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"")
    with pytest.raises(AuditorError, match="x.pcap"):
        import_file([path], str(tmp_path / "e.db"))
