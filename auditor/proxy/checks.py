"""Consistency checks on one connection: the facts a proxy can see that a rule cannot.

Each check returns observation strings from the shared vocabulary; the policy decides
what they mean. Kept apart from the addon so they are plain functions over names,
testable without a flow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509

from auditor.rules.hosts import is_ip, normalise_host, split_host_port


def _name(raw: str | None) -> str | None:
    """Host without port, normalised; None for nothing."""
    if not raw:
        return None
    host, _ = split_host_port(raw)
    return normalise_host(host) if host else None


def fronting(connect_target: str | None, sni: str | None, http_host: str | None) -> list[str]:
    """`sni-host-mismatch` when the CONNECT target, SNI and Host/:authority name different hosts.

    An IP-literal CONNECT target with a name in SNI is how clients that resolve themselves
    talk to proxies, so an IP never disagrees with a name here (`direct-ip` covers it).
    """
    names = {n for n in (_name(connect_target), _name(sni), _name(http_host)) if n and not is_ip(n)}
    return ["sni-host-mismatch"] if len(names) > 1 else []


def direct_ip(names: Iterable[str | None]) -> list[str]:
    """`direct-ip` when the client named its destination only by an IP literal."""
    seen = [n for n in (_name(x) for x in names) if n]
    return ["direct-ip"] if seen and all(is_ip(n) for n in seen) else []


def port_mismatch(host: str | None, port: int | None, endpoints: Sequence[tuple[Sequence[str], Sequence[int]]]) -> list[str]:
    """`port-mismatch` when a host the contract names is reached on a port the contract does not give it."""
    name = _name(host)
    if not name or port is None:
        return []
    for hosts, ports in endpoints:
        if any(_host_matches(name, pattern) for pattern in hosts) and port not in ports:
            return ["port-mismatch"]
    return []


def plaintext(host: str | None, tls: bool, tls_hosts: Sequence[str]) -> list[str]:
    """`plaintext-http` when a request to a host whose endpoint requires TLS went without it."""
    name = _name(host)
    if tls or not name:
        return []
    return ["plaintext-http"] if any(_host_matches(name, p) for p in tls_hosts) else []


def _host_matches(name: str, pattern: str) -> bool:
    """Exact, or `*.example.com` for exactly one more label (the pack's wildcard rule)."""
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        rest = pattern[2:]
        return name.endswith("." + rest) and name.count(".") == rest.count(".") + 1
    return name == pattern


def cert_covers(cert: x509.Certificate, sni: str) -> bool:
    """Whether the leaf certificate's SANs (or CN, when it has no SAN) cover the SNI (RFC 6125)."""
    name = normalise_host(sni)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [d.lower().rstrip(".") for d in san.get_values_for_type(x509.DNSName)]
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        ips = []
    if is_ip(name):
        try:
            return any(ipaddress.ip_address(i) == ipaddress.ip_address(name) for i in ips)
        except ValueError:
            return False
    return any(_host_matches(name, d) for d in dns)


def cert_mismatch(cert: x509.Certificate | None, sni: str | None) -> list[str]:
    """`cert-name-mismatch` when the upstream leaf does not name the server the client asked for."""
    if cert is None or not sni:
        return []
    return [] if cert_covers(cert, sni) else ["cert-name-mismatch"]
