"""Every capture case of the probe issue, as pcaps written here with scapy."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.packet import Raw

from auditor.model import EgressEvent
from auditor.probe.runner import events_from_pcap, run_pcap
from auditor.rules import Pack, group_findings, judge, load_pack
from auditor.store.base import open_store

from .traffic import Trace, client_hello, of_kind, quic_initial, run_trace

POD = "10.42.0.5"
DNS_SERVER = "10.43.0.10"
API_IP = "34.1.2.3"


def flows_to(events: list[EgressEvent], ip: str) -> list[EgressEvent]:
    return [e for e in events if e.kind == "flow" and e.destination.ip == ip]


def test_dns_udp_a_aaaa_cname_ttl_rcode_and_provenance(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "CNAME", "edge.gretel.cloud"), ("edge.gretel.cloud", "CNAME", "d1.cdn.example"), ("d1.cdn.example", "A", API_IP)], ttl=60)
    t.dns(POD, DNS_SERVER, "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "AAAA", "2600:1f14::5")], qtype="AAAA")
    t.dns(POD, DNS_SERVER, "nope.gretel.cloud", [], rcode=3)
    t.dns(POD, DNS_SERVER, "silent.example", answered=False)
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")], [b"\x16\x03\x03\x00\x02ok"])
    events = run_trace(t, tmp_path)
    dns = {e.dns.qname: e for e in of_kind(events, "dns")}
    api = dns["api.gretel.cloud"].dns
    assert api.rcode == "NOERROR" and api.answers == [API_IP] and api.ttl == 60
    assert api.cname_chain == ["edge.gretel.cloud", "d1.cdn.example"]
    assert api.resolver == DNS_SERVER and api.over == "udp"
    assert dns["artifacts.gretel.cloud"].dns.answers == ["2600:1f14::5"] and dns["artifacts.gretel.cloud"].dns.qtype == "AAAA"
    assert dns["nope.gretel.cloud"].dns.rcode == "NXDOMAIN"
    assert dns["silent.example"].dns.rcode is None and "unanswered" in dns["silent.example"].notes
    assert all(not e.observations for e in dns.values())  # cluster resolver, ordinary names
    (flow,) = flows_to(events, API_IP)
    assert flow.flow.resolved_name == "api.gretel.cloud" and flow.flow.cname_chain == ["edge.gretel.cloud", "d1.cdn.example"]
    assert flow.flow.direction == "egress" and flow.flow.tcp_state == "closed"
    assert flow.observations == [] and flow.destination.sni == "api.gretel.cloud" and flow.destination.tls is True
    assert flow.flow.packets_up > 0 and flow.flow.bytes_down == 7
    (tls,) = of_kind(events, "tls")
    assert tls.destination.sni == "api.gretel.cloud" and "alpn offered: h2,http/1.1" in tls.notes


def test_dns_over_tcp(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "big.gretel.cloud", [("big.gretel.cloud", "A", API_IP)], tcp=True)
    t.tcp(POD, API_IP, 443, [client_hello("big.gretel.cloud")])
    events = run_trace(t, tmp_path)
    (dns,) = of_kind(events, "dns")
    assert dns.dns.over == "tcp" and dns.dns.answers == [API_IP] and dns.destination.transport == "tcp"
    assert "direct-ip" not in flows_to(events, API_IP)[0].observations


def test_tls_client_hello_split_over_two_segments_in_and_out_of_order(tmp_path: Path) -> None:
    hello = client_hello("artifacts.gretel.cloud", alpn=("http/1.1",), ech=True, grease=True)
    t = Trace()
    t.tcp(POD, "52.1.1.1", 443, [hello[:40], hello[40:]])
    t.tcp(POD, "52.1.1.2", 443, [hello[:7], hello[7:90], hello[90:]], reorder=True)
    events = run_trace(t, tmp_path)
    tls = of_kind(events, "tls")
    assert [e.destination.sni for e in tls] == ["artifacts.gretel.cloud", "artifacts.gretel.cloud"]
    assert any("encrypted client hello" in n for n in tls[0].notes)
    assert all(e.destination.app_protocol == "tls" for e in tls)


def test_quic_initial_split_over_two_packets(tmp_path: Path) -> None:
    t = Trace()
    t.udp(POD, "142.250.1.1", 443, quic_initial("quic.gretel.example", split=True))
    events = run_trace(t, tmp_path)
    (tls,) = of_kind(events, "tls")
    assert tls.destination.sni == "quic.gretel.example" and tls.destination.app_protocol == "quic"
    assert tls.destination.transport == "udp" and "quic" in tls.observations
    (flow,) = flows_to(events, "142.250.1.1")
    assert {"quic", "direct-ip"} <= set(flow.observations)


def test_ipv6_with_extension_headers(tmp_path: Path) -> None:
    pod6, dns6, srv6 = "fd00:42::5", "fd00:43::a", "2600:1f14::5"
    t = Trace()
    t.dns(pod6, dns6, "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "AAAA", srv6)], qtype="AAAA")
    hello = client_hello("artifacts.gretel.cloud")
    t.add(IPv6(src=pod6, dst=srv6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=5555, dport=443, flags="S", seq=1))
    t.add(IPv6(src=srv6, dst=pod6) / TCP(sport=443, dport=5555, flags="SA", seq=10, ack=2))
    t.add(IPv6(src=pod6, dst=srv6) / IPv6ExtHdrHopByHop() / TCP(sport=5555, dport=443, flags="PA", seq=2, ack=11) / hello)
    events = run_trace(t, tmp_path)
    (flow,) = flows_to(events, srv6)
    assert flow.source.ip == pod6 and flow.destination.sni == "artifacts.gretel.cloud"
    assert flow.flow.resolved_name == "artifacts.gretel.cloud" and "direct-ip" not in flow.observations
    assert flow.flow.tcp_state == "established"


def test_vlan_tagged_frames(tmp_path: Path) -> None:
    t = Trace(l2=False)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    t.add(eth / Dot1Q(vlan=42) / IP(src=POD, dst=DNS_SERVER) / UDP(sport=3333, dport=53) / Raw(b""))
    inner = Trace()
    inner.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    inner.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")])
    for pkt in inner.packets:
        t.add(eth / Dot1Q(vlan=42) / Dot1Q(vlan=7) / pkt[Ether].payload)
    events = run_trace(t, tmp_path)
    (flow,) = flows_to(events, API_IP)
    assert flow.destination.sni == "api.gretel.cloud" and flow.flow.resolved_name == "api.gretel.cloud"


def _cooked(tmp_path: Path, layer: type, linktype: int) -> list[EgressEvent]:
    src = Trace(l2=False)
    src.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    src.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")])
    t = Trace(l2=False)
    for pkt in src.packets:
        t.add(layer(proto=0x0800) / pkt)
    path = t.write(tmp_path / f"cooked{linktype}.pcap", linktype=linktype)
    return list(events_from_pcap(path))


def test_linux_cooked_capture_v1_and_v2(tmp_path: Path) -> None:
    for layer, linktype in ((CookedLinux, 113), (CookedLinuxV2, 276)):
        events = _cooked(tmp_path, layer, linktype)
        (flow,) = flows_to(events, API_IP)
        assert flow.destination.sni == "api.gretel.cloud" and flow.flow.resolved_name == "api.gretel.cloud", linktype
        assert of_kind(events, "dns")[0].dns.answers == [API_IP]


def test_direct_ip_and_sni_dns_mismatch_are_found_and_judged(tmp_path: Path) -> None:
    t = Trace()
    t.tcp(POD, "198.51.100.20", 443, [client_hello("api.gretel.cloud")])  # no lookup explains the address
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [client_hello("evil.example")])  # fronting: resolved one name, asked for another
    events = run_trace(t, tmp_path)
    (direct,) = flows_to(events, "198.51.100.20")
    assert "direct-ip" in direct.observations
    (fronted,) = flows_to(events, API_IP)
    assert "sni-dns-mismatch" in fronted.observations and "direct-ip" not in fronted.observations
    assert any("evil.example" in n for n in fronted.notes)
    pack = load_pack()
    judged = list(judge(events, pack))
    rules = {f.rule_id for f in group_findings(judged, pack)}
    assert {"obs.direct-ip", "obs.sni-dns-mismatch"} <= rules


def test_dns_tunnelling_signs(tmp_path: Path) -> None:
    t = Trace()
    for i in range(60):
        label = f"{i:02d}mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpi{i:03d}"
        t.dns(POD, DNS_SERVER, f"{label}.t.exfil.example", [("x", "A", "192.0.2.1")])
    t.dns(POD, DNS_SERVER, "x.null.example", qtype="NULL", answered=False)
    t.dns(POD, DNS_SERVER, "prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com", [("prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com", "A", "52.92.1.1")])
    t.dns(POD, DNS_SERVER, "074762682575.dkr.ecr.us-west-2.amazonaws.com", [("074762682575.dkr.ecr.us-west-2.amazonaws.com", "A", "52.92.1.2")])
    events = run_trace(t, tmp_path)
    dns = of_kind(events, "dns")
    tunnel = [e for e in dns if "dns-tunnel" in e.observations]
    names = {e.dns.qname for e in tunnel}
    assert sum(1 for n in names if n.endswith(".t.exfil.example")) == 60  # each carries a long label
    assert "x.null.example" in names
    assert any("unique-subdomains" in n for e in tunnel for n in e.notes)
    clean = {e.dns.qname: e.observations for e in dns if "amazonaws.com" in e.dns.qname}
    assert clean and all(obs == [] for obs in clean.values())
    rules = {f.rule_id for f in group_findings(list(judge(events, load_pack())), load_pack())}
    assert "obs.dns-tunnel" in rules


def test_foreign_resolver_doh_dot_quic_and_icmp_payload(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, "8.8.8.8", "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, "8.8.8.8", 443, [client_hello("dns.google")])
    t.tcp(POD, "9.9.9.9", 853, [client_hello("dns.quad9.net")])
    t.udp(POD, "172.217.1.1", 443, quic_initial("video.example"))
    t.ping(POD, "203.0.113.50", 56)
    t.ping(POD, "203.0.113.51", 1200, count=3)
    events = run_trace(t, tmp_path)
    (dns,) = of_kind(events, "dns")
    assert dns.observations == ["dns-foreign-resolver"]
    assert "doh" in flows_to(events, "8.8.8.8")[0].observations
    assert "dot" in flows_to(events, "9.9.9.9")[0].observations
    assert "quic" in flows_to(events, "172.217.1.1")[0].observations
    icmp = {e.destination.ip: e for e in of_kind(events, "icmp")}
    assert icmp["203.0.113.50"].observations == ["direct-ip"] or "icmp-payload" not in icmp["203.0.113.50"].observations
    assert "icmp-payload" in icmp["203.0.113.51"].observations
    assert icmp["203.0.113.51"].flow.packets_up == 3 and icmp["203.0.113.51"].flow.packets_down == 3


def test_inbound_syn_from_outside(tmp_path: Path) -> None:
    t = Trace()
    t.tcp("203.0.113.7", POD, 22, answer="none")
    t.tcp("203.0.113.8", POD, 8080, answer="rst")
    t.tcp("203.0.113.9", POD, 443, [b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n"], [b"HTTP/1.1 200 OK\r\n\r\n"])
    events = run_trace(t, tmp_path)
    states = {e.source.ip: (e.flow.direction, e.flow.tcp_state, e.observations, e.source.scope) for e in of_kind(events, "flow")}
    assert states["203.0.113.7"] == ("inbound", "attempted", ["inbound"], "external")
    assert states["203.0.113.8"] == ("inbound", "refused", ["inbound"], "external")
    assert states["203.0.113.9"][:3] == ("inbound", "closed", ["inbound"])
    judged = list(judge(events, load_pack()))
    assert all(e.decision.action == "violation" and e.decision.rule_id == "net.no-inbound" for e in judged if e.kind == "flow")


def test_tcp_states_and_byte_counts(tmp_path: Path) -> None:
    t = Trace()
    t.tcp(POD, "10.42.0.9", 5432, [b"a" * 100], [b"b" * 300], close=False)
    t.tcp(POD, "10.42.0.10", 6379, [b"ping"], [b"pong"])
    events = run_trace(t, tmp_path)
    by_ip = {e.destination.ip: e.flow for e in of_kind(events, "flow")}
    assert by_ip["10.42.0.9"].tcp_state == "established" and by_ip["10.42.0.9"].direction == "internal"
    assert (by_ip["10.42.0.9"].bytes_up, by_ip["10.42.0.9"].bytes_down) == (100, 300)
    assert by_ip["10.42.0.10"].tcp_state == "closed"


def test_plaintext_http_request_line_and_host_with_redacted_query(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 80, [b"POST /v1/workflows?token=s3cr3tvalue&project=p1 HTTP/1.1\r\nHost: api.gretel.cloud\r\nContent-Length: 2\r\n\r\n{}"])
    events = run_trace(t, tmp_path)
    (flow,) = flows_to(events, API_IP)
    assert flow.http.method == "POST" and flow.http.path == "/v1/workflows" and flow.http.scheme == "http"
    assert "s3cr3tvalue" not in flow.http.query and "token=REDACTED" in flow.http.query
    assert flow.destination.http_host == "api.gretel.cloud" and flow.destination.tls is False
    assert "s3cr3tvalue" not in flow.model_dump_json()


def test_a_hostile_absolute_request_target_is_read_as_a_path(tmp_path: Path) -> None:
    t = Trace()
    t.tcp(POD, "52.1.2.9", 80, [b"GET http://[x/?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"])  # urlsplit refuses this target
    (flow,) = flows_to(run_trace(t, tmp_path), "52.1.2.9")
    assert flow.http.method == "GET" and flow.http.path == "http://[x/"


def test_truncated_pcap_keeps_what_came_before_and_records_the_damage(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")], [b"x" * 500])
    path = t.write(tmp_path / "full.pcap")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[:-300])
    events = list(events_from_pcap(cut))
    assert of_kind(events, "dns") and of_kind(events, "tls")
    errors = [e for e in events if e.kind == "sensor" and e.sensor.lifecycle == "error"]
    assert len(errors) == 1 and "truncated" in errors[0].sensor.detail
    assert events[-1].sensor.lifecycle == "stop"


def test_pcapng_and_gzip_give_the_same_events(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")])
    plain = t.write(tmp_path / "a.pcap")
    ng = t.write(tmp_path / "a.pcapng", ng=True)
    gz = tmp_path / "a.pcapng.gz"
    gz.write_bytes(gzip.compress(ng.read_bytes()))

    def shape(path: Path) -> list[tuple]:
        return [
            (e.kind, round(e.time.timestamp(), 3), e.destination.ip, e.destination.sni, e.flow.bytes_up if e.flow else None)
            for e in events_from_pcap(path)
            if e.kind != "sensor"
        ]

    assert shape(plain) == shape(ng) == shape(gz) and len(shape(plain)) == 3  # scapy rounds times to the ms differently per format


def test_malformed_and_hostile_packets_are_counted_never_fatal(tmp_path: Path) -> None:
    t = Trace(l2=False, linktype=1)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    t.add(Raw(b"\x00\x01\x02"))  # shorter than an Ethernet header
    t.add(Ether(type=0x0800) / Raw(b"\x45\x00\x00"))  # IPv4 cut short
    t.add(eth / IP(src=POD, dst=API_IP, ihl=2) / Raw(b"x" * 30))  # header length below 20
    t.add(eth / IP(src=POD, dst=API_IP) / TCP(sport=1, dport=443, dataofs=2))  # TCP data offset below 5
    loop = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"  # name points at itself
    t.add(eth / IP(src=POD, dst=DNS_SERVER) / UDP(sport=4444, dport=53) / Raw(loop))
    t.add(eth / IP(src=POD, dst=API_IP) / TCP(sport=2222, dport=443, flags="PA") / Raw(b"\x16\x03\x01\xff\xff\x01" + b"\x00" * 20))
    good = Trace()
    good.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    for pkt in good.packets:
        t.add(pkt)
    events = run_trace(t, tmp_path)
    stop = json.loads(events[-1].sensor.detail)
    assert set(stop["malformed"]) >= {"ethernet-truncated", "ipv4-truncated", "ipv4-header-length", "tcp-header-length", "dns-pointer-loop"}
    assert any("malformed" in e.observations for e in events if e.kind == "flow")
    assert of_kind(events, "dns")[0].dns.qname == "api.gretel.cloud"  # the rest went on


def test_flow_table_stays_bounded_under_a_flood(tmp_path: Path) -> None:
    t = Trace()
    for port in range(1000):
        t.add(IP(src="198.51.100.9", dst=POD) / TCP(sport=10000 + port, dport=443, flags="S"), dt=0.0001)
    events = run_trace(t, tmp_path, max_flows=100)
    flows = of_kind(events, "flow")
    assert len(flows) == 1000  # nothing lost: early flushes are events too
    assert sum(1 for e in flows if any("flow table was full" in n for n in e.notes)) >= 800
    stop = json.loads(events[-1].sensor.detail)
    assert stop["evicted_flows"] >= 800


def _site_pack(tmp_path: Path, dns_server: str, proxy_ip: str) -> Pack:
    """The shipped pack with a site overlay: this cluster's CIDRs, its resolver and its proxy on 3128."""
    overlay = tmp_path / "site.yaml"
    overlay.write_text(
        "overlay:\n  id: test-site\n  description: probe test\n"
        "cluster:\n  pod_cidrs: [10.42.0.0/16]\n  service_cidrs: [10.43.0.0/16]\n  node_cidrs: [192.168.10.0/24]\n"
        f"  dns:\n    servers: [{dns_server}]\n    suffixes: [cluster.local]\n"
        f"proxy: http://{proxy_ip}:3128\n"
    )
    return load_pack(None, [overlay])


def test_site_overlay_sets_cluster_ranges_dns_and_proxy(tmp_path: Path) -> None:
    pack = _site_pack(tmp_path, "10.43.0.10", "10.43.12.7")
    t = Trace()
    t.tcp(POD, "10.43.12.7", 3128, [b"CONNECT api.gretel.cloud:443 HTTP/1.1\r\nHost: api.gretel.cloud:443\r\n\r\n"])
    t.dns(POD, "10.42.0.99", "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])  # a pod resolver, not the cluster's
    t.tcp(POD, "172.16.5.5", 443, [client_hello("api.gretel.cloud")])  # private, but outside this cluster
    path = t.write(tmp_path / "site.pcap")
    store = tmp_path / "ev.db"
    summary = run_pcap(path, str(store), pack=pack)
    assert summary.judged and summary.events_written == summary.events_submitted
    st = open_store(str(store), create=False)
    events = list(st.events())
    assert st.verify().ok
    st.close()
    to_proxy = [e for e in events if e.kind == "flow" and e.destination.port == 3128][0]
    assert to_proxy.flow.direction == "internal" and "to the audit proxy" in to_proxy.notes
    assert to_proxy.http.method == "CONNECT" and to_proxy.destination.host == "api.gretel.cloud:443"
    (dns,) = [e for e in events if e.kind == "dns"]
    assert dns.observations == ["dns-foreign-resolver"]
    outside = [e for e in events if e.kind == "flow" and e.destination.ip == "172.16.5.5"][0]
    assert outside.flow.direction == "egress" and "bypass" in outside.observations  # a proxy is configured and saw nothing
    assert all(e.decision is not None for e in events if e.kind != "sensor")
    config = [e for e in events if e.kind == "sensor" and e.sensor.lifecycle == "config"][0]
    assert "10.42.0.0/16" in config.sensor.detail and "10.43.12.7:3128" in config.sensor.detail


def test_truncated_pcapng_and_broken_gzip_are_recorded(tmp_path: Path) -> None:
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")], [b"x" * 500])
    ng = t.write(tmp_path / "a.pcapng", ng=True).read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(ng[:-200])
    broken = tmp_path / "cut.pcap.gz"
    broken.write_bytes(gzip.compress(t.write(tmp_path / "b.pcap").read_bytes())[:-30])
    for path, words in ((cut, "truncated"), (broken, "gzip stream cut short")):
        events = list(events_from_pcap(path))
        errors = [e.sensor.detail for e in events if e.kind == "sensor" and e.sensor.lifecycle == "error"]
        assert len(errors) == 1 and words in errors[0], (path, errors)
        assert of_kind(events, "dns"), path


def test_idle_flows_are_flushed_while_the_capture_goes_on(tmp_path: Path) -> None:
    t = Trace()
    t.udp(POD, "203.0.113.77", 5000, [b"hello"])
    t.tcp(POD, "10.42.0.9", 5432, [b"q"], close=False)
    t.add(IP(src=POD, dst="10.42.0.10") / UDP(sport=1, dport=2) / b"later", dt=400)  # 400 s on: both are idle by now
    events = run_trace(t, tmp_path)
    by_ip = {e.destination.ip: e for e in of_kind(events, "flow")}
    for ip in ("203.0.113.77", "10.42.0.9"):
        assert "still open when the capture ended" not in by_ip[ip].notes, ip
    assert "still open when the capture ended" in by_ip["10.42.0.10"].notes
    order = [e.destination.ip for e in of_kind(events, "flow")]
    assert order.index("203.0.113.77") < order.index("10.42.0.10")


def test_pcapng_interface_drop_counters_are_chained_as_drop_events(tmp_path: Path) -> None:
    t = Trace()
    t.tcp(POD, "10.42.0.9", 5432, [b"q"])
    path = t.write(tmp_path / "d.pcapng", ng=True)
    option = (5).to_bytes(2, "little") + (8).to_bytes(2, "little") + (1234).to_bytes(8, "little") + bytes(4)
    body = (0).to_bytes(4, "little") + bytes(8) + option
    isb = (5).to_bytes(4, "little") + (12 + len(body)).to_bytes(4, "little") + body + (12 + len(body)).to_bytes(4, "little")
    path.write_bytes(path.read_bytes() + isb)
    store = tmp_path / "d.db"
    summary = run_pcap(path, str(store))
    assert summary.capture.if_dropped == 1234
    st = open_store(str(store), create=False)
    drops = [e.sensor for e in st.events() if e.kind == "sensor" and e.sensor.lifecycle == "drop"]
    st.close()
    assert [(d.dropped, "interface" in (d.detail or "")) for d in drops] == [(1234, True)]


def test_gre_and_esp_tunnels_out_are_flows_and_judged(tmp_path: Path) -> None:
    """A tunnel over another IP protocol is egress like any other: seen, counted, never allowed."""
    from scapy.layers.l2 import GRE

    t = Trace()
    for _ in range(3):
        t.add(IP(src=POD, dst="198.51.100.20") / GRE() / IP(src="192.0.2.1", dst="192.0.2.2") / Raw(b"x" * 40))
    t.add(IP(src="198.51.100.20", dst=POD) / GRE() / IP(src="192.0.2.2", dst="192.0.2.1") / Raw(b"y" * 10))
    t.add(IP(src=POD, dst="198.51.100.21", proto=50) / Raw(b"\x00\x00\x10\x01" + b"z" * 60))
    events = run_trace(t, tmp_path)
    flows = {e.destination.ip: e for e in of_kind(events, "flow")}
    gre, esp = flows["198.51.100.20"], flows["198.51.100.21"]
    assert (gre.destination.transport, gre.destination.app_protocol, gre.destination.port) == ("other", "gre", None)
    assert gre.flow.direction == "egress" and gre.flow.packets_up == 3 and gre.flow.packets_down == 1
    assert esp.destination.app_protocol == "esp" and esp.source.ip == POD
    judged = {e.destination.ip: e.decision for e in judge(of_kind(events, "flow"), load_pack())}
    assert all(d is not None and d.action == "violation" for d in judged.values())


def test_the_packs_own_internal_addresses_are_inside(tmp_path: Path) -> None:
    """A cluster resolver and a proxy outside the overlay's CIDRs are still the cluster's:
    flows to them are internal, not egress (`config_from_pack` hands them to `Networks`)."""
    pack = _site_pack(tmp_path, "198.51.100.53", "203.0.113.7")
    t = Trace()
    t.tcp(POD, "203.0.113.7", 3128, [b"CONNECT api.gretel.cloud:443 HTTP/1.1\r\nHost: api.gretel.cloud:443\r\n\r\n"])
    t.tcp(POD, "198.51.100.53", 53, [b"\x00\x1d" + bytes(29)])
    t.tcp(POD, "203.0.113.8", 443, [client_hello("api.gretel.cloud")])
    seen: list[EgressEvent] = []
    run_pcap(t.write(tmp_path / "site.pcap"), None, pack=pack, sink=seen.append)
    flows = {e.destination.ip: e.flow.direction for e in of_kind(seen, "flow")}
    assert flows == {"203.0.113.7": "internal", "198.51.100.53": "internal", "203.0.113.8": "egress"}
