"""The report model on stores the tests build: what it concludes, and why."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

from report_events import AGENT, API_IP, WORKER, api, at, clean_events, flow, leak_events, lifecycle

from auditor.model import EgressEvent, PayloadInfo
from auditor.report.model import ReportDoc, ReportParams, build_report
from auditor.store.base import redact_url
from auditor.rules import Pack
from auditor.store.base import open_store


def _report(path: Path, pack: Pack, **params: object) -> ReportDoc:
    store = open_store(str(path), create=False)
    try:
        return build_report(store, pack, ReportParams(store_url=str(path), **params))  # type: ignore[arg-type]
    finally:
        store.close()


def test_clean_store_passes_with_every_contract_line(make_store, pack: Pack) -> None:
    doc = _report(make_store(clean_events()), pack)
    assert doc.verdict.status == "PASS", doc.verdict.reasons
    assert doc.verdict.exit_code == 0
    assert doc.findings == []
    cov = doc.coverage
    assert cov.proxy_available and cov.probe_available
    assert (cov.external_flows, cov.proxy_matched_flows) == (3, 3)
    assert cov.score is not None and cov.score.percent == "100.0%"
    endpoints = {e.id: e for e in doc.contract.endpoints}
    assert endpoints["gretel-api"].status == "pass"
    assert endpoints["gretel-api"].methods == {"GET": 1, "PATCH": 1}
    assert "gretel-hybrid/agent-7c9d6b5f4-x2kqv" in endpoints["gretel-api"].sources
    assert endpoints["gretel-registry"].bytes_down == 88000
    kinds = {k.id: k for k in doc.contract.metadata_kinds}
    assert len(kinds) == 13
    assert kinds["model-status"].count == 1 and kinds["model-status"].routes == ["PATCH /projects/models"]
    assert kinds["creator-email"].status == "not-seen"
    assert all(c.status == "pass" for c in doc.contract.forbidden_classes)
    assert doc.contract.inbound.status == "pass"
    assert doc.integrity.chains_ok and {c.sensor_id for c in doc.integrity.chains} == {"proxy-a", "probe-node-a"}
    assert doc.scope.namespaces == ["gretel-hybrid"] and doc.scope.nodes == ["node-a", "node-b"]
    assert sum(b.allowed for b in doc.timeline.buckets) == doc.scope.traffic_events == 7
    assert doc.identity.pack_digest == pack.digest


def test_the_registry_get_login_named_is_stated_or_its_absence_is(make_store, pack: Pack) -> None:
    from auditor.report.render_html import render_html

    without = _report(make_store(clean_events()), pack)
    assert without.contract.login_registries == []
    assert "No get_login answer was recorded in this window" in render_html(without)
    login = api(2, "GET", "/opt/containers/get_login")
    assert login.http is not None
    login.http.login_registry = "074762682575.dkr.ecr.us-west-2.amazonaws.com"
    events = clean_events()
    doc = _report(make_store([*events[:3], login, *events[3:]]), pack)
    assert doc.contract.login_registries == ["074762682575.dkr.ecr.us-west-2.amazonaws.com"]
    assert "get_login answers: <code>074762682575.dkr.ecr.us-west-2.amazonaws.com</code>" in render_html(doc)
    assert doc.contract.login_answers_unread == 0 and "could read" not in render_html(doc)


def test_get_login_answers_no_registry_could_be_read_from_are_told_apart_from_none(make_store, pack: Pack) -> None:
    """The vendor changing the answer's format must not read as 'no answer': the check
    against the named registry silently stopped, and the report says so."""
    from auditor.report.render_html import render_html

    def answer(t: int, status: int, named: str | None) -> EgressEvent:
        e = api(t, "GET", "/opt/containers/get_login")
        assert e.http is not None
        e.http.status, e.http.login_registry = status, named
        return e

    events = clean_events()
    failed = _report(make_store([*events, answer(2, 500, None)], "failed.db"), pack)  # an error answer names nothing, and is not unread
    assert failed.contract.login_answers_unread == 0 and "No get_login answer was recorded" in render_html(failed)
    unread = _report(make_store([*events, answer(2, 200, None), answer(3, 200, None)], "unread.db"), pack)
    assert unread.contract.login_answers_unread == 2 and unread.contract.login_registries == []
    assert "2 successful get_login answers were recorded, but none named a registry the proxy could read" in render_html(unread)
    assert any("No registry could be read from the agent's get_login answers" in line for line in unread.limitations)
    mixed = _report(make_store([*events, answer(2, 200, None), answer(3, 200, "074762682575.dkr.ecr.us-west-2.amazonaws.com")], "mixed.db"), pack)
    assert mixed.contract.login_answers_unread == 1 and mixed.contract.login_registries == ["074762682575.dkr.ecr.us-west-2.amazonaws.com"]
    assert "1 other successful answer named no registry the proxy could read" in render_html(mixed)
    assert not any("get_login" in line for line in mixed.limitations)


def test_violating_store_fails_and_names_the_leak(make_store, pack: Pack) -> None:
    doc = _report(make_store(leak_events()), pack)
    assert doc.verdict.status == "FAIL" and doc.verdict.exit_code == 1
    assert "violate the contract" in doc.verdict.reason
    rules = {f.rule_id for f in doc.findings}
    assert {"data.training-data", "obs.bypass"} <= rules
    leak = next(f for f in doc.findings if f.rule_id == "data.training-data")
    assert leak.destination == "api.gretel.cloud:443"
    assert leak.locations == ["k8s://gretel-hybrid/gretel-jobs-worker"]
    assert leak.excerpts == ["msg: j*** s****,4***-****"]
    assert any("SOC 2 CC6.6" in c or "CC6" in c for c in leak.controls)
    training = next(c for c in doc.contract.forbidden_classes if c.id == "training-data")
    assert training.status == "fail" and leak.id in training.finding_ids
    assert doc.coverage.proxy_matched_flows == 4 and doc.coverage.external_flows == 5
    dest = {d.destination: d for d in doc.destinations}
    assert dest["198.51.100.7"].decision == "violation"
    assert sum(b.violation for b in doc.timeline.buckets) == 2


def test_degraded_coverage_cannot_pass_and_threshold_is_configurable(make_store, pack: Pack) -> None:
    events = clean_events()
    uninspected = PayloadInfo(sha256="a" * 64, size=5_000_000, inspected=False, not_inspected_reason="body-over-cap")
    events.insert(3, api(2, "PATCH", "/projects/models", payload=uninspected, size=5_000_000))
    path = make_store(events)
    strict = _report(path, pack)
    assert strict.verdict.status == "INCONCLUSIVE" and strict.verdict.exit_code == 2
    assert strict.coverage.score is not None and strict.coverage.score.percent == "87.5%"
    assert "below the required 95.0%" in strict.verdict.reason
    assert strict.coverage.bodies_skipped == {"body-over-cap": 1}
    assert {c.status for c in strict.contract.forbidden_classes} == {"unverified"}
    assert [f.rule_id for f in strict.findings] == ["payload.not-inspected"]
    lenient = _report(path, pack, min_coverage=Decimal("0.8"))
    assert lenient.verdict.status == "PASS", lenient.verdict.reasons
    assert "1 events could not be inspected" in lenient.verdict.reason


def test_missing_probe_is_stated_and_never_passes(make_store, pack: Pack) -> None:
    events = [e for e in clean_events() if not e.sensor_id.startswith("probe")]
    doc = _report(make_store(events), pack, min_coverage=Decimal("0"))
    assert doc.verdict.status == "INCONCLUSIVE"
    assert not doc.coverage.probe_available and doc.coverage.proxy_matched_share is None
    assert any("Probe coverage is unavailable" in r for r in doc.verdict.reasons)
    assert any(s.startswith("Probe coverage unavailable") for s in doc.coverage.statements)
    assert doc.contract.inbound.status == "unverified"
    assert doc.limitations[0].startswith("No probe evidence")


def test_tampered_chain_fails_with_the_reason(make_store, pack: Pack) -> None:
    path = make_store(clean_events())
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("UPDATE records SET body = replace(body, 'billing', 'billinG') WHERE sensor_id = 'proxy-a' AND seq = 2")
    db.commit()
    db.close()
    doc = _report(path, pack)
    assert doc.verdict.status == "FAIL"
    assert "hash chain is broken" in doc.verdict.reason and "proxy-a record #2" in doc.verdict.reason
    assert not doc.integrity.chains_ok and "edited" in doc.integrity.problems[0]


def test_empty_store_and_empty_window_are_inconclusive(make_store, pack: Pack, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    open_store(str(empty)).close()
    doc = _report(empty, pack)
    assert doc.verdict.status == "INCONCLUSIVE" and "empty" in doc.verdict.reason
    assert doc.timeline.buckets == [] and doc.coverage.score is None

    path = make_store(clean_events())
    window = _report(path, pack, since=at(3600), until=at(7200))
    assert window.verdict.status == "INCONCLUSIVE" and "no traffic events" in window.verdict.reason
    assert window.scope.window_start == at(3600)


def test_window_selects_events_and_inbound_fails(make_store, pack: Pack) -> None:
    events = clean_events()
    events.insert(4, flow(4, AGENT, "10.42.0.17", None, direction="inbound"))
    events[4].source = events[4].source.model_copy(update={"ip": "198.51.100.99", "pod": None, "scope": "external"})
    doc = _report(make_store(events), pack)
    assert doc.contract.inbound.status == "fail" and doc.contract.inbound.count == 1
    assert "10.42.0.17" not in {d.destination for d in doc.destinations}, "inbound is not an external destination"
    assert doc.verdict.status == "FAIL"
    later = _report(make_store(events, "again.db"), pack, since=at(5))
    assert later.contract.inbound.status == "pass"
    assert later.scope.traffic_events == 3


def test_sensor_gap_and_drops_count_against_coverage(make_store, pack: Pack) -> None:
    events = clean_events()
    events.insert(2, lifecycle("proxy-a", "gap", 0.5, detail="previous run ended without a stop record"))
    events.insert(3, lifecycle("proxy-a", "drop", 0.6, dropped=1))
    doc = _report(make_store(events), pack, min_coverage=Decimal("0"))
    assert doc.coverage.gaps == 1 and doc.coverage.drops == 1
    assert doc.verdict.status == "INCONCLUSIVE" and "monitoring gaps" in doc.verdict.reason
    assert doc.coverage.inspected_share is not None and doc.coverage.inspected_share.denominator == 8


def test_hostile_and_secret_strings_are_redacted(make_store, pack: Pack) -> None:
    events = clean_events()
    events.append(api(15, "GET", "/x", src=WORKER, host="evil.example", ip="198.51.100.5"))
    events[-1].source = WORKER.model_copy(update={"pod": "grt" + "a1b2c3d4e5f6a7b8c9d0e1f2", "namespace": "ns\x07"})
    doc = _report(make_store(events), pack)
    text = doc.canonical().decode()
    assert "grta1b2c3d4e5f6a7b8c9d0e1f2" not in text
    assert "[REDACTED gretel-api-key" in text
    assert "ns\\\\x07" in text
    assert redact_url("postgresql://auditor:s3cret@db:5432/evidence") == "postgresql://auditor:***@db:5432/evidence"
    assert "s3cret" not in redact_url("postgresql://db/evidence?password=s3cret&sslmode=require")


def test_matching_without_proxy_event_is_unmatched(make_store, pack: Pack) -> None:
    events = clean_events()
    events.insert(8, flow(9, WORKER, API_IP, "api.gretel.cloud", sensor="probe-node-a"))
    events[8].time = at(9)
    doc = _report(make_store(events), pack)
    assert (doc.coverage.external_flows, doc.coverage.proxy_matched_flows) == (4, 3)
    assert doc.verdict.status == "INCONCLUSIVE"
    assert doc.coverage.matched_method.startswith("auditor.probe.coverage")
    assert doc.coverage.unmatched_destinations == {"api.gretel.cloud:443": 1}


def test_unreadable_record_fails_without_a_crash(make_store, pack: Pack) -> None:
    path = make_store(clean_events())
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("UPDATE records SET body = CAST('{\"not\": \"an event\"' AS BLOB) WHERE sensor_id = 'proxy-a' AND seq = 3")
    db.commit()
    db.close()
    doc = _report(path, pack)
    assert doc.verdict.status == "FAIL"
    assert not doc.integrity.chains_ok
    assert any("could not be read" in p for p in doc.integrity.problems)
    assert any("proxy-a record #3" in p and "edited" in p for p in doc.integrity.problems)


def test_findings_merged_across_batches_match_one_batch(make_store, pack: Pack, monkeypatch) -> None:
    from auditor.report import model

    events = leak_events()[:-2]
    events += [flow(13 + i / 10, WORKER, "198.51.100.7", None, observations=["direct-ip", "bypass"]) for i in range(7)]
    path = make_store(events)
    whole = {(f.rule_id, f.destination): f for f in _report(path, pack).findings}
    monkeypatch.setattr(model, "FLAGGED_BATCH", 2)
    batched = {(f.rule_id, f.destination): f for f in _report(path, pack).findings}
    assert batched.keys() == whole.keys()
    for key, f in whole.items():
        b = batched[key]
        assert (b.count, b.first_seen, b.last_seen, b.event_ids, b.locations) == (f.count, f.first_seen, f.last_seen, f.event_ids, f.locations)
    assert whole[("obs.bypass", "198.51.100.7:443")].count == 8
