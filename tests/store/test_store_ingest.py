"""Re-ingesting skips what a store holds (`append_new`), on both backends and under
concurrent writers, with one indexed query per batch; a store opened read-only is
left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli import app
from auditor.errors import AuditorError
from auditor.model import EgressEvent
from auditor.store.base import open_store, open_store_read_only
from auditor.store.sqlite import time_us

from .conftest import T0, Raw, is_pg, make_events

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "events.jsonl"


def test_append_new_skips_stored_ids_and_repeats_within_a_batch(store_url: str) -> None:
    store = open_store(store_url)
    first, more = make_events("proxy-a", 5), make_events("proxy-a", 3, tag="more")
    store.append(first)
    assert store.append_new([*first, *more, more[0]]) == 6
    assert store.append_new(first + more) == 8
    assert store.append_new([]) == 0
    assert store.count() == 8
    assert sorted(e.id for e in store.events()) == sorted(e.id for e in first + more)
    result = store.verify()
    assert result.ok and [(h.sensor_id, h.head_seq) for h in result.chains] == [("proxy-a", 8)]
    store.close()


def _ingester(url: str, events: list[EgressEvent], barrier: mp.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    """Every process ingests the same file (the same events) at the same moment."""
    store = open_store(url)
    barrier.wait(30)
    for i in range(0, len(events), 100):
        store.append_new(events[i : i + 100])
    store.close()


def test_concurrent_ingests_of_the_same_events_store_them_once(store_url: str) -> None:
    open_store(store_url).close()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    events = make_events("proxy-a", 600, tag="same")
    procs = [ctx.Process(target=_ingester, args=(store_url, events, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    store = open_store(store_url, create=False)
    assert store.count() == 600 == len({e.id for e in store.events()})
    assert store.verify().ok
    store.close()


def test_a_record_reusing_an_id_at_another_time_is_kept(store_url: str) -> None:
    """The same event read again has its id and its time; another record under a known id
    is not that event, and evidence is never dropped on a guess."""
    store = open_store(store_url)
    event = make_events("proxy-a", 1)[0]
    store.append([event])
    later = event.model_copy(update={"time": event.time + timedelta(seconds=1)})
    assert store.append_new([event, later]) == 1
    assert [e.time for e in store.events()] == [event.time, later.time]
    store.close()


def test_a_batch_is_looked_up_with_one_query_through_the_time_index(store_url: str) -> None:
    store = open_store(store_url)
    store.append(make_events("proxy-a", 3000, step=timedelta(minutes=2)))  # five day partitions on PostgreSQL
    store.close()
    raw = Raw(store_url)
    if is_pg(store_url):
        plan = "\n".join(r[0] for r in raw.q(
            "EXPLAIN SELECT record_id, time_us FROM records WHERE kind = 'event' AND time_us = ANY(?)", ([time_us(T0)],)
        ))
        assert "records_20261120" in plan and "records_20261121" not in plan, plan  # pruned to the batch's day
    else:
        plan = "\n".join(str(r[-1]) for r in raw.q(
            "EXPLAIN QUERY PLAN SELECT record_id, time_us FROM records WHERE kind = 'event' "
            "AND time_us IN (SELECT value FROM json_each(?))", ("[]",)
        ))
        assert "USING INDEX records_time" in plan, plan
    raw.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("immutable", [False, True])
def test_a_sqlite_store_opened_read_only_is_left_as_it_was(tmp_path: Path, immutable: bool) -> None:
    url = str(tmp_path / "evidence.db")
    writer = open_store(url)
    writer.append(make_events("proxy-a", 20))
    writer.close()
    before = _sha256(tmp_path / "evidence.db")

    store = open_store_read_only(url, immutable=immutable)
    assert store.count() == 20 and store.verify().ok
    assert len(list(store.findings())) == 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.append(make_events("proxy-a", 1, tag="late"))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.append_new(make_events("proxy-a", 1, tag="late"))
    store.close()
    assert _sha256(tmp_path / "evidence.db") == before
    if immutable:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["evidence.db"]


def test_read_only_open_refuses_what_is_not_a_store(tmp_path: Path, store_url: str) -> None:
    if is_pg(store_url):
        open_store(store_url).close()
        store = open_store_read_only(store_url)
        assert store.count() == 0
        store.close()
        return
    with pytest.raises(AuditorError, match="no such evidence store"):
        open_store_read_only(str(tmp_path / "missing.db"))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(AuditorError, match="without the evidence tables"):
        open_store_read_only(str(other))
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but long enough to have a header of sorts\n" * 4)
    with pytest.raises(AuditorError, match="not a SQLite database"):
        open_store_read_only(str(text))



def test_ingest_and_check_twice_record_once_on_either_backend(store_url: str) -> None:
    runner = CliRunner()
    for skipped in (0, 12):
        run = runner.invoke(app, ["ingest", str(EXAMPLE), "--store", store_url])
        assert run.exit_code == 0 and f"skipped {skipped} already stored" in run.output, run.output
    outcomes = []
    for args in (["--no-record"], [], [], ["--no-record"]):
        run = runner.invoke(app, ["check", "--store", store_url, "--json", *args])
        assert run.exit_code == 1, run.output
        result = json.loads(run.output)
        outcomes.append((result["events"], result["recorded"], result["unchanged"], bool(result["not_recorded"])))
    assert outcomes == [(12, 0, 0, True), (12, 6, 0, False), (12, 0, 6, False), (12, 0, 6, True)]
    store = open_store(store_url, create=False)
    assert store.count() == 12 and len(list(store.findings("check"))) == 6 and store.verify().ok
    store.close()
