"""Store ingest into SQLite: `SqliteStore.append` (validate nothing, serialise, chain,
insert, move the checkpoint) beside a bare `sqlite3` executemany of the same rows
into a table of the same shape, in one run. Target: ≥ 50% of the bare rate. Then
`append_new`, the way `auditor ingest` writes: the same, less what the store holds."""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditor.model import Destination, EgressEvent, HttpInfo, PayloadInfo, Source
from auditor.store.chain import canonical_model, link
from auditor.store.sqlite import SqliteStore, time_us

BATCH = 1_000


def synthetic(n: int) -> list[EgressEvent]:
    t0 = datetime(2026, 11, 26, tzinfo=UTC)
    return [
        EgressEvent(
            time=t0 + timedelta(milliseconds=i),
            sensor_id=f"proxy-{i % 4}",
            kind="http",
            source=Source(ip=f"10.42.{i % 7}.{i % 250}", port=40000 + i % 20000, pod=f"agent-{i % 13}", namespace="gretel-hybrid", scope="pod"),
            destination=Destination(host="api.gretel.cloud", sni="api.gretel.cloud", http_host="api.gretel.cloud", ip="203.0.113.10", port=443, tls=True),
            http=HttpInfo(method="PATCH", path="/projects/models", query=f"uid=m_{i}&type=train", status=200, request_bytes_wire=42),
            payload=PayloadInfo(sha256="ab" * 32, size=42, labels=["metadata"], metadata_kinds=["model-id", "model-status"], inspected=True),
        )
        for i in range(n)
    ]


def main(n: int = 200_000) -> None:
    events = synthetic(n)
    with tempfile.TemporaryDirectory() as tmp:
        # the reference gets the finished rows for free: only the insert is timed
        rows = link([(e.sensor_id, "event", e.id, time_us(e.time), canonical_model(e)) for e in events], {})
        bare = sqlite3.connect(Path(tmp) / "bare.db", isolation_level=None)
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute("PRAGMA synchronous=NORMAL")
        bare.execute(
            "CREATE TABLE records (sensor_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, record_id TEXT NOT NULL, "
            "time_us INTEGER NOT NULL, body BLOB NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, "
            "PRIMARY KEY (sensor_id, seq)) WITHOUT ROWID"
        )
        bare.execute("CREATE INDEX records_time ON records (kind, time_us)")
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            bare.execute("BEGIN")
            bare.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows[i : i + BATCH])
            bare.execute("COMMIT")
        bare_rate = n / (time.perf_counter() - t)

        store = SqliteStore(Path(tmp) / "store.db")
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            store.append(events[i : i + BATCH])
        ours = n / (time.perf_counter() - t)
        assert store.count() == n and store.verify().ok

        # `auditor ingest`'s way: the same, skipping what the store holds (nothing, then everything)
        fresh = SqliteStore(Path(tmp) / "ingest.db")
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            fresh.append_new(events[i : i + BATCH])
        new_rate = n / (time.perf_counter() - t)
        t = time.perf_counter()
        skipped = sum(fresh.append_new(events[i : i + BATCH]) for i in range(0, n, BATCH))
        again_rate = n / (time.perf_counter() - t)
        assert skipped == n and fresh.count() == n
    print(f"store ingest, {n} events in batches of {BATCH}")
    print(f"  bare sqlite3 executemany (reference): {bare_rate:>10,.0f} rows/s")
    print(f"  SqliteStore.append (serialise+chain): {ours:>10,.0f} events/s")
    print(f"  ratio: {ours / bare_rate:.2f} (target >= 0.50)")
    print(f"  SqliteStore.append_new, all new:      {new_rate:>10,.0f} events/s ({new_rate / ours:.2f} of append)")
    print(f"  SqliteStore.append_new, all stored:   {again_rate:>10,.0f} events/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
