"""The report's fast pass (stored bytes, work done once per profile of facts) must
build exactly the document the reference pass (every event validated, judged and
observed on its own) builds: compared byte for byte as canonical JSON."""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from report_events import AGENT, API_IP, NODE_B, WORKER, api, at, clean_events, flow, leak_events, lifecycle, metadata

from auditor.model import DetectorFinding, Destination, DnsInfo, EgressEvent, FlowInfo, HttpInfo, PayloadInfo, Source
from auditor.report import model
from auditor.report.model import _EPOCH as EPOCH
from auditor.report.model import ReportDoc, ReportParams, build_report
from auditor.probe.coverage import timestamp_us
from auditor.rules import Pack
from auditor.store.base import open_store
from auditor.store.chain import record_hash


def _doc(path: Path, pack: Pack, *, fast: bool, **params: object) -> bytes:
    """The canonical document, with what differs between any two runs pinned: the time,
    and the random ids (report, findings), drawn here from a counter in creation order."""
    counter = itertools.count(1)
    real_uuid4, real_urandom = uuid.uuid4, os.urandom
    uuid.uuid4 = lambda: uuid.UUID(int=next(counter))  # type: ignore[assignment]
    os.urandom = lambda n: next(counter).to_bytes(n, "big")  # `new_id`, of findings  # type: ignore[assignment]
    store = open_store(str(path), create=False)
    try:
        doc: ReportDoc = build_report(store, pack, ReportParams(store_url=str(path), **params), fast=fast)  # type: ignore[arg-type]
    finally:
        uuid.uuid4, os.urandom = real_uuid4, real_urandom  # type: ignore[assignment]
        store.close()
    doc.identity.generated_at = at(0)
    return doc.canonical()


def _fast_pass_runs(path: Path, pack: Pack) -> None:
    """The fast pass itself accepts the store (it did not hand it to the reference pass)."""
    store = open_store(str(path), create=False)
    try:
        acc, checked = model._fast_pass(store, ReportParams(store_url=str(path)), model._Judging.of(pack), checks=True)
        assert acc.events == store.count()
        assert checked == store.verify()  # the chains checked on the way, as `verify` checks them
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
            if e.http is not None and i % 11 == 0:  # a get_login answer, naming one of two registries, or none it could read
                e.http = e.http.model_copy(update={
                    "method": "GET", "path": "/opt/containers/get_login", "login_registry": f"r{i % 2}.dkr.example" if i % 3 else None,
                    "status": rnd.choice([200, 200, 500]),
                })
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
        if i % 7 == 0:  # the agent's get_login: answered or not, naming a registry or none that could be read
            login = api(t, "GET", "/opt/containers/get_login", src=AGENT, sensor="proxy-a")
            assert login.http is not None
            login.http.status = rnd.choice([200, 500])
            login.http.login_registry = rnd.choice([None, None, "r0.dkr.example"])
            out.append(login)
    out += [lifecycle("proxy-a", "gap", 3), lifecycle("probe-node-b", "drop", 4, dropped=3)]
    out.sort(key=lambda e: e.time)
    return out


def tied_events(n: int, seed: int) -> list[EgressEvent]:
    """Mixed events on whole seconds (many sensors and events share a time), appended in
    shuffled order (a sensor's sequence is not its time order): only the (time, sensor,
    seq) order the reference pass reads in settles which come first."""
    events = mixed_events(n, seed)
    for e in events:
        e.time = e.time.replace(microsecond=0)
    random.Random(seed).shuffle(events)
    return events


STORES = {
    "clean": clean_events,
    "leak": leak_events,
    "mixed": lambda: mixed_events(1500, seed=6),
    "mixed-other-seed": lambda: mixed_events(600, seed=17),
    "ties-shuffled": lambda: tied_events(800, seed=11),
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
    window = {"since": at(10), "until": at(90)}  # a window: the chains are not all read with the events
    reference = _doc(path, pack, fast=False, **window)
    started: list[int] = []
    real = model._VerifyJob.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[model._VerifyJob], store: object) -> model._VerifyJob | None:
        job = real(cls, store)
        started.append(job is not None)
        return job

    monkeypatch.setattr(model, "PARALLEL_VERIFY_ABOVE", 1)  # verify in a second process, as for a large store
    monkeypatch.setattr(model._VerifyJob, "start", classmethod(start))
    assert _doc(path, pack, fast=True, **window) == reference
    assert started == [True]


def test_a_store_with_a_retained_prefix_gets_the_reference_document(make_store, pack: Pack, two_readers: list[int]) -> None:
    """Chains that start after a retention statement are `verify`'s to read, not the fast pass's."""
    path = make_store(mixed_events(400, seed=13))
    store = open_store(str(path), create=False)
    store.retain(at(60))
    assert store.verify().ok
    store.close()
    fast = _doc(path, pack, fast=True)
    assert fast == _doc(path, pack, fast=False)
    assert orjson.loads(fast)["integrity"]["chains_ok"]


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
    if isinstance(value, str) and value.startswith("2026-"):  # a time: a later one
        return (datetime.fromisoformat(value) + timedelta(seconds=1)).isoformat()
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
                      content_encoding="gzip", alpn="h2", duration_us=9, login_registry="r.example"),
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

    def key(d: dict[str, object]) -> tuple[object, ...]:
        return model._profile_key(model._EVENT_DECODER.decode(orjson.dumps(d)))

    base = key(doc)
    unchanged = set()
    for path in _leaves(doc):
        mutated = copy.deepcopy(doc)
        parts = path.replace("[", ".[").split(".")
        target = mutated
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        target[parts[-1]] = _other(target[parts[-1]])
        if key(mutated) == base:
            unchanged.add(path.split("[")[0] if "[" in path else path)
    assert unchanged == PER_EVENT


@pytest.fixture()
def two_readers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The fast pass as on a large store: the table cut into many small key ranges (a
    window into halves), every other one read by a forked child. Returns a list that grows
    by one per child part joined."""
    joined: list[int] = []
    real = model._PartJob.result

    def result(self: model._PartJob) -> model._Part | None:
        part = real(self)
        joined.append(1 if part is not None else 0)
        return part

    monkeypatch.setattr(model, "PARALLEL_READ_ABOVE", 1)
    monkeypatch.setattr(model, "CHUNK_ROWS", 37)
    monkeypatch.setattr(model._PartJob, "result", result)
    _only_new_threads_count(monkeypatch)
    return joined


def _only_new_threads_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads other tests of the session left behind are not this test's: count only the
    ones it starts (the fast pass does not fork beside other threads)."""
    import threading

    real, before = threading.active_count, threading.active_count()
    monkeypatch.setattr(threading, "active_count", lambda: real() - before + 1)


@pytest.mark.parametrize("name", sorted(STORES))
def test_two_readers_build_the_reference_document(name: str, make_store, pack: Pack, two_readers: list[int]) -> None:
    path = make_store(STORES[name]())
    reference = _doc(path, pack, fast=False)
    assert _doc(path, pack, fast=True) == reference
    assert two_readers == [1]  # the child read its key ranges and they were joined
    window = {"since": at(40), "until": at(200)}
    assert _doc(path, pack, fast=True, **window) == _doc(path, pack, fast=False, **window)
    assert two_readers == [1, 1]  # and the later half of the window


def test_a_failed_child_means_reading_its_spans_here(make_store, pack: Pack, two_readers: list[int],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_store(mixed_events(400, seed=8))
    reference = _doc(path, pack, fast=False)

    def broken(url: str, *, create: bool = True) -> object:
        raise RuntimeError("the child cannot open the store")

    monkeypatch.setattr(model, "open_store", broken)  # only the child opens the store again
    assert _doc(path, pack, fast=True) == reference
    assert two_readers == [0]


def _unguard(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("DROP TRIGGER records_no_delete")
    return db


def _rehashed(seq: int) -> Callable[[sqlite3.Connection], None]:
    """A record edited and given its own valid hash: only the next record's link shows it
    (at seq 37 that record starts the next key range of `two_readers`)."""

    def tamper(db: sqlite3.Connection) -> None:
        body, prev = db.execute("SELECT body, prev_hash FROM records WHERE sensor_id = 'probe-node-a' AND seq = ?", (seq,)).fetchone()
        body = body.replace(b'"id":"', b'"id":"x')
        db.execute("UPDATE records SET body = ?, hash = ? WHERE sensor_id = 'probe-node-a' AND seq = ?",
                   (body, record_hash("probe-node-a", seq, prev, body), seq))

    return tamper


TAMPERING: dict[str, str | Callable[[sqlite3.Connection], None]] = {
    "rehashed": _rehashed(20),
    "rehashed-at-a-cut": _rehashed(37),
    # what an attacker with the file does; each breaks a chain `verify` names, or (the
    # columns no hash covers) changes what both passes read in the same way
    "edited": "UPDATE records SET body = replace(body, '\"id\":\"', '\"id\":\"x') WHERE sensor_id = 'proxy-a' AND seq = 7",
    "deleted": "DELETE FROM records WHERE sensor_id = 'probe-node-a' AND seq = 20",
    "reordered": "UPDATE records SET seq = -1 WHERE sensor_id = 'proxy-b' AND seq = 30; "
                 "UPDATE records SET seq = 30 WHERE sensor_id = 'proxy-b' AND seq = 31; "
                 "UPDATE records SET seq = 31 WHERE sensor_id = 'proxy-b' AND seq = -1",
    "truncated": "DELETE FROM records WHERE sensor_id = 'proxy-a' AND seq = (SELECT max(seq) FROM records WHERE sensor_id = 'proxy-a')",
    "checkpoint": "UPDATE checkpoints SET head_hash = CASE WHEN head_hash LIKE 'f%' THEN 'e' ELSE 'f' END || substr(head_hash, 2) "
                  "WHERE sensor_id = 'probe-node-b'",
    "no-checkpoint": "DELETE FROM checkpoints WHERE sensor_id = 'proxy-b'",
    "seq-type": "UPDATE records SET seq = seq + 0.5 WHERE sensor_id = 'probe-node-b' AND seq = 12",
    "body-as-text": "UPDATE records SET body = CAST(body AS TEXT) WHERE sensor_id = 'proxy-a' AND seq = 9",
    "time-column": "UPDATE records SET time_us = time_us + 1000000 WHERE sensor_id = 'proxy-a' AND seq = 11",
    "time-as-text": "UPDATE records SET time_us = 'soon' WHERE sensor_id = 'probe-node-a' AND seq = 14",
    "kind-column": "UPDATE records SET kind = 'finding' WHERE sensor_id = 'proxy-b' AND seq = 8",
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_tampered_stores_get_the_reference_document(how: str, make_store, pack: Pack, two_readers: list[int]) -> None:
    """The chains checked while reading stand for `verify` only when every link holds;
    anything else is `verify`'s to name and the reference pass's to read."""
    path = make_store(mixed_events(500, seed=9))
    db = _unguard(path)
    tamper = TAMPERING[how]
    if callable(tamper):
        tamper(db)
    else:
        db.executescript(tamper)
    db.close()
    store = open_store(str(path), create=False)
    verified = store.verify()
    store.close()
    fast = _doc(path, pack, fast=True)
    assert fast == _doc(path, pack, fast=False)
    integrity = orjson.loads(fast)["integrity"]
    assert integrity["chains_ok"] == verified.ok
    assert integrity["problems"] == [p.line() for p in verified.problems]
    if how not in ("body-as-text", "time-column", "time-as-text", "kind-column"):
        assert not verified.ok


def test_shared_proxy_record_ids_are_left_to_the_reference_pass(make_store, pack: Pack) -> None:
    events = mixed_events(300, seed=12)
    proxied = [e for e in events if e.sensor_id.startswith("proxy") and e.kind != "sensor"]
    proxied[5].id = proxied[40].id  # the proxy index counts an id once, as first read
    path = make_store(events)
    assert _doc(path, pack, fast=True) == _doc(path, pack, fast=False)


@given(st.lists(st.integers(min_value=-(2**52), max_value=2**52), max_size=50)
       | st.lists(st.integers(min_value=1_600_000_000_000_000, max_value=2_100_000_000_000_000), max_size=50))
def test_timestamps_agree_with_the_proxy_index_clock(values: list[int]) -> None:
    expected = [timestamp_us(EPOCH + timedelta(microseconds=v)) for v in values]
    assert model.timestamps_us(np.array(values, dtype=np.int64)).tolist() == expected


def test_event_rows_are_the_event_bodies_in_any_order(make_store) -> None:
    path = make_store(tied_events(300, seed=4))
    store = open_store(str(path), create=False)
    try:
        for window in ({}, {"since": at(20), "until": at(60)}):
            bodies = sorted(store.event_bodies(**window))
            assert sorted(bytes(row[3]) for row in store.event_rows(**window)) == bodies
            heads = store.chain_heads()
            cut = (heads[1].sensor_id, 5)
            parts = [*store.event_rows(**window, stop=cut), *store.event_rows(**window, start=cut)]
            assert sorted(bytes(row[3]) for row in parts) == bodies
    finally:
        store.close()


def test_a_postgresql_store_gets_the_reference_document(pg_url: str, pack: Pack, two_readers: list[int]) -> None:
    """PostgreSQL orders sensor ids by its own collation and has no chained scan: the key
    ranges (a window: its halves) come from its `event_rows`, and the order from its heads."""
    store = open_store(pg_url)
    try:
        store.append(tied_events(400, seed=21))
    finally:
        store.close()
    assert _doc(pg_url, pack, fast=True) == _doc(pg_url, pack, fast=False)  # type: ignore[arg-type]
    window = {"since": at(20), "until": at(120)}
    assert _doc(pg_url, pack, fast=True, **window) == _doc(pg_url, pack, fast=False, **window)  # type: ignore[arg-type]
    assert two_readers == [1, 1]


def test_a_process_with_other_threads_reads_alone(make_store, pack: Pack, two_readers: list[int]) -> None:
    """A fork copies only the calling thread (and whatever locks the others hold): a report
    made inside a threaded process (`auditor monitor`) reads every span itself."""
    import threading

    path = make_store(mixed_events(300, seed=14))
    reference = _doc(path, pack, fast=False)
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert _doc(path, pack, fast=True) == reference
    finally:
        release.set()
        other.join()
    assert two_readers == []
