"""Append, read, window, tail and verify: the same behaviour from both backends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from auditor.model import Finding, sensor_event
from auditor.store.base import Store, open_store
from auditor.store.writer import BatchWriter

from .conftest import T0, make_events


def test_append_read_window_and_reopen(store_url: str) -> None:
    store = open_store(store_url)
    a, b = make_events("proxy-a", 30), make_events("probe-b", 20, start=T0 + timedelta(seconds=30))
    store.append(a[:10])
    store.append(a[10:] + b)
    assert store.count() == 50
    times = [e.time for e in store.events()]
    assert times == sorted(times) and len(times) == 50
    window = list(store.events(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=10)))
    assert {e.id for e in window} == {e.id for e in a[5:10] + b[5:10]}
    assert [(h.sensor_id, h.count, h.head_seq) for h in store.chain_heads()] == [("probe-b", 20, 20), ("proxy-a", 30, 30)]
    store.close()

    again = open_store(store_url, create=False)
    assert [e.id for e in again.events(since=T0 + timedelta(minutes=25))] == [e.id for e in a[25:]]
    result = again.verify()
    assert result.ok and result.records == 50
    assert {h.sensor_id: h.head_seq for h in result.chains} == {"probe-b": 20, "proxy-a": 30}
    again.close()


def test_events_span_many_days(store_url: str) -> None:
    """PostgreSQL puts these in one partition per day; reads and verify see them as one chain."""
    store = open_store(store_url)
    events = make_events("probe-days", 12, step=timedelta(hours=7))
    store.append(events)
    assert [e.id for e in store.events()] == [e.id for e in events]
    day2 = list(store.events(since=T0 + timedelta(days=1), until=T0 + timedelta(days=2)))
    assert [e.id for e in day2] == [e.id for e in events if T0 + timedelta(days=1) <= e.time < T0 + timedelta(days=2)]
    assert store.verify().ok
    store.close()


def test_tail_last_event_and_findings(store_url: str) -> None:
    store = open_store(store_url)
    store.append(make_events("proxy-a", 5) + make_events("probe-b", 3))
    tail = store.events_after({"proxy-a": 3})
    assert [(s, seq) for s, seq, _ in tail] == [("probe-b", 1), ("probe-b", 2), ("probe-b", 3), ("proxy-a", 4), ("proxy-a", 5)]
    assert len(store.events_after({}, limit=4)) == 4
    assert [(s, seq) for s, seq, _ in store.events_after({"proxy-a": 3}, prefix="proxy")] == [("proxy-a", 4), ("proxy-a", 5)]
    last = store.last_event("proxy-a")
    assert last is not None and last.http is not None and last.http.query == "uid=m_4"
    assert store.last_event("nobody") is None

    finding = Finding(
        rule_id="egress.unknown-host", action="violation", severity="high", message="m", remediation="r",
        destination="evil.example", first_seen=T0, last_seen=T0, count=1,
    )
    store.append_findings("check", [finding])
    store.append_findings("monitor", [finding.model_copy(update={"id": "f2"})])
    assert [f.id for f in store.findings("check")] == [finding.id]
    assert sorted(f.id for f in store.findings()) == sorted([finding.id, "f2"])
    assert store.count() == 8  # findings are chained records, not events
    assert store.verify().ok
    store.close()


def test_batch_writer_lifecycle_and_gap(store_url: str) -> None:
    store = open_store(store_url)
    writer = BatchWriter(store, "proxy-w", batch_size=50, flush_interval=0.05)
    writer.start(config_digest="sha256:abc")
    for event in make_events("proxy-w", 120):
        assert writer.submit(event)
    writer.close()  # no stop: the next run must chain a gap
    again = BatchWriter(store, "proxy-w", flush_interval=0.05)
    again.start()
    again.stop()
    lifecycles = [e.sensor.lifecycle for e in store.events() if e.sensor]
    assert lifecycles == ["start", "gap", "start", "stop"]
    assert store.count() == 124 and store.verify().ok
    store.close()


def test_same_input_same_chain_in_both_backends(tmp_path: Path, pg_url: str) -> None:
    """The chain is a property of the records, not of the backend: identical heads."""
    events = make_events("proxy-x", 40) + [sensor_event("proxy-x", "stop")]
    heads = []
    for url in (str(tmp_path / "a.db"), pg_url):
        store: Store = open_store(url)
        store.append(events[:25])
        store.append(events[25:])
        heads.append(store.chain_heads())
        store.close()
    assert heads[0] == heads[1]


def test_missing_store_is_an_error_of_use(store_url: str) -> None:
    from auditor.errors import AuditorError

    with pytest.raises((AuditorError, FileNotFoundError)):
        open_store(store_url, create=False)


def test_new_sqlite_files_keep_kilobyte_rows_on_their_pages(tmp_path: Path) -> None:
    """16 kB pages for a new file (rows of 1-4 kB fit a page, no overflow page each); a
    file made with 4 kB pages keeps them, and both read and verify alike."""
    import sqlite3

    from auditor.store.sqlite import PAGE_SIZE, SqliteStore

    events = make_events("probe-p", 200)
    for e in events:
        e.notes = ["n" * 1500]  # a 2 kB row: an overflow page of its own on a 4 kB page
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size = 4096")
    db.execute("CREATE TABLE made_before (x)")  # the size is fixed once the file has a table
    db.close()
    sizes = {}
    for path in (tmp_path / "new.db", old):
        store = SqliteStore(path)
        store.append(events)
        assert store.verify().ok and [e.id for e in store.events()] == [e.id for e in events]
        store.close()
        db = sqlite3.connect(path)
        sizes[path.name] = (db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA page_count").fetchone()[0])
        db.close()
    assert sizes["new.db"][0] == PAGE_SIZE and sizes["old.db"][0] == 4096
    assert sizes["new.db"][0] * sizes["new.db"][1] < sizes["old.db"][0] * sizes["old.db"][1] / 1.3  # 3.4 against 4.9 kB an event
