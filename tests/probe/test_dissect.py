"""The probe's own parsers against scapy as the oracle."""

from __future__ import annotations

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.packet import raw

from auditor.probe.dissect import NEED_MORE, ClientHello, Malformed, http_request, parse_dns, tls_client_hello

from .traffic import client_hello


def test_dns_answers_match_scapy() -> None:
    msg = DNS(
        id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname="api.gretel.cloud", qtype="A"),
        an=[DNSRR(rrname="api.gretel.cloud", type="CNAME", rdata="edge.example.net", ttl=30),
            DNSRR(rrname="edge.example.net", type="A", rdata="34.1.2.3", ttl=20),
            DNSRR(rrname="edge.example.net", type="A", rdata="34.1.2.4", ttl=25),
            DNSRR(rrname="api.gretel.cloud", type="TXT", rdata="v=spf1 -all", ttl=5)],
    )  # fmt: skip
    wire = raw(msg)
    parsed = parse_dns(wire)
    oracle = DNS(wire)
    assert parsed.id == oracle.id and parsed.response and parsed.rcode == oracle.rcode
    assert parsed.qname == oracle.qd[0].qname.decode().rstrip(".")
    assert [r.value for r in parsed.answers[1:3]] == [rr.rdata for rr in oracle.an[1:3]]
    assert parsed.answers[0].value == oracle.an[0].rdata.decode().rstrip(".")
    assert [r.ttl for r in parsed.answers] == [rr.ttl for rr in oracle.an]
    assert parsed.answers[3].value == "TXT 12 bytes"  # the record's content is never kept


def test_dns_aaaa_and_case_folding() -> None:
    wire = raw(DNS(id=1, qr=1, qd=DNSQR(qname="ApI.GreTel.Cloud", qtype="AAAA"), an=[DNSRR(rrname="ApI.GreTel.Cloud", type="AAAA", rdata="2600:1f14::5")]))
    parsed = parse_dns(wire)
    assert parsed.qname == "api.gretel.cloud" and parsed.answers[0].value == "2600:1f14::5"


@pytest.mark.parametrize(
    "wire,reason",
    [
        (b"\x00\x01", "dns-header-truncated"),
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", "dns-pointer-loop"),
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", "dns-name-length"),
        (b"\x12\x34\x81\x80\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02", "dns-rdata-truncated"),
    ],
)
def test_dns_hostile_messages_raise_malformed(wire: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as info:
        parse_dns(wire)
    assert info.value.reason == reason


def test_dns_odd_labels_are_escaped_not_decoded() -> None:
    wire = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04<b>\x00\x07example\x00\x00\x01\x00\x01"
    assert parse_dns(wire).qname == "\\060b\\062\\000.example"


def test_tls_client_hello_fields_and_partial_input() -> None:
    hello = client_hello("Api.Gretel.Cloud.", alpn=("h2",), ech=True, grease=True)
    parsed = tls_client_hello(hello)
    assert parsed == ClientHello("api.gretel.cloud", ("h2",), (0x0304, 0x0303), True, True)
    assert tls_client_hello(hello[:30]) == NEED_MORE
    assert tls_client_hello(b"\x17\x03\x03\x00\x10" + b"x" * 16) is None
    assert tls_client_hello(b"SSH-2.0-OpenSSH_9.2\r\n") is None
    assert tls_client_hello(client_hello(None)).sni is None


def test_tls_client_hello_split_across_records() -> None:
    record = client_hello("records.example")
    body = record[5:]
    two = b"\x16\x03\x01" + (40).to_bytes(2, "big") + body[:40] + b"\x16\x03\x01" + (len(body) - 40).to_bytes(2, "big") + body[40:]
    assert tls_client_hello(two).sni == "records.example"


def test_tls_lying_lengths_raise_malformed() -> None:
    hello = bytearray(client_hello("x.example"))
    hello[5 + 4 + 34] = 200  # session id longer than the message
    with pytest.raises(Malformed):
        tls_client_hello(bytes(hello))


def test_http_request_head() -> None:
    req = http_request(b"GET http://example.com/a?b=1 HTTP/1.1\r\nHOST: Example.COM:8080\r\nX: y\r\n\r\n")
    assert req.method == "GET" and req.target == "http://example.com/a?b=1" and req.host == "example.com:8080"
    assert http_request(b"POST /x HTTP/1.1\r\nHost: a") == NEED_MORE
    assert http_request(b"\x16\x03\x01") is None
    with pytest.raises(Malformed):
        http_request(b"GET /only-two-parts\r\n\r\n")
