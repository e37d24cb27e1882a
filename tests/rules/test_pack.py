"""The shipped pack says what the contract says, overlays compose, and broken
rule files fail with one line naming the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import AuditorError
from auditor.rules import load_pack, shipped_path
from auditor.rules.pack import ENGINE_RULES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "rules" / "gretel-hybrid.yaml").read_text()

METADATA_KINDS = [
    "project", "model-config", "model-id", "model-status", "model-run-id", "model-run-status",
    "workflow-ids", "workflow-status", "creator-email", "runner-email", "model-logs", "workflow-logs",
    "file-names",
]
OBSERVATIONS = [
    "direct-ip", "bypass", "sni-host-mismatch", "sni-dns-mismatch", "plaintext-http", "cert-name-mismatch",
    "tls-not-opened", "dns-tunnel", "dns-foreign-resolver", "dns-unsolicited-answer", "doh", "dot", "quic", "icmp-payload", "inbound",
    "malformed", "body-truncated", "client-disconnect", "port-mismatch", "registry-not-named",
]
LABELS = [
    "metadata", "training-data", "fingerprint-match", "canary", "model-artifact", "report-artifact", "credential",
    "pii", "unrecognised-route", "extra-field", "runner-mode", "inline-data-source", "plaintext-credentials",
    "forbidden-route", "high-entropy", "uninspectable",
]


def test_shipped_pack_is_package_data() -> None:
    """An installed auditor finds the pack through importlib.resources, not the checkout."""
    path = shipped_path()
    assert path.name == "gretel-hybrid.yaml" and path.read_text() == SHIPPED
    assert shipped_path("site-example.yaml").is_file()


def test_five_endpoints_from_the_contract() -> None:
    pack = load_pack()
    by_id = {ep.id: ep for ep in pack.endpoints}
    assert len(pack.endpoints) == 5
    api, artifacts, registry = by_id["gretel-api"], by_id["gretel-artifacts"], by_id["gretel-registry"]
    assert api.hosts == ("api.gretel.cloud",) and api.scopes == {"pod"}
    assert api.methods == {"GET", "POST", "PATCH", "PUT", "DELETE"}
    assert [d.glob for d in api.deny] == ["/projects/*/artifacts/**"]
    assert artifacts.hosts == ("artifacts.gretel.cloud",) and artifacts.methods == {"GET"} and artifacts.scopes == {"pod"}
    assert registry.hosts == ("074762682575.dkr.ecr.us-west-2.amazonaws.com",)
    assert registry.methods == {"GET", "HEAD"} and registry.scopes == {"node"}
    for ep in pack.endpoints:
        assert ep.ports == {443} and ep.tls
    s3 = by_id["registry-layers"]
    assert "s3.amazonaws.com" in s3.hosts and s3.buckets == {("s3", "prod-us-west-2-starport-layer-bucket")}
    regional = by_id["registry-layers-regional"]
    assert "s3-us-west-2.amazonaws.com" in regional.hosts
    assert "prod-us-west-2-starport-layer-bucket.s3.us-west-2.amazonaws.com" in regional.hosts
    assert s3.methods == regional.methods == {"GET", "HEAD"} and s3.scopes == regional.scopes == {"node"}


def test_contract_vocabulary_is_complete() -> None:
    pack = load_pack()
    assert [k.id for k in pack.metadata_kinds] == METADATA_KINDS
    assert sorted(pack.observations) == sorted(OBSERVATIONS)
    assert sorted(pack.labels) == sorted(LABELS)
    assert {c.id for c in pack.forbidden_classes} == {
        "training-data", "model-archive", "quality-privacy-reports", "sample-data", "generated-data", "run-reports",
    }
    assert pack.observations["inbound"] == "net.no-inbound"
    assert pack.labels["forbidden-route"] == "api.forbidden-route"
    assert pack.labels["metadata"] == "payload.metadata"
    for label in LABELS:
        if label != "metadata":
            assert pack.rules[pack.labels[label]].action != "allowed", label


def test_every_rule_is_complete_and_cites_the_contract() -> None:
    pack = load_pack()
    contract = {c.id: c.text for c in pack.contract}
    for rule in pack.rules.values():
        assert rule.message and rule.remediation and rule.controls, rule.id
        assert rule.contract_text == contract[rule.contract]
        assert '"' in rule.message, f"{rule.id} does not quote the contract"
        assert any(c.startswith(("SOC 2", "ISO 27001", "NIST 800-53")) for c in rule.controls)
    for rule_id, actions in ENGINE_RULES.items():
        assert pack.rules[rule_id].action in actions


def test_overlay_composes(tmp_path: Path) -> None:
    base = load_pack()
    first = tmp_path / "a.yaml"
    first.write_text(
        "overlay: {id: a}\nregistry_region: eu-central-1\nbuckets: [s3://acme-a/]\n"
        "cluster: {pod_cidrs: [10.42.0.0/16]}\nproxy: http://10.43.12.7:3128\n"
    )
    second = tmp_path / "b.yaml"
    second.write_text("overlay: {id: b}\nbuckets: [gs://acme-b]\ncluster: {dns: {suffixes: [corp.internal]}}\n")
    pack = load_pack(None, [first, second])
    registry = next(ep for ep in pack.endpoints if ep.id == "gretel-registry")
    assert registry.hosts == ("074762682575.dkr.ecr.eu-central-1.amazonaws.com",)
    layers = next(ep for ep in pack.endpoints if ep.id == "registry-layers")
    assert layers.buckets == {("s3", "prod-eu-central-1-starport-layer-bucket")}
    assert {b for ep in pack.site_endpoints for b in ep.buckets} == {("s3", "acme-a"), ("gcs", "acme-b")}
    assert pack.site.ids == ["a", "b"]
    assert pack.is_internal("10.42.3.4") and pack.is_internal("10.43.12.7")
    assert pack.is_internal("db.corp.internal") and pack.is_internal("kube-dns.kube-system.svc.cluster.local")
    assert not pack.is_internal("10.44.0.1") and not pack.is_internal("api.gretel.cloud")
    assert [s.kind for s in pack.sources] == ["pack", "overlay", "overlay"]
    assert pack.digest != base.digest
    assert load_pack(None, [first, second]).digest == pack.digest


def test_shipped_example_overlay_validates() -> None:
    pack = load_pack(None, [shipped_path("site-example.yaml")])
    assert pack.site.proxy == "http://10.43.12.7:3128"
    assert len(pack.site_endpoints) == 8


def _broken(tmp_path: Path, old: str, new: str, name: str = "broken.yaml") -> tuple[Path, int]:
    """The shipped pack with one edit, and the line (1-based) where the edit starts."""
    assert SHIPPED.count(old) >= 1, old
    text = SHIPPED.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text)
    return path, SHIPPED[: SHIPPED.index(old)].count("\n") + 1


def _error(path: Path, overlays: list[Path] | None = None) -> str:
    with pytest.raises(AuditorError) as info:
        load_pack(path, overlays or [])
    return str(info.value)


def test_unknown_key(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    hosts: [api.gretel.cloud]", "    hots: [api.gretel.cloud]")
    assert _error(path) == f"{path}:{line}: unknown key 'hots' in endpoint 'gretel-api' (fix: did you mean 'hosts'?)"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "labels:\n  metadata:", "lables:\n  metadata:")
    assert _error(path) == f"{path}:{line}: unknown key 'lables' at the top level (fix: did you mean 'labels'?)"


def test_syntax_error(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "  - id: gretel-artifacts\n", "  - id: gretel-artifacts\n   bad: [\n")
    assert _error(path) == (
        f"{path}:{line + 1}: YAML syntax error: did not find expected '-' indicator "
        "(fix: check indentation, colons and quoting at column 4)"
    )


def test_wrong_type(tmp_path: Path) -> None:
    old = "    hosts: [api.gretel.cloud]\n    ports: [443]\n    tls: true"
    path, line = _broken(tmp_path, old, "    hosts: [api.gretel.cloud]\n    ports: [443]\n    tls: maybe")
    assert _error(path) == f"{path}:{line + 2}: 'tls' must be true or false, got 'maybe' in endpoint 'gretel-api' (fix: write true or false)"


def test_port_not_a_number(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    hosts: [artifacts.gretel.cloud]\n    ports: [443]", "    hosts: [artifacts.gretel.cloud]\n    ports: [https]")
    assert _error(path) == (
        f"{path}:{line + 1}: 'ports' must be an integer, got 'https' in endpoint 'gretel-artifacts' (fix: write a number such as 443)"
    )


def test_impossible_port(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    hosts: [artifacts.gretel.cloud]\n    ports: [443]", "    hosts: [artifacts.gretel.cloud]\n    ports: [70000]")
    assert _error(path) == (
        f"{path}:{line + 1}: port 70000 is out of range in endpoint 'gretel-artifacts' (fix: use a TCP port between 1 and 65535)"
    )


def test_duplicate_rule_id(tmp_path: Path) -> None:
    first = SHIPPED[: SHIPPED.index("  - id: egress.scope\n")].count("\n") + 1
    path, line = _broken(tmp_path, "  - id: egress.port\n", "  - id: egress.scope\n")
    assert _error(path) == (
        f"{path}:{line}: duplicate rule id 'egress.scope' (first defined at line {first}) (fix: give each rule a unique id)"
    )


def test_empty_host(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    hosts: [api.gretel.cloud]", '    hosts: [""]')
    assert _error(path) == (
        f"{path}:{line}: empty host in endpoint 'gretel-api' (fix: name a host such as api.example.com, or remove the entry)"
    )


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    hosts: [api.gretel.cloud]", "    hosts: [api.gretel.cloud]\n    hosts: [x.example]")
    assert _error(path) == f"{path}:{line + 1}: duplicate key 'hosts' (first at line {line}) in endpoint 'gretel-api' (fix: keep one of them)"


def test_reference_to_a_missing_rule(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    rule: allow.gretel-artifacts\n", "    rule: allow.gretel-artefacts\n")
    assert _error(path) == (
        f"{path}:{line}: unknown rule 'allow.gretel-artefacts' in endpoint 'gretel-artifacts' "
        "(fix: define a rule with id 'allow.gretel-artefacts' under 'rules:')"
    )


def test_wildcard_in_the_middle(tmp_path: Path) -> None:
    path, line = _broken(tmp_path, "    hosts: [api.gretel.cloud]", "    hosts: [api.*.cloud]")
    assert _error(path) == (
        f"{path}:{line}: wildcard in host 'api.*.cloud' is not the whole leftmost label in endpoint 'gretel-api' "
        "(fix: write '*.example.com' (matches exactly one more label))"
    )


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            "overlay: {id: x}\nbuckets:\n  - s3://ok/\n  - ftp://nope\n",
            4,
            "bucket 'ftp://nope' is not s3://, gs:// or azure:// in bucket 'ftp://nope' (fix: write e.g. s3://my-bucket/ or gs://my-bucket/)",
        ),
        (
            "overlay: {id: x}\nbuckets:\n  - uri: azure://artifacts/\n",
            3,
            "bucket 'azure://artifacts/' needs its storage account in bucket 'azure://artifacts/' "
            "(fix: add 'account: <name>' (the <name>.blob.core.windows.net host))",
        ),
        (
            "overlay: {id: x}\ncluster:\n  pod_cidrs: [10.42.0.0/33]\n",
            3,
            "'10.42.0.0/33' is not an IP address or CIDR in section 'cluster' (fix: write e.g. 10.42.0.0/16 or 203.0.113.7)",
        ),
        (
            "overlay: {id: x}\nproxy: 10.43.12.7\n",
            2,
            "proxy '10.43.12.7' is not host:port at the top level (fix: write e.g. http://10.43.12.7:3128)",
        ),
        (
            "overlay: {id: x}\nallow:\n  - ecr.{region}.amazonaws.com\n  - host: kms.{zone}.example\n",
            4,
            "host 'kms.{zone}.example' uses '{zone}', which is not a pack variable in allowed host 'kms.{zone}.example' "
            "(fix: use one of {region} or write the host out)",
        ),
        (
            "overlay: {id: x}\nallow:\n  - host: mirror.example.com\n    port: 8443\n",
            4,
            "unknown key 'port' in allowed host 'mirror.example.com' (fix: did you mean 'ports'?)",
        ),
    ],
)
def test_overlay_errors(tmp_path: Path, body: str, line: int, message: str) -> None:
    overlay = tmp_path / "site.yaml"
    overlay.write_text(body)
    assert _error(shipped_path(), [overlay]) == f"{overlay}:{line}: {message}"


def test_pack_given_as_overlay_and_missing_file(tmp_path: Path) -> None:
    line = SHIPPED.splitlines().index("pack:") + 1
    assert _error(shipped_path(), [shipped_path()]) == (
        f"{shipped_path()}:{line}: this is a rule pack, not a site overlay (fix: pass a file that starts with 'overlay:')"
    )
    missing = tmp_path / "nope.yaml"
    assert _error(missing) == f"{missing}: no such rule file (fix: give the path of a rule pack or overlay YAML file)"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert _error(empty) == f"{empty}:1: the file is empty (fix: write the pack's sections (see rules/gretel-hybrid.yaml))"
