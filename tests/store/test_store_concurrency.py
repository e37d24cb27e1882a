"""Several writer processes at once, and a writer killed in the middle of a batch."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time
from collections import Counter

import psycopg

from auditor.store.base import open_store
from auditor.store.writer import BatchWriter

from .conftest import is_pg, make_events

WRITERS, BATCHES, PER_SENSOR = 4, 8, 100


def _writer(url: str, index: int, barrier: mp.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    """Each batch mixes the writer's own chain with one chain all four share."""
    store = open_store(url)
    barrier.wait(30)
    for b in range(BATCHES):
        store.append(make_events(f"w{index}", PER_SENSOR, tag=f"{index}-{b}") + make_events("shared", PER_SENSOR, tag=f"{index}-{b}"))
    store.close()


def test_four_writer_processes(store_url: str) -> None:
    open_store(store_url).close()  # schema first, as a deployment would
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(store_url, i, barrier)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    store = open_store(store_url, create=False)
    result = store.verify()
    assert result.ok, [p.line() for p in result.problems]
    total = WRITERS * BATCHES * PER_SENSOR * 2
    assert store.count() == total == len({e.id for e in store.events()})
    heads = {h.sensor_id: h.head_seq for h in result.chains}
    assert heads == {**{f"w{i}": BATCHES * PER_SENSOR for i in range(WRITERS)}, "shared": WRITERS * BATCHES * PER_SENSOR}
    # every batch's share of the shared chain is contiguous: batches never interleave
    shared = [e.notes[0] for s, _, e in store.events_after({}, limit=total) if s == "shared"]
    runs = [shared[i] for i in range(0, len(shared), PER_SENSOR)]
    assert shared == [tag for tag in runs for _ in range(PER_SENSOR)]
    assert sorted(runs) == sorted(f"{i}-{b}" for i in range(WRITERS) for b in range(BATCHES))
    store.close()


BIG = 3_000


def _victim(url: str) -> None:
    store = open_store(url)
    b = 0
    while True:
        store.append(make_events("victim", BIG, tag=f"batch-{b}"))
        b += 1


def _mid_transaction(url: str) -> bool:
    """True while the victim holds an open write transaction."""
    if is_pg(url):
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'victim' AND backend_xid IS NOT NULL"
            ).fetchone()
            return bool(row and row[0])
    probe = sqlite3.connect(url, isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def test_writer_killed_mid_batch(store_url: str) -> None:
    url = store_url + "&application_name=victim" if is_pg(store_url) else store_url
    store = open_store(store_url)
    proc = mp.get_context("fork").Process(target=_victim, args=(url,))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while store.count() < BIG and time.monotonic() < deadline:  # one batch in, so the chain has a head
            time.sleep(0.02)
        caught = False
        while not caught and time.monotonic() < deadline:
            caught = _mid_transaction(store_url)
        assert caught, "never saw the writer inside a transaction"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL

    batches = Counter(e.notes[0] for e in store.events())
    assert batches and set(batches.values()) == {BIG}, "a partial batch is visible"
    assert store.count() == BIG * len(batches)
    result = store.verify()
    assert result.ok, [p.line() for p in result.problems]

    writer = BatchWriter(store, "victim", flush_interval=0.05)  # the restarted sensor
    writer.start()
    writer.stop()
    lifecycles = [e.sensor.lifecycle for e in store.events() if e.sensor]
    assert lifecycles == ["gap", "start", "stop"]
    assert store.verify().ok
    store.close()
