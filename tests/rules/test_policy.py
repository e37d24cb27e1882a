"""The policy on whole events: every name a destination went by, direction,
observations, payload labels, the worst rule deciding, findings grouped for a
reviewer, and properties: nothing outside the pack is ever allowed, and the
caches never change an answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.model import (
    Decision,
    DetectorFinding,
    Destination,
    DnsInfo,
    EgressEvent,
    FlowInfo,
    HttpInfo,
    PayloadInfo,
    Source,
    sensor_event,
)
from auditor.rules import Pack, evaluate, group_findings, judge, load_pack, shipped_path
from auditor.rules.hosts import normalise_host

ROOT = Path(__file__).resolve().parents[2]
POD = Source(ip="10.42.0.17", pod="agent-1", namespace="gretel-hybrid", scope="pod")
NODE = Source(ip="192.168.10.12", node="node-b", scope="node")
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pack() -> Pack:
    return load_pack()


@pytest.fixture(scope="module")
def site() -> Pack:
    return load_pack(None, [shipped_path("site-example.yaml")])


def api(method: str = "POST", path: str = "/v1/logs/model", payload: PayloadInfo | None = None, **dest: object) -> EgressEvent:
    fields: dict[str, object] = {"host": "api.gretel.cloud", "sni": "api.gretel.cloud", "http_host": "api.gretel.cloud", "port": 443, "tls": True}
    fields.update(dest)
    return EgressEvent(
        sensor_id="proxy", kind="http", source=POD, destination=Destination(**fields),  # type: ignore[arg-type]
        http=HttpInfo(method=method, scheme="https", path=path), payload=payload,
    )


def body(*labels: str, kinds: tuple[str, ...] = (), inspected: bool = True, size: int = 120, reason: str | None = None) -> PayloadInfo:
    return PayloadInfo(
        sha256="0" * 64, size=size, labels=list(labels), metadata_kinds=list(kinds), inspected=inspected, not_inspected_reason=reason
    )


def decide(event: EgressEvent, pack: Pack) -> tuple[str, str]:
    decision = evaluate(event, pack)
    assert decision is not None
    return decision.action, decision.rule_id


def test_example_events_judged_as_expected(pack: Pack) -> None:
    events = [EgressEvent.model_validate_json(line) for line in (ROOT / "examples" / "events.jsonl").read_text().splitlines() if line]
    got = [(e.decision.action, e.decision.rule_id) if e.decision else None for e in judge(events, pack)]
    assert got == [
        None,
        ("allowed", "allow.gretel-api"),
        ("allowed", "allow.gretel-api"),
        ("allowed", "allow.gretel-api"),
        ("allowed", "allow.gretel-api"),
        ("allowed", "allow.gretel-artifacts"),
        ("allowed", "allow.gretel-registry"),
        ("violation", "data.training-data"),
        ("violation", "s3.foreign-bucket-write"),
        ("violation", "obs.bypass"),
        ("unverified", "obs.tls-not-opened"),
        None,
    ]


def test_metadata_is_allowed_and_unknown_kinds_are_not(pack: Pack) -> None:
    assert decide(api(payload=body("metadata", kinds=("model-logs",))), pack) == ("allowed", "allow.gretel-api")
    assert decide(api(payload=body("metadata", kinds=("model-logs", "shoe-size"))), pack) == ("unverified", "payload.unknown-kind")


@pytest.mark.parametrize(
    ("label", "action", "rule"),
    [
        ("training-data", "violation", "data.training-data"),
        ("fingerprint-match", "violation", "data.fingerprint-match"),
        ("canary", "violation", "data.canary"),
        ("model-artifact", "violation", "data.model-artifact"),
        ("report-artifact", "violation", "data.report-artifact"),
        ("credential", "violation", "data.credential"),
        ("pii", "violation", "data.pii"),
        ("unrecognised-route", "unverified", "payload.unrecognised-route"),
        ("extra-field", "unverified", "payload.extra-field"),
        ("runner-mode", "violation", "data.runner-mode"),
        ("inline-data-source", "violation", "data.inline-data-source"),
        ("plaintext-credentials", "violation", "data.plaintext-credentials"),
        ("forbidden-route", "violation", "api.forbidden-route"),
        ("high-entropy", "unverified", "payload.high-entropy"),
        ("uninspectable", "unverified", "payload.uninspectable"),
        ("brand-new-label", "unverified", "policy.unknown-label"),
    ],
)
def test_payload_labels(pack: Pack, label: str, action: str, rule: str) -> None:
    assert decide(api(payload=body("metadata", label, kinds=("model-logs",))), pack) == (action, rule)


def test_uninspected_bodies_are_unverified_with_the_reason(pack: Pack) -> None:
    decision = evaluate(api(payload=body(inspected=False, size=9_000_000, reason="body-over-cap")), pack)
    assert decision is not None and (decision.action, decision.rule_id) == ("unverified", "payload.not-inspected")
    assert "payload.not-inspected: body of 9000000 bytes not inspected: body-over-cap" in decision.reasons
    assert decide(api(payload=body(inspected=False, size=0)), pack) == ("allowed", "allow.gretel-api")
    assert decide(api(payload=body(size=300)), pack) == ("unverified", "payload.unlabelled")
    no_record = api()
    assert no_record.http is not None
    no_record.http.request_bytes_wire = 512
    assert decide(no_record, pack) == ("unverified", "payload.not-inspected")


def test_bodies_to_the_customers_own_storage_and_inside_the_cluster_are_not_judged(site: Pack) -> None:
    upload = EgressEvent(
        sensor_id="proxy", kind="http", source=POD,
        destination=Destination(host="s3.amazonaws.com", port=443, tls=True),
        http=HttpInfo(method="PUT", scheme="https", path="/example-corp-gretel-artifacts/p/model/m/model.tar.gz"),
        payload=body("model-artifact", size=10_000),
    )
    assert decide(upload, site) == ("allowed", "site.customer-bucket")
    internal = EgressEvent(
        sensor_id="proxy", kind="http", source=POD,
        destination=Destination(host="minio.storage.svc.cluster.local", port=9000, tls=False),
        http=HttpInfo(method="PUT", scheme="http", path="/train.csv"), payload=body("training-data"),
    )
    assert decide(internal, site) == ("allowed", "net.internal")
    leak = upload.model_copy(update={"destination": Destination(host="s3.amazonaws.com", port=443, tls=True)})
    assert leak.http is not None
    leak.http = HttpInfo(method="PUT", scheme="https", path="/attacker-bucket/model.tar.gz")
    decision = evaluate(leak, site)
    assert decision is not None and decision.rule_ids[:2] == ["s3.foreign-bucket-write", "data.model-artifact"]


@pytest.mark.parametrize(
    ("observation", "action", "rule"),
    [
        ("direct-ip", "violation", "obs.direct-ip"),
        ("bypass", "violation", "obs.bypass"),
        ("sni-host-mismatch", "violation", "obs.sni-host-mismatch"),
        ("sni-dns-mismatch", "violation", "obs.sni-dns-mismatch"),
        ("plaintext-http", "violation", "egress.plaintext"),
        ("cert-name-mismatch", "violation", "obs.cert-name-mismatch"),
        ("tls-not-opened", "unverified", "obs.tls-not-opened"),
        ("dns-tunnel", "violation", "obs.dns-tunnel"),
        ("dns-foreign-resolver", "violation", "obs.dns-foreign-resolver"),
        ("doh", "violation", "obs.doh"),
        ("dot", "violation", "obs.dot"),
        ("quic", "violation", "obs.quic"),
        ("icmp-payload", "violation", "obs.icmp-payload"),
        ("inbound", "violation", "net.no-inbound"),
        ("malformed", "unverified", "obs.malformed"),
        ("body-truncated", "unverified", "obs.body-truncated"),
        ("client-disconnect", "unverified", "obs.client-disconnect"),
        ("port-mismatch", "violation", "obs.port-mismatch"),
        ("never-heard-of-it", "unverified", "policy.unknown-observation"),
    ],
)
def test_observations(pack: Pack, observation: str, action: str, rule: str) -> None:
    event = api(payload=body("metadata", kinds=("model-logs",)))
    event.observations = [observation]
    assert decide(event, pack) == (action, rule)


def test_every_name_the_destination_went_by_is_judged(pack: Pack) -> None:
    assert decide(api(http_host="evil.example"), pack) == ("violation", "egress.host-not-allowed")
    assert decide(api(sni="evil.example"), pack) == ("violation", "egress.host-not-allowed")
    assert decide(api(http_host="api.gretel.cloud:443"), pack) == ("allowed", "allow.gretel-api")
    fronted = api(method="GET", host="artifacts.gretel.cloud", sni="artifacts.gretel.cloud", http_host="api.gretel.cloud")
    decision = evaluate(fronted, pack)
    assert decision is not None and decision.action == "allowed"  # both allowed for pods; the sensor's sni-host-mismatch decides
    flow = EgressEvent(
        sensor_id="probe", kind="flow", source=POD, destination=Destination(ip="203.0.113.10", port=443),
        flow=FlowInfo(direction="egress", resolved_name="pastebin.example"),
    )
    assert decide(flow, pack) == ("violation", "egress.host-not-allowed")
    flow.flow = FlowInfo(direction="egress", resolved_name="api.gretel.cloud")
    assert decide(flow, pack) == ("allowed", "allow.gretel-api")
    bare = EgressEvent(sensor_id="probe", kind="flow", source=POD, destination=Destination(ip="198.51.100.7", port=443))
    assert decide(bare, pack) == ("violation", "egress.host-not-allowed")
    nothing = EgressEvent(sensor_id="probe", kind="tcp", source=POD)
    assert decide(nothing, pack) == ("unverified", "egress.no-destination")


def test_inbound_and_internal_flows(pack: Pack) -> None:
    inbound = EgressEvent(
        sensor_id="probe", kind="flow", source=Source(ip="198.51.100.9", scope="external"),
        destination=Destination(ip="10.42.0.17", port=22), flow=FlowInfo(direction="inbound", tcp_state="established"),
    )
    decision = evaluate(inbound, pack)
    assert decision is not None and (decision.action, decision.rule_id, decision.severity) == ("violation", "net.no-inbound", "critical")
    assert decision.reasons == ["net.no-inbound: connection opened from 198.51.100.9 toward 10.42.0.17"]
    internal = inbound.model_copy(update={"flow": FlowInfo(direction="internal")})
    assert decide(internal, pack) == ("allowed", "net.internal")


def test_inbound_from_inside_the_cluster_is_internal(site: Pack) -> None:
    from_pod = EgressEvent(
        sensor_id="probe", kind="flow", source=Source(ip="10.42.3.3", scope="pod"),
        destination=Destination(ip="10.42.0.17", port=8080), flow=FlowInfo(direction="inbound"),
    )
    assert decide(from_pod, site) == ("allowed", "net.internal")
    from_outside = from_pod.model_copy(update={"source": Source(ip="203.0.113.99", scope="external")})
    assert decide(from_outside, site) == ("violation", "net.no-inbound")


def test_dns_lookups(site: Pack) -> None:
    def lookup(name: str) -> EgressEvent:
        return EgressEvent(
            sensor_id="probe", kind="dns", source=POD, destination=Destination(ip="10.43.0.10", port=53, transport="udp"),
            dns=DnsInfo(qname=name),
        )

    assert decide(lookup("api.gretel.cloud."), site) == ("allowed", "dns.lookup")
    assert decide(lookup("agent.gretel-hybrid.svc.cluster.local"), site) == ("allowed", "dns.lookup")
    assert decide(lookup("pastebin.example"), site) == ("violation", "dns.outside-pack")
    foreign = lookup("api.gretel.cloud")
    foreign.destination = Destination(ip="8.8.8.8", port=53, transport="udp")
    decision = evaluate(foreign, site)
    assert decision is not None and decision.rule_ids == ["obs.dns-foreign-resolver", "dns.lookup"]
    assert decision.reasons[0] == "obs.dns-foreign-resolver: query sent to 8.8.8.8, not a cluster resolver"
    tunnel = lookup("aGVsbG8gd29ybGQ.t.example")
    tunnel.observations = ["dns-tunnel"]
    assert decide(tunnel, site) == ("violation", "obs.dns-tunnel")


def test_sensor_records_are_not_judged_and_evaluate_is_pure(pack: Pack) -> None:
    assert evaluate(sensor_event("proxy", "start"), pack) is None
    event = api(payload=body("metadata", "pii", kinds=("creator-email",)))
    before = event.model_dump()
    first = evaluate(event, pack)
    assert event.model_dump() == before
    assert evaluate(event, pack) == first == evaluate(event, load_pack())


def test_findings_group_by_rule_and_destination(site: Pack) -> None:
    leak = PayloadInfo(
        size=900, inspected=True, labels=["training-data"], route="POST /v1/logs/model",
        findings=[
            DetectorFinding(detector="tabular", label="training-data", likelihood="POSSIBLE", field_path="$[0].msg", excerpt="a,b\\n***"),
            DetectorFinding(detector="fingerprint", label="training-data", likelihood="VERY_LIKELY", field_path="$[2].ctx", excerpt="***"),
        ],
    )
    events = []
    for i in range(3):
        e = api(payload=leak)
        e.time = T0 + timedelta(seconds=i)
        events.append(e)
    bypass = EgressEvent(
        sensor_id="probe", kind="flow", time=T0, source=NODE, destination=Destination(ip="198.51.100.7", port=443),
        observations=["bypass", "tls-not-opened"],
    )
    ok = api(payload=body("metadata", kinds=("model-logs",)))
    findings = group_findings(list(judge([*events, bypass, ok, sensor_event("proxy", "stop")], site)), site)
    summary = [(f.rule_id, f.destination, f.count, f.severity) for f in findings]
    assert summary == [
        ("data.training-data", "api.gretel.cloud:443", 3, "critical"),
        ("obs.bypass", "198.51.100.7:443", 1, "critical"),
        ("egress.host-not-allowed", "198.51.100.7:443", 1, "high"),
    ]
    data = findings[0]
    assert data.first_seen == T0 and data.last_seen == T0 + timedelta(seconds=2)
    assert data.event_ids == [e.id for e in events]
    assert data.likelihood == "VERY_LIKELY"
    assert data.excerpts == ["$[0].msg: a,b\\n***", "$[2].ctx: ***"]
    assert data.sources == ["gretel-hybrid/agent-1"]
    assert data.controls and data.remediation and '"' in data.message
    assert findings[1].sources == ["node-b"]
    assert findings[1].likelihood == "VERY_LIKELY"


def test_findings_keep_decisions_from_another_pack(pack: Pack) -> None:
    """An event judged by a rule this pack lacks still becomes a finding: nothing is dropped silently."""
    event = api()
    event.decision = Decision(action="violation", rule_id="acme.custom", severity="high", reasons=["acme.custom: custom check"], rule_ids=["acme.custom"])
    (finding,) = group_findings([event], pack)
    assert (finding.rule_id, finding.action, finding.severity, finding.count) == ("acme.custom", "violation", "high", 1)
    assert finding.message == "Rule acme.custom is not in pack gretel-hybrid: acme.custom: custom check"


def test_unverified_findings_are_possible_not_certain(pack: Pack) -> None:
    event = api(payload=body(inspected=False, size=10, reason="tls-not-opened"))
    (finding,) = group_findings(list(judge([event], pack)), pack)
    assert (finding.rule_id, finding.action, finding.likelihood) == ("payload.not-inspected", "unverified", "POSSIBLE")


# --- properties ---------------------------------------------------------------------------

_SHIPPED = load_pack()
_FRESH = load_pack()
ALLOWED_HOSTS = {h for ep in _SHIPPED.all_endpoints for h in ep.hosts}
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-."


def _mutations(host: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet=_ALPHABET, min_size=1, max_size=3).map(lambda p: p + host),
        st.text(alphabet=_ALPHABET, min_size=1, max_size=3).map(lambda s: host + s),
        st.integers(min_value=0, max_value=len(host) - 1).flatmap(
            lambda i: st.sampled_from("x-.0\u0430\u0435\u043e").map(lambda c: host[:i] + c + host[i + 1 :])
        ),
        st.sampled_from([host.upper(), host + ".", f" {host} "]),
    )


HOSTS = st.one_of(
    st.text(alphabet=_ALPHABET, min_size=1, max_size=30),
    st.sampled_from(sorted(ALLOWED_HOSTS)).flatmap(_mutations),
    st.ip_addresses().map(str),
    st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: st.sampled_from([str(n), hex(n)])).flatmap(lambda s: s),
)


@st.composite
def events(draw: st.DrawFn) -> EgressEvent:
    host = draw(HOSTS)
    where = draw(st.sampled_from(["host", "sni", "http_host", "ip"]))
    method = draw(st.sampled_from([None, "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"]))
    path = draw(st.sampled_from(["/", "/prod-us-west-2-starport-layer-bucket/x", "/projects/p/artifacts", "/other-bucket/k", "/v2/"]))
    return EgressEvent(
        sensor_id="prop",
        kind="http" if method else "flow",
        source=Source(scope=draw(st.sampled_from(["pod", "node", "unknown", "external"]))),
        destination=Destination(**{where: host}, port=draw(st.sampled_from([443, 80, 8443]))),  # type: ignore[arg-type]
        http=HttpInfo(method=method, scheme="https", path=path) if method else None,
        payload=body("metadata", kinds=("model-logs",)) if method else None,
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_no_host_outside_the_pack_is_ever_allowed(event: EgressEvent) -> None:
    decision = evaluate(event, _SHIPPED)
    assert decision is not None
    d = event.destination
    raw = next(v for v in (d.host, d.sni, d.http_host, d.ip) if v)
    host = normalise_host(raw.rpartition(":")[0] if raw.count(":") == 1 else raw)
    if decision.action == "allowed":
        assert host in ALLOWED_HOSTS or host.endswith(".cluster.local") or host == "cluster.local", (host, decision.reasons)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=25))
def test_caches_never_change_an_answer(batch: list[EgressEvent]) -> None:
    """A warm pack (caches full of earlier answers) decides exactly as a fresh one."""
    for event in batch:
        _FRESH.cache.clear()
        assert evaluate(event, _SHIPPED) == evaluate(event, _FRESH)


def test_one_plan_serves_every_address_behind_a_name_but_junk_names_fall_back_to_the_address() -> None:
    """The plan cache keys a named destination without its address; where the names are
    junk the address decides, and a warm cache must not hand one address's answer to another."""
    warm = load_pack()

    def flow(host: str | None, ip: str, sni: str | None = None) -> EgressEvent:
        return EgressEvent(
            sensor_id="probe", kind="flow", source=POD,
            destination=Destination(host=host, sni=sni, ip=ip, port=443, tls=True), flow=FlowInfo(direction="egress"),
        )

    for ip in ("34.1.2.3", "34.1.2.4", "198.51.100.7"):
        event = flow("api.gretel.cloud", ip, "api.gretel.cloud")
        _FRESH.cache.clear()
        assert evaluate(event, warm) == evaluate(event, _FRESH)
        assert evaluate(event, warm).action == "allowed"
    first, second = flow(":443", "198.51.100.7"), flow(":443", "198.51.100.8")
    for _ in range(2):
        assert any("198.51.100.7" in r for r in evaluate(first, warm).reasons)
        assert any("198.51.100.8" in r for r in evaluate(second, warm).reasons)


_JUNK = st.text(max_size=40)


@st.composite
def junk_events(draw: st.DrawFn) -> EgressEvent:
    """Whatever a confused sensor might send: the policy must answer, never raise."""
    method = draw(st.one_of(st.none(), st.text(min_size=1, max_size=8)))
    return EgressEvent(
        sensor_id="junk",
        kind=draw(st.sampled_from(["http", "websocket", "tcp", "tls", "flow", "dns", "icmp"])),
        source=Source(ip=draw(st.one_of(st.none(), _JUNK)), scope=draw(st.sampled_from(["pod", "node", "external", "unknown"]))),
        destination=Destination(
            host=draw(st.one_of(st.none(), _JUNK)), sni=draw(st.one_of(st.none(), _JUNK)),
            http_host=draw(st.one_of(st.none(), _JUNK)), ip=draw(st.one_of(st.none(), _JUNK)),
            port=draw(st.one_of(st.none(), st.integers(0, 65535))), tls=draw(st.one_of(st.none(), st.booleans())),
            transport=draw(st.sampled_from(["tcp", "udp", "icmp"])),
        ),
        http=HttpInfo(method=method, path=draw(_JUNK), scheme=draw(st.one_of(st.none(), _JUNK))) if method else None,
        payload=draw(st.one_of(st.none(), st.builds(
            PayloadInfo, size=st.integers(0, 10**9), labels=st.lists(_JUNK, max_size=3),
            metadata_kinds=st.lists(_JUNK, max_size=3), inspected=st.booleans(),
        ))),
        flow=draw(st.one_of(st.none(), st.builds(
            FlowInfo, direction=st.sampled_from(["egress", "inbound", "internal", "unknown"]),
            resolved_name=st.one_of(st.none(), _JUNK),
        ))),
        dns=draw(st.one_of(st.none(), st.builds(DnsInfo, qname=_JUNK))),
        observations=draw(st.lists(_JUNK, max_size=3)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk_events())
def test_any_event_gets_a_decision_and_findings(event: EgressEvent) -> None:
    decision = evaluate(event, _SHIPPED)
    assert decision is not None and decision.rule_id in _SHIPPED.rules
    assert decision.rule_ids[0] == decision.rule_id and decision.reasons
    event.decision = decision
    findings = group_findings([event], _SHIPPED)
    assert (decision.action == "allowed") == (not findings)


def test_junk_hosts_are_judged_but_kept_out_of_the_caches() -> None:
    pack = load_pack()
    junk = "x" * 5000 + ".example"
    event = api(method="GET", path="/", host=junk, sni=junk, http_host=junk)
    assert decide(event, pack) == ("violation", "egress.host-not-allowed")
    assert not any(junk in str(key) for key in pack.cache)
