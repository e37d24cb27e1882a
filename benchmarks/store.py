"""Evidence store ingest with 1 and 4 concurrent writer processes, SQLite and PostgreSQL,
each beside a bare reference writing the same pre-chained rows into a table of the
same shape in the same run: `sqlite3.executemany` for SQLite, binary `COPY` for
PostgreSQL. The references get the finished rows for free; ours pays for
serialising, canonicalising, hashing and moving the checkpoints.

    python benchmarks/store.py [EVENTS] [--pg postgresql://...]

Without --pg it starts a throwaway local cluster (fsync and synchronous_commit on,
Debian defaults otherwise). Each writer makes its own copy of its input before the
clock starts (as a sensor's events are its own, not pages shared with a parent), CPU
is counted from the start signal, and each PostgreSQL run starts after a CHECKPOINT.
Target: PostgreSQL >= 50k events/s with 4 writers.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import pickle
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg.types.string import BytesBinaryDumper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_ingest import synthetic  # noqa: E402  (the same synthetic events as the SQLite ingest benchmark)

from auditor.model import EgressEvent  # noqa: E402
from auditor.store.base import open_store  # noqa: E402
from auditor.store.chain import canonical_model, link  # noqa: E402
from auditor.store.pgtemp import TempCluster  # noqa: E402
from auditor.store.postgres import _COLUMNS, _COPY_TYPES, DAY_US, MIGRATIONS  # noqa: E402
from auditor.store.sqlite import _SCHEMA, time_us  # noqa: E402

BATCH = 1_000
T = TypeVar("T")
Row = tuple[str, int, str, str, int, bytes, str, str]

_EVENTS: list[list[EgressEvent]] = []  # per writer; inherited by the forked writers
_ROWS: list[list[Row]] = []


def _split(events: list[EgressEvent], writers: int) -> list[list[EgressEvent]]:
    """One sensor per writer, as a deployment has it (one writer: all sensors in one)."""
    if writers == 1:
        return [events]
    return [[e for e in events if e.sensor_id == f"proxy-{w}"] for w in range(writers)]


def _chained(events: list[EgressEvent]) -> list[Row]:
    return link([(e.sensor_id, "event", e.id, time_us(e.time), canonical_model(e)) for e in events], {})


# --- writers: each runs in its own process, opens its connection before the barrier -----


def _own(data: list[T]) -> list[T]:
    """The writer's own copy of its input, made before the clock starts: a sensor's events
    live in its own memory, while reading the ones inherited through fork would charge each
    writer for copy-on-write page faults (the objects' reference counts are written)."""
    mine: list[T] = pickle.loads(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    gc.collect()
    gc.freeze()
    return mine


def _ours(url: str, index: int) -> tuple[Callable[[], None], int | None]:
    store = open_store(url)
    events = _own(_EVENTS[index])

    def run() -> None:
        for i in range(0, len(events), BATCH):
            store.append(events[i : i + BATCH])

    conn = getattr(store, "_conn", None)
    return run, conn.info.backend_pid if isinstance(conn, psycopg.Connection) else None


def _bare_sqlite(path: str, index: int) -> tuple[Callable[[], None], int | None]:
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    rows = _own(_ROWS[index])

    def run() -> None:
        for i in range(0, len(rows), BATCH):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows[i : i + BATCH])
            db.execute("COMMIT")

    return run, None


def _bare_copy(url: str, index: int) -> tuple[Callable[[], None], int | None]:
    conn = psycopg.connect(url, autocommit=True)
    conn.adapters.register_dumper(None, BytesBinaryDumper)  # as the store does
    rows = _own(_ROWS[index])

    def run() -> None:
        for i in range(0, len(rows), BATCH):
            with conn.transaction(), conn.cursor() as cur, cur.copy(f"COPY bare ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows[i : i + BATCH]:
                    copy.write_row(row)

    return run, conn.info.backend_pid


Maker = Callable[[str, int], tuple[Callable[[], None], "int | None"]]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (the PostgreSQL backend serving a writer)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child(make: Maker, target: str, index: int, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:  # type: ignore[name-defined]
    run, backend = make(target, index)
    barrier.wait()
    server = _cpu_seconds(backend) if backend else 0.0
    client = time.process_time()
    run()
    out.put((time.process_time() - client, _cpu_seconds(backend) - server if backend else 0.0))


def _measure(make: Maker, target: str, writers: int) -> tuple[float, float, float]:
    """Events per second from the moment all writers are connected to the last commit,
    and CPU microseconds per event in the writers and in their database backends:
    the CPU figures do not depend on what else the machine is doing."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(writers + 1)
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_child, args=(make, target, w, barrier, out)) for w in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    t = time.perf_counter()
    cpu = [out.get() for _ in procs]
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a writer failed: {[p.exitcode for p in procs]}")
    n = sum(len(e) for e in _EVENTS[:writers])
    return n / elapsed, sum(c for c, _ in cpu) / n * 1e6, sum(s for _, s in cpu) / n * 1e6


def _settle(admin_url: str) -> None:
    """Write out what earlier runs left dirty before a PostgreSQL run, so each run starts
    from the same state instead of the later one paying for the earlier one's checkpoint."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:  # --pg as a user without pg_checkpoint
            pass


def _fresh_schema(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in admin_url else "?"
    return f"{admin_url}{sep}options=-csearch_path%3D{name}"


def _bare_table(url: str, days: set[int]) -> None:
    """The reference table: the store's own migrations renamed (table, indexes, column
    collations, the append-only triggers), same partitions."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _, _, ddl in MIGRATIONS:
            conn.execute(ddl.replace("records", "bare").replace("checkpoints", "bare_cp"))
        for day in days:
            conn.execute(f"CREATE TABLE bare_{day} PARTITION OF bare FOR VALUES FROM ({day * DAY_US}) TO ({(day + 1) * DAY_US})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", nargs="?", type=int, default=200_000)
    parser.add_argument("--pg", help="an existing PostgreSQL URL (default: a throwaway local cluster)")
    args = parser.parse_args()

    events = synthetic(args.events)
    days = {time_us(e.time) // DAY_US for e in events}
    results: list[tuple[str, int, tuple[float, float, float], tuple[float, float, float]]] = []
    sizes: dict[str, float] = {}
    cluster = None if args.pg else TempCluster(durable=True).start()
    admin = args.pg or cluster.url()  # type: ignore[union-attr]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for writers in (1, 4):
                _EVENTS[:] = _split(events, writers)
                _ROWS[:] = [_chained(e) for e in _EVENTS]
                gc.collect()
                gc.freeze()  # the inputs are permanent: writers' collections need not walk them

                bare_db = Path(tmp) / f"bare{writers}.db"
                with sqlite3.connect(bare_db, isolation_level=None) as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)
                ref = _measure(_bare_sqlite, str(bare_db), writers)
                ours_db = str(Path(tmp) / f"ours{writers}.db")
                open_store(ours_db).close()
                ours = _measure(_ours, ours_db, writers)
                results.append(("SQLite", writers, ours, ref))
                with sqlite3.connect(ours_db) as db:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes["SQLite"] = Path(ours_db).stat().st_size / len(events)

                bare_url = _fresh_schema(admin, f"bench_bare{writers}")
                _bare_table(bare_url, days)
                _settle(admin)
                ref = _measure(_bare_copy, bare_url, writers)
                ours_url = _fresh_schema(admin, f"bench_ours{writers}")
                store = open_store(ours_url)
                store._ensure_partitions(days)  # type: ignore[attr-defined]  # the reference's partitions exist too
                store.close()
                _settle(admin)
                with psycopg.connect(admin, autocommit=True) as conn:
                    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
                    ours = _measure(_ours, ours_url, writers)
                    wal, disk = conn.execute(
                        f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s), "
                        f"(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        f"WHERE n.nspname = 'bench_ours{writers}' AND c.relkind = 'r')",
                        (lsn,),
                    ).fetchone()  # type: ignore[misc]
                sizes["PostgreSQL"] = float(disk) / len(events)
                sizes["PostgreSQL WAL"] = float(wal) / len(events)
                check = open_store(ours_url)
                assert check.count() == len(events) and check.verify().ok
                check.close()
                results.append(("PostgreSQL", writers, ours, ref))
    finally:
        if cluster:
            cluster.stop()

    print(f"store ingest: {args.events} events in batches of {BATCH}, writers are processes, one sensor each")
    print("CPU is microseconds per event: in the writer processes / in their PostgreSQL backends")
    print(f"{'backend':<11} {'writers':>7} {'ours ev/s':>10} {'bare ev/s':>10} {'ratio':>6} {'ours CPU':>12} {'bare CPU':>12}   reference")
    for backend, writers, ours, ref in results:
        reference = "sqlite3 executemany" if backend == "SQLite" else "binary COPY"
        print(
            f"{backend:<11} {writers:>7} {ours[0]:>10,.0f} {ref[0]:>10,.0f} {ours[0] / ref[0]:>6.2f} "
            f"{ours[1]:>6.1f}/{ours[2]:<5.1f} {ref[1]:>6.1f}/{ref[2]:<5.1f}   {reference}"
        )
    print(
        f"bytes per event: SQLite file {sizes['SQLite']:,.0f}; PostgreSQL table+indexes {sizes['PostgreSQL']:,.0f}, "
        f"WAL written {sizes['PostgreSQL WAL']:,.0f}"
    )
    pg4 = next(o for b, w, o, _ in results if b == "PostgreSQL" and w == 4)
    cores = os.cpu_count() or 1
    print(f"PostgreSQL with 4 writers: {pg4[0]:,.0f} events/s (target >= 50,000: {'met' if pg4[0] >= 50_000 else 'NOT met'}); "
          f"CPU-bound ceiling on {cores} idle cores: {cores / (pg4[1] + pg4[2]) * 1e6:,.0f} events/s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
