"""The consistency checks and --connect-to parsing, as plain functions."""

from __future__ import annotations

import pytest
from cryptography import x509
from mitmproxy import exceptions

from auditor.proxy import checks
from auditor.proxy.routing import ConnectTo
from auditor.sim.ca import ThrowawayCA

ENDPOINTS = [(["api.gretel.cloud", "artifacts.gretel.cloud"], [443]), (["*.s3.us-west-2.amazonaws.com"], [443])]


@pytest.mark.parametrize(
    ("target", "sni", "host", "expected"),
    [
        ("api.gretel.cloud", "api.gretel.cloud", "api.gretel.cloud:443", []),
        ("API.gretel.cloud.", "api.gretel.cloud", "api.gretel.cloud", []),
        ("api.gretel.cloud", "api.gretel.cloud", "collector.example.net", ["sni-host-mismatch"]),
        ("api.gretel.cloud", "collector.example.net", None, ["sni-host-mismatch"]),
        ("203.0.113.9", "api.gretel.cloud", "api.gretel.cloud", []),
        (None, None, "api.gretel.cloud", []),
    ],
)
def test_fronting(target: str | None, sni: str | None, host: str | None, expected: list[str]) -> None:
    assert checks.fronting(target, sni, host) == expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["203.0.113.9", None, "203.0.113.9:443"], ["direct-ip"]),
        (["0xcb.0.113.9"], ["direct-ip"]),
        (["[2001:db8::1]:443"], ["direct-ip"]),
        (["203.0.113.9", "api.gretel.cloud"], []),
        ([None], []),
    ],
)
def test_direct_ip(names: list[str | None], expected: list[str]) -> None:
    assert checks.direct_ip(names) == expected


def test_port_and_plaintext() -> None:
    assert checks.port_mismatch("api.gretel.cloud", 8443, ENDPOINTS) == ["port-mismatch"]
    assert checks.port_mismatch("api.gretel.cloud:443", 443, ENDPOINTS) == []
    assert checks.port_mismatch("bucket.s3.us-west-2.amazonaws.com", 80, ENDPOINTS) == ["port-mismatch"]
    assert checks.port_mismatch("a.b.s3.us-west-2.amazonaws.com", 80, ENDPOINTS) == []  # wildcard is one label
    assert checks.port_mismatch("collector.example.net", 8443, ENDPOINTS) == []  # not the contract's host: the policy judges it
    assert checks.plaintext("api.gretel.cloud", False, ["api.gretel.cloud"]) == ["plaintext-http"]
    assert checks.plaintext("api.gretel.cloud", True, ["api.gretel.cloud"]) == []


def test_certificate_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = ThrowawayCA(tmp_path)
    issued = ca.issue(["api.gretel.cloud", "*.gretel.cloud"], ["127.0.7.1"])
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    assert checks.cert_mismatch(cert, "api.gretel.cloud") == []
    assert checks.cert_mismatch(cert, "artifacts.gretel.cloud") == []
    assert checks.cert_mismatch(cert, "a.b.gretel.cloud") == ["cert-name-mismatch"]
    assert checks.cert_mismatch(cert, "127.0.7.1") == []
    assert checks.cert_mismatch(cert, "collector.example.net") == ["cert-name-mismatch"]


def test_connect_to_follows_curl() -> None:
    rule = ConnectTo.parse("api.gretel.cloud:443:127.0.0.1:8443")
    assert rule.matches("API.gretel.cloud", 443) and not rule.matches("api.gretel.cloud", 80)
    anyhost = ConnectTo.parse("::[::1]:9000")
    assert anyhost.addr == "::1" and anyhost.to_port == 9000 and anyhost.matches("x.example", 1)
    for bad in ("nonsense", "a:b:c:d", "h:443::8443", "h:443:addr:70000"):
        with pytest.raises(exceptions.OptionsError):
            ConnectTo.parse(bad)
