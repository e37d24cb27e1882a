"""SQLite evidence store (WAL): the embedded default, one file, no server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditor.model import EgressEvent, Finding
from auditor.store.base import ChainHead, VerifyResult
from auditor.store.chain import json_doc, link
from auditor.store.verify import verify_links

SCHEMA_VERSION = 1

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
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
"""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_us(value: datetime) -> int:
    """Exact integer microseconds since the epoch: the index the time window uses."""
    return (value - _EPOCH) // timedelta(microseconds=1)


class SqliteStore:
    """Batches are single transactions; the checkpoint moves in the same one."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        if not create and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such evidence store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    def append(self, events: Sequence[EgressEvent]) -> None:
        records = [
            (e.sensor_id, "event", e.id, time_us(e.time), json_doc(e))
            for e in events
        ]
        self._append(records)

    def append_findings(self, sensor_id: str, findings: Sequence[Finding]) -> None:
        records = [
            (sensor_id, "finding", f.id, time_us(f.last_seen), json_doc(f))
            for f in findings
        ]
        self._append(records)

    def _append(self, records: list) -> None:
        if not records:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            sensors = {r[0] for r in records}
            heads: dict[str, tuple[int, str]] = {}
            for sensor_id in sensors:
                row = db.execute(
                    "SELECT head_seq, head_hash FROM checkpoints WHERE sensor_id = ?", (sensor_id,)
                ).fetchone()
                if row:
                    heads[sensor_id] = (row[0], row[1])
            before = {s: heads.get(s, (0, ""))[0] for s in sensors}
            links = link(records, heads)
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [lk.row() for lk in links])
            db.executemany(
                "INSERT INTO checkpoints(sensor_id, count, head_seq, head_hash) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(sensor_id) DO UPDATE SET count = excluded.count, head_seq = excluded.head_seq, "
                "head_hash = excluded.head_hash",
                [(s, heads[s][0], heads[s][0], heads[s][1]) for s in sensors if heads[s][0] != before[s]],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def events(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[EgressEvent]:
        lo = time_us(since) if since else -(2**62)
        hi = time_us(until) if until else 2**62
        cur = self._db.execute(
            "SELECT body FROM records WHERE kind = 'event' AND time_us >= ? AND time_us < ? ORDER BY time_us, sensor_id, seq",
            (lo, hi),
        )
        for (body,) in cur:
            yield EgressEvent.model_validate_json(body)

    def events_after(self, cursor: dict[str, int], limit: int = 10_000) -> list[tuple[str, int, EgressEvent]]:
        out: list[tuple[str, int, EgressEvent]] = []
        sensors = [r[0] for r in self._db.execute("SELECT sensor_id FROM checkpoints ORDER BY sensor_id")]
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
        checkpoints = {
            r[0]: (r[1], r[2], r[3])
            for r in self._db.execute("SELECT sensor_id, count, head_seq, head_hash FROM checkpoints")
        }
        rows = self._db.execute(
            "SELECT sensor_id, seq, record_id, body, prev_hash, hash FROM records ORDER BY sensor_id, seq"
        )
        return verify_links(rows, checkpoints)

    def close(self) -> None:
        self._db.close()
