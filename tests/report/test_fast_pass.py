"""The report's fast pass (stored bytes, work done once per profile of facts) must
build exactly the document the reference pass (every event validated, judged and
observed on its own) builds: compared byte for byte as canonical JSON."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from report_events import AGENT, API_IP, NODE_B, WORKER, api, at, clean_events, flow, leak_events, lifecycle, metadata

from auditor.model import DetectorFinding, Destination, DnsInfo, EgressEvent, FlowInfo, HttpInfo, PayloadInfo, Source
from auditor.report import model
from auditor.report.model import ReportDoc, ReportParams, build_report
from auditor.rules import Pack
from auditor.store.base import open_store


def _doc(path: Path, pack: Pack, *, fast: bool, **params: object) -> bytes:
    """The canonical document, with what differs between any two runs pinned: the time,
    and the random ids (report, findings), drawn here from a counter in creation order."""
    counter = itertools.count(1)
    real = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=next(counter))  # type: ignore[assignment]
    store = open_store(str(path), create=False)
    try:
        doc: ReportDoc = build_report(store, pack, ReportParams(store_url=str(path), **params), fast=fast)  # type: ignore[arg-type]
    finally:
        uuid.uuid4 = real  # type: ignore[assignment]
        store.close()
    doc.identity.generated_at = at(0)
    return doc.canonical()


def _fast_pass_runs(path: Path, pack: Pack) -> None:
    """The fast pass itself accepts the store (it did not hand it to the reference pass)."""
    store = open_store(str(path), create=False)
    try:
        endpoint_matchers = [(ep.id, model._Matcher(ep.hosts)) for ep in pack.endpoints]
        forbidden = {fc.id: set(fc.labels) for fc in pack.forbidden_classes}
        any_forbidden = frozenset(label for labels in forbidden.values() for label in labels)
        acc = model._fast_pass(store, pack, ReportParams(store_url=str(path)), endpoint_matchers, forbidden, any_forbidden)
        assert acc.events == store.count()
    finally:
        store.close()


def mixed_events(n: int, seed: int) -> list[EgressEvent]:
    """Many events over few profiles, as real stores are: every kind of record, sources
    that repeat and sources that do not, proxies with and without an address, pod flows
    matched and unmatched, DNS, inbound, internal, leaks, hostile names, uninspected bodies."""
    rnd = random.Random(seed)
    out: list[EgressEvent] = [lifecycle(s, "start", 0) for s in ("proxy-a", "proxy-b", "probe-node-a", "probe-node-b")]
    hosts = ["api.gretel.cloud", "artifacts.gretel.cloud", "evil.example", "<script>x</script>.example", "API.Gretel.Cloud."]
    for i in range(n):
        t = 1 + i * 0.37 + rnd.random() * 0.1
        src = rnd.choice([AGENT, WORKER, NODE_B, Source(ip=f"10.42.3.{i % 40}", pod=f"p-{i % 9}", namespace="ns", scope="pod"),
                          Source(ip=f"172.16.0.{i % 5}", scope="unknown")]).model_copy(update={"port": 30000 + i})
        host = rnd.choice(hosts)
        choice = rnd.randrange(10)
        if choice < 3:
            payload = rnd.choice([
                None, metadata(["model-id", "model-status"], "PATCH /projects/models"),
                PayloadInfo(sha256="e" * 64, size=rnd.choice([0, 10, 700]), inspected=False, not_inspected_reason="body-over-cap"),
                PayloadInfo(size=12, labels=["credential"], inspected=True,
                            findings=[DetectorFinding(detector="keys", label="credential", field_path="k", excerpt=f"grt{i}***")]),
            ])
            e = api(t, rnd.choice(["GET", "PATCH", "POST"]), rnd.choice(["/projects/models", f"/upload/{i % 3}", "/users/me"]),
                    src=src, payload=payload, host=host, ip=rnd.choice([API_IP, "198.51.100.9", None]) or API_IP,
                    sensor=rnd.choice(["proxy-a", "proxy-b"]), size=rnd.choice([0, 42, 900]))
            e.http = e.http.model_copy(update={"query": f"uid=m_{i}&token=s3cret{i}"}) if e.http else None
            if rnd.random() < 0.2:
                e.destination = e.destination.model_copy(update={"ip": None})
        elif choice < 7:
            e = flow(t, src, rnd.choice([API_IP, "198.51.100.7", "10.42.9.9"]), rnd.choice([None, *hosts]),
                     sensor=rnd.choice(["probe-node-a", "probe-node-b"]), up=rnd.randrange(5000), down=rnd.randrange(90000),
                     direction=rnd.choice(["egress", "egress", "egress", "inbound", "internal"]),
                     observations=rnd.choice([[], [], ["bypass"], ["direct-ip", "bypass"], ["tls-not-opened"]]))
            if rnd.random() < 0.1 and e.flow is not None:
                e.flow = e.flow.model_copy(update={"first_seen": None, "last_seen": None})
        elif choice < 8:
            e = EgressEvent(time=at(t), sensor_id="probe-node-a", kind="dns", source=src,
                            destination=Destination(ip=rnd.choice(["10.43.0.10", "8.8.8.8"]), port=53, transport="udp", app_protocol="dns"),
                            dns=DnsInfo(qname=rnd.choice(["api.gretel.cloud", "x.evil.example"]), answers=[API_IP]))
        elif choice < 9:
            e = EgressEvent(time=at(t), sensor_id="proxy-b", kind="tls", source=src,
                            destination=Destination(host=host, sni=host, ip="198.51.100.9", port=443, tls=True),
                            observations=["tls-not-opened"],
                            payload=PayloadInfo(inspected=False, not_inspected_reason="tls-not-opened"))
        else:
            e = EgressEvent(time=at(t), sensor_id="proxy-a", kind="http", source=src,
                            destination=Destination(http_host=f"{host}:8080", port=None),
                            http=HttpInfo(method="POST", scheme="http", path="/x", request_bytes_decoded=rnd.choice([0, 5])),
                            notes=["body-truncated"] if rnd.random() < 0.5 else [])
        if rnd.random() < 0.02:
            e.flow = FlowInfo(direction="egress", bytes_up=1, first_seen=e.time, last_seen=e.time + timedelta(seconds=2))
        out.append(e)
    out += [lifecycle("proxy-a", "gap", 3), lifecycle("probe-node-b", "drop", 4, dropped=3)]
    out.sort(key=lambda e: e.time)
    return out


STORES = {
    "clean": clean_events,
    "leak": leak_events,
    "mixed": lambda: mixed_events(1500, seed=6),
    "mixed-other-seed": lambda: mixed_events(600, seed=17),
}


@pytest.mark.parametrize("name", sorted(STORES))
def test_fast_pass_builds_the_reference_document(name: str, make_store, pack: Pack) -> None:
    path = make_store(STORES[name]())
    _fast_pass_runs(path, pack)
    reference = _doc(path, pack, fast=False)
    assert _doc(path, pack, fast=True) == reference
    window = {"since": at(40), "until": at(200)}
    assert _doc(path, pack, fast=True, **window) == _doc(path, pack, fast=False, **window)


def test_parallel_verification_gives_the_same_document(make_store, pack: Pack, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_store(mixed_events(300, seed=3))
    reference = _doc(path, pack, fast=False)
    monkeypatch.setattr(model, "PARALLEL_VERIFY_ABOVE", 1)  # verify in a second process, as for a large store
    assert _doc(path, pack, fast=True) == reference


def test_a_tampered_store_is_reported_by_the_reference_pass(make_store, pack: Pack) -> None:
    import sqlite3

    path = make_store(mixed_events(200, seed=5))
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("UPDATE records SET body = replace(body, 'gretel', 'GRETEL') WHERE sensor_id = 'proxy-a' AND seq = 7")
    db.commit()
    db.close()
    fast = _doc(path, pack, fast=True)
    assert fast == _doc(path, pack, fast=False)
    assert b'"chains_ok":false' in fast


PER_EVENT = {
    # What the fast pass reads per event, or never, so two events differing only here share a
    # profile. Any other field, including one added to the schema later, must change the key.
    "id", "time", "decision.action", "sensor.lifecycle",  # a traffic event's decision is the policy's; lifecycle is for kind sensor
    "source.ip", "source.port", "source.namespace", "source.pod", "source.node", "source.workload",
    "http.query", "http.status", "http.request_bytes_wire", "http.request_bytes_decoded",
    "http.response_bytes_wire", "http.response_bytes_decoded", "http.duration_us",
    "flow.bytes_up", "flow.bytes_down", "flow.packets_up", "flow.packets_down", "flow.first_seen", "flow.last_seen",
    "payload.sha256", "payload.size",
}


def _leaves(doc: object, path: str = "") -> list[str]:
    if isinstance(doc, dict):
        return [leaf for k, v in doc.items() for leaf in _leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        return [leaf for i, v in enumerate(doc) for leaf in _leaves(v, f"{path}[{i}]")]
    return [path]


def _other(value: object) -> object:
    """A different value of the same JSON type (and truthiness, where the key only asks that)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "other"]
    return "other"


def test_every_field_is_in_the_profile_key_or_read_per_event() -> None:
    import copy

    from auditor.store.chain import json_doc

    event = EgressEvent(
        time=at(1), sensor_id="proxy-a", kind="http", source=AGENT,
        destination=Destination(host="h.example", sni="h.example", http_host="h.example", ip="198.51.100.1", port=443,
                                app_protocol="h2", tls=True),
        http=HttpInfo(method="POST", scheme="https", path="/p", query="q=1", status=200, request_bytes_wire=5,
                      request_bytes_decoded=6, response_bytes_wire=7, response_bytes_decoded=8, content_type="a/b",
                      content_encoding="gzip", alpn="h2", duration_us=9),
        payload=PayloadInfo(sha256="a" * 64, size=5, labels=["pii"], metadata_kinds=["project"], inspected=True,
                            not_inspected_reason="r", route="POST /p",
                            findings=[DetectorFinding(detector="d", label="pii", field_path="f", offset=1, excerpt="e")]),
        flow=FlowInfo(direction="egress", tcp_state="closed", bytes_up=1, bytes_down=2, packets_up=3, packets_down=4,
                      first_seen=at(1), last_seen=at(2), resolved_name="h.example", cname_chain=["c.example"]),
        dns=DnsInfo(qname="h.example", rcode="NOERROR", answers=["198.51.100.1"], cname_chain=["c"], ttl=5, resolver="r"),
        observations=["direct-ip"], notes=["n"],
    )
    doc = json_doc(event)
    doc["sensor"] = {"lifecycle": "start"}
    doc["decision"] = {"action": "allowed"}
    base = model._profile_key(doc)
    unchanged = set()
    for path in _leaves(doc):
        mutated = copy.deepcopy(doc)
        parts = path.replace("[", ".[").split(".")
        target = mutated
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        target[parts[-1]] = _other(target[parts[-1]])
        if model._profile_key(mutated) == base:
            unchanged.add(path.split("[")[0] if "[" in path else path)
    assert unchanged == PER_EVENT
