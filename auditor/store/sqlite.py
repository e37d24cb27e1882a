"""SQLite evidence store (WAL): the embedded default, one file, no server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from auditor.errors import AuditorError
from auditor.model import EgressEvent, Finding
from auditor.store.base import ChainHead, VerifyResult
from auditor.store.chain import Record, canonical_model, link
from auditor.store.retention import (
    RETENTION_SENSOR,
    RemovedPrefix,
    RetentionResult,
    RetentionStatement,
    resume_points,
    statement_event,
)
from auditor.store.verify import verify_links

SCHEMA_VERSION = 1
PAGE_SIZE = 16384  # bytes; see SqliteStore.__init__
SCAN_MMAP = 1 << 40  # bytes of the file a scanning reader may map (SQLite caps it at its compile-time limit)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    sensor_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    body BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (sensor_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_time ON records (kind, time_us);
CREATE TABLE IF NOT EXISTS checkpoints (
    sensor_id TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    head_seq INTEGER NOT NULL,
    head_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
"""
# retention lifts this guard inside its own transaction and puts it back before committing
_NO_DELETE_TRIGGER = """CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END"""
_SCHEMA += _NO_DELETE_TRIGGER + ";\n"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def time_us(value: datetime) -> int:
    """Exact integer microseconds since the epoch: the index the time window uses."""
    return (value - _EPOCH) // _MICROSECOND


def new_records(records: Sequence[Record], held: Iterable[tuple[str, int]]) -> list[Record]:
    """`records` less those whose (id, time_us) is `held` or on an earlier record of the batch."""
    seen = set(held)
    out: list[Record] = []
    for record in records:
        key = (record[2], record[3])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def _key_range(start: tuple[str, int] | None, stop: tuple[str, int] | None) -> tuple[str, list[object]]:
    """The SQL (to follow a WHERE condition) and arguments of a (start included, stop
    excluded) range of (sensor_id, seq) keys; an open end adds nothing."""
    sql, args = "", []
    if start is not None:
        sql += " AND (sensor_id, seq) >= (?, ?)"
        args += start
    if stop is not None:
        sql += " AND (sensor_id, seq) < (?, ?)"
        args += stop
    return sql, args


def _not_a_store(url: str, reason: str) -> AuditorError:
    return AuditorError(
        f"not an evidence store ({reason})", file=url,
        fix="pass the store a sensor, `auditor ingest` or `auditor import` wrote, or a new file name",
    )


class SqliteStore:
    """Batches are single transactions; the checkpoint moves in the same one."""

    def __init__(self, path: str | Path, *, create: bool = True, make_parents: bool = True) -> None:
        """`make_parents`: a new store's missing directories are made (a sensor's state
        directory); off, they are an error (a path a person typed, e.g. `auditor import`)."""
        self.path = Path(path)
        self.url = str(self.path)
        self._check_path(create, make_parents)
        if create and make_parents:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise AuditorError(f"cannot open the evidence store ({exc})", file=self.url, fix="check the path and its permissions") from None
        try:
            self._open_schema(create)
        except (sqlite3.Error, AuditorError) as exc:
            self._db.close()
            if isinstance(exc, AuditorError):
                raise
            if type(exc) is sqlite3.DatabaseError:  # not a database, or a damaged one; OperationalError: locked, read-only, ...
                reason = "file is not a SQLite database" if "not a database" in str(exc) else str(exc)
                raise _not_a_store(self.url, reason) from None
            raise AuditorError(f"cannot open the evidence store ({exc})", file=self.url, fix="check the file's permissions and that no other program holds it") from None

    def _check_path(self, create: bool, make_parents: bool = False) -> None:
        """Refuse what SQLite would fail on with a traceback, or quietly make: a directory,
        a missing store when reading, a store in a directory that does not exist (unless
        `make_parents`)."""
        if self.path.is_dir():
            raise AuditorError("not an evidence store (it is a directory)", file=self.url, fix="pass a file inside it, e.g. evidence.db")
        if not self.path.exists():
            if not create:
                raise AuditorError("no such evidence store", file=self.url, fix="pass the store a sensor, `auditor ingest` or `auditor import` wrote")
            if not make_parents and not self.path.parent.is_dir():
                raise AuditorError(
                    f"directory {self.path.parent} does not exist", file=self.url, fix="create it first, or pass a path in an existing directory"
                )

    def _open_schema(self, create: bool) -> None:
        """WAL, the tables and the schema version. A reader (`create` off) is refused a
        file without the evidence tables rather than handed an empty store."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not create and not {"meta", "records", "checkpoints"} <= tables:
            held = f"a SQLite database without the evidence tables; it holds {', '.join(sorted(tables)[:5])}"
            raise _not_a_store(self.url, held if tables else "an empty file, no evidence tables")
        # A new file only (an existing one keeps its size): records live in a WITHOUT ROWID
        # table, whose rows spill past ~1 KB of a 4 KB page onto an overflow page each, so an
        # event of 1-2 KB took 4.7 KB on disk; 16 KB pages keep rows up to ~4 KB in place.
        self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # one transaction: a store another process is creating is never seen half made
        self._db.executescript(
            f"BEGIN IMMEDIATE;\n{_SCHEMA}INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;"
        )

    def append(self, events: Sequence[EgressEvent]) -> None:
        records = [
            (e.sensor_id, "event", e.id, time_us(e.time), canonical_model(e))
            for e in events
        ]
        self._append(records)

    def append_new(self, events: Sequence[EgressEvent]) -> int:
        records = [(e.sensor_id, "event", e.id, time_us(e.time), canonical_model(e)) for e in events]
        return len(records) - self._append(records, new_only=True)

    def append_findings(self, sensor_id: str, findings: Sequence[Finding]) -> None:
        records = [
            (sensor_id, "finding", f.id, time_us(f.last_seen), canonical_model(f))
            for f in findings
        ]
        self._append(records)

    def _append(self, records: list[Record], *, new_only: bool = False) -> int:
        """One write transaction; `new_only` drops the events already stored inside it.
        Returns how many records it wrote."""
        if not records:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if new_only:
                records = self._unstored_tx(records)
            if records:
                self._append_tx(records)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(records)

    def _unstored_tx(self, records: list[Record]) -> list[Record]:
        """Inside the caller's write transaction: the records the store does not hold yet.
        The same event read again has the same id and the same time, so its stored copy is
        found through the time index the window reads use, with one query for the batch
        (its times as one JSON array): no index of random ids to keep, whose scattered
        pages every commit would rewrite."""
        times = orjson.dumps(sorted({r[3] for r in records})).decode()
        held = self._db.execute(
            "SELECT record_id, time_us FROM records WHERE kind = 'event' AND time_us IN (SELECT value FROM json_each(?))", (times,)
        )
        return new_records(records, held)

    def _append_tx(self, records: list[Record]) -> None:
        """Chain and insert inside the caller's write transaction."""
        db = self._db
        sensors = {r[0] for r in records}
        heads: dict[str, tuple[int, str]] = {}
        for sensor_id in sensors:
            row = db.execute(
                "SELECT head_seq, head_hash FROM checkpoints WHERE sensor_id = ?", (sensor_id,)
            ).fetchone()
            if row:
                heads[sensor_id] = (row[0], row[1])
        before = {s: heads.get(s, (0, ""))[0] for s in sensors}
        db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", link(records, heads))
        db.executemany(
            "INSERT INTO checkpoints(sensor_id, count, head_seq, head_hash) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(sensor_id) DO UPDATE SET count = excluded.count, head_seq = excluded.head_seq, "
            "head_hash = excluded.head_hash",
            [(s, heads[s][0], heads[s][0], heads[s][1]) for s in sensors if heads[s][0] != before[s]],
        )

    def events(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[EgressEvent]:
        for (body,) in self._event_rows(since, until):
            yield EgressEvent.model_validate_json(body)  # as stored: a column edited to another type fails here

    def event_bodies(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[bytes]:
        for (body,) in self._event_rows(since, until):
            yield body if isinstance(body, bytes) else str(body).encode()

    def event_rows(
        self, since: datetime | None = None, until: datetime | None = None, *,
        start: tuple[str, int] | None = None, stop: tuple[str, int] | None = None,
    ) -> Iterator[tuple[int, str, int, bytes | str]]:
        """Without a window, a scan of the table (or its `start`..`stop` range) in key order,
        three times faster than one lookup per row through the time index; within a
        window, through the index."""
        lo = time_us(since) if since else -(2**62)
        hi = time_us(until) if until else 2**62
        where = "kind = 'event' AND time_us >= ? AND time_us < ?"
        if not since and not until:
            where = "+kind = 'event' AND +time_us >= ? AND +time_us < ?"  # unary + keeps the time index out of the plan
        keys, key_args = _key_range(start, stop)
        return self._db.execute(f"SELECT time_us, sensor_id, seq, body FROM records WHERE {where}{keys}", [lo, hi, *key_args])  # noqa: S608 - constants only

    def _event_rows(self, since: datetime | None, until: datetime | None) -> sqlite3.Cursor:
        lo = time_us(since) if since else -(2**62)
        hi = time_us(until) if until else 2**62
        return self._db.execute(
            "SELECT body FROM records WHERE kind = 'event' AND time_us >= ? AND time_us < ? ORDER BY time_us, sensor_id, seq",
            (lo, hi),
        )

    def events_after(
        self, cursor: dict[str, int], limit: int = 10_000, *, prefix: str = ""
    ) -> list[tuple[str, int, EgressEvent]]:
        out: list[tuple[str, int, EgressEvent]] = []
        sensors = [r[0] for r in self._db.execute("SELECT sensor_id FROM checkpoints ORDER BY sensor_id") if r[0].startswith(prefix)]
        for sensor_id in sensors:
            rows = self._db.execute(
                "SELECT seq, body FROM records WHERE sensor_id = ? AND seq > ? AND kind = 'event' ORDER BY seq LIMIT ?",
                (sensor_id, cursor.get(sensor_id, 0), limit - len(out)),
            )
            out.extend((sensor_id, seq, EgressEvent.model_validate_json(body)) for seq, body in rows)
            if len(out) >= limit:
                break
        return out

    def last_event(self, sensor_id: str) -> EgressEvent | None:
        row = self._db.execute(
            "SELECT body FROM records WHERE sensor_id = ? AND kind = 'event' ORDER BY seq DESC LIMIT 1", (sensor_id,)
        ).fetchone()
        return EgressEvent.model_validate_json(row[0]) if row else None

    def findings(self, sensor_id: str | None = None) -> Iterator[Finding]:
        sql = "SELECT body FROM records WHERE kind = 'finding'" + (" AND sensor_id = ?" if sensor_id else "")
        for (body,) in self._db.execute(sql + " ORDER BY sensor_id, seq", (sensor_id,) if sensor_id else ()):
            yield Finding.model_validate_json(body)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records WHERE kind = 'event'").fetchone()[0])

    def chain_heads(self) -> list[ChainHead]:
        rows = self._db.execute("SELECT sensor_id, count, head_seq, head_hash FROM checkpoints ORDER BY sensor_id")
        return [ChainHead(sensor_id=r[0], count=r[1], head_seq=r[2], head_hash=r[3]) for r in rows]

    def verify(self) -> VerifyResult:
        """One read transaction (a WAL snapshot): checkpoints and rows agree while sensors write."""
        self._db.execute("BEGIN")
        try:
            checkpoints = self.raw_checkpoints()
            rows = self._db.execute(
                "SELECT sensor_id, seq, record_id, body, prev_hash, hash FROM records ORDER BY sensor_id, seq"
            )
            return verify_links(rows, checkpoints, self._resume_points())
        finally:
            self._db.execute("COMMIT")

    def _resume_points(self) -> dict[str, tuple[int, str]]:
        rows = self._db.execute("SELECT body FROM records WHERE sensor_id = ? ORDER BY seq", (RETENTION_SENSOR,))
        return resume_points(body for (body,) in rows)

    # --- maintenance: schema, copy, retention (see retention.py) ---------------------------

    def schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> list[int]:
        """Version 1 is the only SQLite schema so far: nothing to apply."""
        return []

    def raw_checkpoints(self) -> dict[str, tuple[int, int, str]]:
        rows = self._db.execute("SELECT sensor_id, count, head_seq, head_hash FROM checkpoints")
        return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows}

    def raw_records(self) -> Iterator[tuple[str, int, str, str, int, bytes, str, str]]:
        """Every stored row as it is, by sensor then seq."""
        yield from self._db.execute(
            "SELECT sensor_id, seq, kind, record_id, time_us, body, prev_hash, hash FROM records ORDER BY sensor_id, seq"
        )

    def chained_rows(
        self, ranges: Sequence[tuple[tuple[str, int] | None, tuple[str, int] | None]]
    ) -> Iterator[tuple[str, int, str, int, bytes, str, str]]:
        """(sensor_id, seq, kind, time_us, body, prev_hash, hash) of every record in each
        (start included, stop excluded) key range, ranges in turn and each in key order,
        all from one read transaction: a reader that checks the chains as it reads the
        events (the report) sees one snapshot of its ranges."""
        db = self._reader()
        try:
            db.execute(f"PRAGMA mmap_size = {SCAN_MMAP}")  # a whole-table scan reads pages in place, not copied by read()
            db.execute("BEGIN")
            for start, stop in ranges:
                keys, args = _key_range(start, stop)
                yield from db.execute(
                    f"SELECT sensor_id, seq, kind, time_us, body, prev_hash, hash FROM records WHERE 1{keys} ORDER BY sensor_id, seq",  # noqa: S608 - constants only
                    args,
                )
            db.execute("COMMIT")
        finally:
            db.close()

    def load_raw(
        self, rows: Iterable[tuple[str, int, str, str, int, bytes, str, str]], checkpoints: dict[str, tuple[int, int, str]]
    ) -> int:
        """Write chains exactly as another store holds them, in one transaction; refuses
        a chain this store already has. Returns the rows written."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            have = set(self.raw_checkpoints())
            clash = sorted(have & set(checkpoints))
            if clash:
                raise AuditorError(
                    f"{self.url} already holds chains {', '.join(clash)}",
                    fix="copy into an empty store, or one without these sensors",
                )
            written = 0
            batch: list[tuple[str, int, str, str, int, bytes, str, str]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= 5_000:
                    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
                    written += len(batch)
                    batch = []
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
            written += len(batch)
            db.executemany(
                "INSERT INTO checkpoints(sensor_id, count, head_seq, head_hash) VALUES (?, ?, ?, ?)",
                [(s, *c) for s, c in checkpoints.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return written

    def retain(self, before: datetime) -> RetentionResult:
        """Remove each chain's prefix older than `before` and chain what was removed, in one
        transaction. The delete guard is lifted and restored inside that transaction."""
        cutoff = time_us(before)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            resume = self._resume_points()
            chains: dict[str, RemovedPrefix] = {}
            rows = db.execute(
                "SELECT c.sensor_id, c.head_seq, (SELECT min(r.seq) FROM records r WHERE r.sensor_id = c.sensor_id "
                "AND r.time_us >= ?) FROM checkpoints c WHERE c.sensor_id <> ? ORDER BY c.sensor_id",
                (cutoff, RETENTION_SENSOR),
            ).fetchall()
            db.execute("DROP TRIGGER records_no_delete")
            for sensor_id, head_seq, first_kept in rows:
                after = resume.get(sensor_id, (0, ""))[0]
                through = int(first_kept) - 1 if first_kept is not None else int(head_seq)
                if through <= after:
                    continue
                found = db.execute(
                    "SELECT hash FROM records WHERE sensor_id = ? AND seq = ?", (sensor_id, through)
                ).fetchone()
                if found is None:
                    raise AuditorError(
                        f"{self.url}: chain {sensor_id} has no record #{through} to retain up to",
                        fix="run `auditor verify --store` first: the chain is already broken",
                    )
                gone = db.execute(
                    "DELETE FROM records WHERE sensor_id = ? AND seq > ? AND seq <= ?", (sensor_id, after, through)
                ).rowcount
                chains[sensor_id] = RemovedPrefix(through_seq=through, last_hash=found[0], removed=gone)
            db.execute(_NO_DELETE_TRIGGER)
            seq: int | None = None
            if chains:
                now = datetime.now(UTC)
                event = statement_event(RetentionStatement(before=before, chains=chains), now)
                self._append_tx([(RETENTION_SENSOR, "event", event.id, time_us(now), canonical_model(event))])
                seq = int(db.execute("SELECT head_seq FROM checkpoints WHERE sensor_id = ?", (RETENTION_SENSOR,)).fetchone()[0])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return RetentionResult(
            before=before, removed=sum(c.removed for c in chains.values()), chains=chains, partitions_dropped=[], record_seq=seq
        )

    def _reader(self) -> sqlite3.Connection:
        """A second connection to the same file, for a reader that scans in its own transaction."""
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)

    def close(self) -> None:
        self._db.close()


class ReadOnlySqliteStore(SqliteStore):
    """A SQLite store opened only to be read: no schema statement, no pragma, and SQLite
    refuses any write, so the file is left as it was found. `immutable` also takes no
    lock and reads the main file alone, making no -wal or -shm beside it: exactly the
    bytes a signed bundle's statement covers, which nothing may be writing."""

    def __init__(self, path: str | Path, *, immutable: bool = False) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self._check_path(create=False)
        self._uri = f"{self.path.resolve().as_uri()}?{'immutable=1' if immutable else 'mode=ro'}"
        self._db = self._reader()
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            self._db.close()
            raise _not_a_store(self.url, "file is not a SQLite database" if "not a database" in str(exc) else str(exc)) from None
        if not {"meta", "records", "checkpoints"} <= tables:
            self._db.close()
            raise _not_a_store(self.url, "a SQLite database without the evidence tables")

    def _reader(self) -> sqlite3.Connection:
        return sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
