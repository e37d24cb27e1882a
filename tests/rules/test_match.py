"""Destination matching, as a table: exact host, wildcard depth, IP spellings,
CIDR, IPv6, port, TLS, method, path glob, scope, object storage buckets in
path-style and virtual-hosted form, and cluster-internal traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.model import Destination, EgressEvent, HttpInfo, Source
from auditor.rules import Pack, evaluate, load_pack

OVERLAY = """\
overlay: {id: match-tests}
buckets:
  - s3://acme-artifacts/
  - uri: s3://acme-sources/
    methods: [GET, HEAD]
    scopes: [pod]
  - gs://acme-results
  - uri: azure://gretel/
    account: acmestore
kms: [kms.us-west-2.amazonaws.com]
cluster:
  pod_cidrs: [10.42.0.0/16]
  service_cidrs: [10.43.0.0/16, "fd00:43::/108"]
  node_cidrs: [192.168.10.0/24]
  dns: {servers: [10.43.0.10], suffixes: [cluster.local]}
proxy: http://proxy.audit.example:3128
allow:
  - host: "*.mirror.example.com"
    scopes: [pod]
    methods: [GET]
    paths: ["/pypi/**", "/simple/*/"]
  - host: 203.0.113.0/24
    scopes: [node]
  - host: "2001:db8:77::/48"
  - host: ntp.example.com
    ports: [123]
    transport: udp
    tls: false
    scopes: [node]
"""

LAYER = "prod-us-west-2-starport-layer-bucket"


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    path: Path = tmp_path_factory.mktemp("overlay") / "site.yaml"
    path.write_text(OVERLAY)
    return load_pack(None, [path])


def _event(host: str, port: int, method: str | None, path: str | None, scope: str, scheme: str = "https") -> EgressEvent:
    http = HttpInfo(method=method, scheme=scheme, path=path or "/") if method else None
    udp = port in (53, 123)
    return EgressEvent(
        sensor_id="t",
        kind="http" if method else "flow" if udp else "tls",
        source=Source(scope=scope),  # type: ignore[arg-type]
        destination=Destination(host=host, port=port, tls=None if udp else scheme == "https", transport="udp" if udp else "tcp"),
        http=http,
    )


# host, port, method, path, scope, action, rule
TABLE = [
    # exact hosts and case/dot spellings
    ("api.gretel.cloud", 443, "GET", "/users/me/billing", "pod", "allowed", "allow.gretel-api"),
    ("API.Gretel.Cloud.", 443, "GET", "/users/me/billing", "pod", "allowed", "allow.gretel-api"),
    ("api.gretel.cloud", 443, None, None, "pod", "allowed", "allow.gretel-api"),
    ("artifacts.gretel.cloud", 443, "GET", "/tabular/actgan/base.tar.gz", "pod", "allowed", "allow.gretel-artifacts"),
    ("evil-api.gretel.cloud", 443, "GET", "/", "pod", "violation", "egress.host-not-allowed"),
    ("api.gretel.cloud.evil.com", 443, "GET", "/", "pod", "violation", "egress.host-not-allowed"),
    ("gretel.cloud", 443, "GET", "/", "pod", "violation", "egress.host-not-allowed"),
    ("\u0430pi.gretel.cloud", 443, "GET", "/", "pod", "violation", "egress.host-not-allowed"),  # Cyrillic a
    # port, TLS, method, route
    ("api.gretel.cloud", 8443, "GET", "/", "pod", "violation", "egress.port"),
    ("api.gretel.cloud", 443, "OPTIONS", "/", "pod", "violation", "egress.method"),
    ("artifacts.gretel.cloud", 443, "PUT", "/x", "pod", "violation", "artifacts.write"),
    ("api.gretel.cloud", 443, "POST", "/projects/proj_1/artifacts", "pod", "violation", "api.forbidden-route"),
    ("api.gretel.cloud", 443, "POST", "/projects/proj_1/artifacts/upload", "pod", "violation", "api.forbidden-route"),
    ("api.gretel.cloud", 443, "POST", "/projects//proj_1/./artifacts/", "pod", "violation", "api.forbidden-route"),
    ("api.gretel.cloud", 443, "POST", "/projects/proj_1/%61rtifacts", "pod", "violation", "api.forbidden-route"),
    ("api.gretel.cloud", 443, "GET", "/projects/proj_1/artifacts", "pod", "allowed", "allow.gretel-api"),
    ("api.gretel.cloud", 443, "POST", "/projects/proj_1/models", "pod", "allowed", "allow.gretel-api"),
    # scope
    ("api.gretel.cloud", 443, "GET", "/", "node", "violation", "egress.scope"),
    ("api.gretel.cloud", 443, "GET", "/", "unknown", "unverified", "egress.scope-unknown"),
    ("074762682575.dkr.ecr.us-west-2.amazonaws.com", 443, "GET", "/v2/", "node", "allowed", "allow.gretel-registry"),
    ("074762682575.dkr.ecr.us-west-2.amazonaws.com", 443, "GET", "/v2/", "pod", "violation", "egress.scope"),
    ("074762682575.dkr.ecr.us-west-2.amazonaws.com", 443, "PUT", "/v2/x/blobs/uploads/1", "node", "violation", "registry.push"),
    ("074762682575.dkr.ecr.us-east-2.amazonaws.com", 443, "GET", "/v2/", "node", "violation", "egress.host-not-allowed"),
    # S3: the layer bucket, path-style and virtual-hosted
    ("s3.amazonaws.com", 443, "GET", f"/{LAYER}/sha256/ab", "node", "allowed", "allow.registry-layers"),
    ("s3.amazonaws.com", 443, "HEAD", f"/{LAYER}/sha256/ab", "node", "allowed", "allow.registry-layers"),
    ("s3-us-west-2.amazonaws.com", 443, "GET", f"/{LAYER}/sha256/ab", "node", "allowed", "allow.registry-layers-regional"),
    (f"{LAYER}.s3.us-west-2.amazonaws.com", 443, "GET", "/sha256/ab", "node", "allowed", "allow.registry-layers-regional"),
    (f"{LAYER}.s3.dualstack.us-west-2.amazonaws.com", 443, "GET", "/ab", "node", "allowed", "allow.registry-layers-regional"),
    (f"{LAYER}.s3.eu-west-1.amazonaws.com", 443, "GET", "/ab", "node", "violation", "egress.host-not-allowed"),
    ("s3.amazonaws.com", 443, "PUT", f"/{LAYER}/x", "node", "violation", "s3.layer-write"),
    (f"{LAYER}.s3.us-west-2.amazonaws.com", 443, "PUT", "/x", "node", "violation", "s3.layer-write"),
    ("s3.amazonaws.com", 443, "GET", f"/{LAYER}/x", "pod", "violation", "egress.scope"),
    # S3: somebody else's bucket on an allowed host
    ("s3.amazonaws.com", 443, "PUT", "/someone-elses-bucket/x", "node", "violation", "s3.foreign-bucket-write"),
    ("s3.amazonaws.com", 443, "POST", "/someone-elses-bucket/x?uploads", "node", "violation", "s3.foreign-bucket-write"),
    ("s3.amazonaws.com", 443, "GET", "/someone-elses-bucket/x", "node", "violation", "s3.foreign-bucket"),
    ("someone-elses-bucket.s3.amazonaws.com", 443, "PUT", "/x", "node", "violation", "s3.foreign-bucket-write"),
    ("someone-elses-bucket.s3.amazonaws.com", 443, None, None, "node", "violation", "s3.foreign-bucket"),
    ("s3-us-west-2.amazonaws.com", 443, "PUT", "/someone-elses-bucket/x", "node", "violation", "s3.foreign-bucket-write"),
    ("s3.amazonaws.com", 443, "GET", "/", "node", "violation", "s3.foreign-bucket"),
    ("s3.eu-west-1.amazonaws.com", 443, "PUT", "/someone-elses-bucket/x", "pod", "violation", "s3.foreign-bucket-write"),
    ("s3.amazonaws.com", 443, None, None, "node", "allowed", "allow.registry-layers"),
    # the customer's own buckets (overlay), on any host of their service
    ("s3.amazonaws.com", 443, "PUT", "/acme-artifacts/p/model/m/model.tar.gz", "pod", "allowed", "site.customer-bucket"),
    ("acme-artifacts.s3.eu-west-1.amazonaws.com", 443, "PUT", "/p/x", "pod", "allowed", "site.customer-bucket"),
    ("s3.us-east-1.amazonaws.com", 443, "PUT", "/acme-sources/x", "pod", "violation", "site.bucket-method"),
    ("s3.us-east-1.amazonaws.com", 443, "GET", "/acme-sources/x", "node", "violation", "egress.scope"),
    ("storage.googleapis.com", 443, "PUT", "/acme-results/run/data.gz", "pod", "allowed", "site.customer-bucket"),
    ("storage.googleapis.com", 443, "POST", "/upload/storage/v1/b/acme-results/o", "pod", "allowed", "site.customer-bucket"),
    ("acme-results.storage.googleapis.com", 443, "PUT", "/x", "pod", "allowed", "site.customer-bucket"),
    ("storage.googleapis.com", 443, "PUT", "/other-results/x", "pod", "violation", "storage.foreign-bucket-write"),
    ("acmestore.blob.core.windows.net", 443, "PUT", "/gretel/a/b", "pod", "allowed", "site.customer-bucket"),
    ("acmestore.blob.core.windows.net", 443, "PUT", "/other/a", "pod", "violation", "storage.foreign-bucket-write"),
    ("otherstore.blob.core.windows.net", 443, "PUT", "/gretel/a", "pod", "violation", "storage.foreign-bucket-write"),
    ("kms.us-west-2.amazonaws.com", 443, "POST", "/", "pod", "allowed", "site.kms"),
    # wildcard: exactly one more label
    ("pkgs.mirror.example.com", 443, "GET", "/pypi/requests/2.31", "pod", "allowed", "site.allowed-host"),
    ("a.b.mirror.example.com", 443, "GET", "/pypi/x", "pod", "violation", "egress.host-not-allowed"),
    ("mirror.example.com", 443, "GET", "/pypi/x", "pod", "violation", "egress.host-not-allowed"),
    ("pkgs.mirror.example.com", 443, "GET", "/simple/requests/", "pod", "allowed", "site.allowed-host"),
    ("pkgs.mirror.example.com", 443, "GET", "/simple/a/b/", "pod", "violation", "egress.method"),
    ("pkgs.mirror.example.com", 443, "POST", "/pypi/x", "pod", "violation", "egress.method"),
    # IPs and CIDRs, in every spelling
    ("203.0.113.77", 443, None, None, "node", "allowed", "site.allowed-host"),
    ("0xcb.0.0x71.77", 443, None, None, "node", "allowed", "site.allowed-host"),
    ("3405803853", 443, None, None, "node", "allowed", "site.allowed-host"),
    ("0313.0.0161.0115", 443, None, None, "node", "allowed", "site.allowed-host"),
    ("203.0.114.1", 443, None, None, "node", "violation", "egress.host-not-allowed"),
    ("[2001:db8:77::1]", 443, None, None, "pod", "allowed", "site.allowed-host"),
    ("2001:DB8:77:0:0:0:0:1", 443, None, None, "node", "allowed", "site.allowed-host"),
    ("2001:db8:78::1", 443, None, None, "pod", "violation", "egress.host-not-allowed"),
    ("ntp.example.com", 123, None, None, "node", "allowed", "site.allowed-host"),
    ("ntp.example.com", 443, None, None, "node", "violation", "egress.port"),
    ("api.gretel.cloud", 123, None, None, "pod", "violation", "egress.port"),
    # cluster-internal traffic
    ("10.42.7.9", 8080, "GET", "/metrics", "pod", "allowed", "net.internal"),
    ("0x0a2a0709", 8080, None, None, "pod", "allowed", "net.internal"),
    ("10.43.0.10", 53, None, None, "pod", "allowed", "net.internal"),
    ("[fd00:43::5]", 443, None, None, "pod", "allowed", "net.internal"),
    ("192.168.10.12", 10250, None, None, "node", "allowed", "net.internal"),
    ("agent.gretel-hybrid.svc.cluster.local", 8080, "POST", "/x", "pod", "allowed", "net.internal"),
    ("proxy.audit.example", 3128, None, None, "pod", "allowed", "net.internal"),
    ("cluster.local.evil.com", 443, None, None, "pod", "violation", "egress.host-not-allowed"),
    ("evilcluster.local", 443, None, None, "pod", "violation", "egress.host-not-allowed"),
    ("10.44.0.1", 443, None, None, "pod", "violation", "egress.host-not-allowed"),
]


@pytest.mark.parametrize(("host", "port", "method", "path", "scope", "action", "rule"), TABLE)
def test_match(pack: Pack, host: str, port: int, method: str | None, path: str | None, scope: str, action: str, rule: str) -> None:
    decision = evaluate(_event(host, port, method, path, scope), pack)
    assert decision is not None
    assert (decision.action, decision.rule_id) == (action, rule), decision.reasons


def test_quic_to_an_allowed_host_is_not_the_contract(pack: Pack) -> None:
    quic = EgressEvent(
        sensor_id="probe", kind="flow", source=Source(scope="pod"),
        destination=Destination(host="api.gretel.cloud", port=443, transport="udp", app_protocol="quic"),
    )
    decision = evaluate(quic, pack)
    assert decision is not None and decision.rule_id == "egress.port"
    assert "egress.port: api.gretel.cloud over UDP; the endpoint is TCP only" in decision.reasons


def test_plaintext_to_a_tls_endpoint(pack: Pack) -> None:
    decision = evaluate(_event("api.gretel.cloud", 443, "GET", "/", "pod", scheme="http"), pack)
    assert decision is not None and decision.rule_id == "egress.plaintext"
    plain80 = evaluate(_event("api.gretel.cloud", 80, "GET", "/", "pod", scheme="http"), pack)
    assert plain80 is not None and {"egress.port", "egress.plaintext"} <= set(plain80.rule_ids)


def test_region_overlay_moves_the_registry(tmp_path: Path) -> None:
    overlay = tmp_path / "east.yaml"
    overlay.write_text("overlay: {id: east}\nregistry_region: us-east-2\n")
    east = load_pack(None, [overlay])
    allowed = evaluate(_event("074762682575.dkr.ecr.us-east-2.amazonaws.com", 443, "GET", "/v2/", "node"), east)
    west = evaluate(_event("074762682575.dkr.ecr.us-west-2.amazonaws.com", 443, "GET", "/v2/", "node"), east)
    layer = evaluate(_event("s3.amazonaws.com", 443, "GET", "/prod-us-east-2-starport-layer-bucket/x", "node"), east)
    assert allowed is not None and allowed.action == "allowed"
    assert west is not None and west.rule_id == "egress.host-not-allowed"
    assert layer is not None and layer.rule_id == "allow.registry-layers"


def test_unknown_scope_assumed_by_the_overlay(tmp_path: Path) -> None:
    overlay = tmp_path / "lab.yaml"
    overlay.write_text("overlay: {id: lab}\nunknown_scope: pod\n")
    lab = load_pack(None, [overlay])
    decision = evaluate(_event("api.gretel.cloud", 443, "GET", "/", "unknown"), lab)
    assert decision is not None and decision.action == "allowed"
    assert any("assumes a pod" in r for r in decision.reasons)


def test_unattributed_sources_take_their_scope_from_the_overlay_cidrs(pack: Pack) -> None:
    def flow(src: str) -> EgressEvent:
        return EgressEvent(
            sensor_id="probe", kind="flow", source=Source(ip=src, scope="unknown"),
            destination=Destination(host="api.gretel.cloud", sni="api.gretel.cloud", ip="203.0.113.10", port=443),
        )

    from_pod = evaluate(flow("10.42.9.9"), pack)
    assert from_pod is not None and from_pod.rule_id == "allow.gretel-api"
    assert "allow.gretel-api: source 10.42.9.9 is in the overlay's pod CIDRs" in from_pod.reasons
    from_node = evaluate(flow("192.168.10.12"), pack)
    assert from_node is not None and from_node.rule_id == "egress.scope"
    stranger = evaluate(flow("172.31.0.5"), pack)
    assert stranger is not None and stranger.rule_id == "egress.scope-unknown"
