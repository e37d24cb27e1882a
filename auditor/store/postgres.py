"""PostgreSQL evidence store: for a cluster where a probe on every node and several
proxies write at once.

- Each batch is one transaction: lock the batch's sensors' checkpoint rows
  (`FOR UPDATE`, in sensor order; a sensor's first batch creates its row), chain
  onto their heads, COPY the rows in binary, move the checkpoints. Writers of
  different sensors never wait on each other; two writers of one sensor serialise
  on its checkpoint row. There is no global lock.
- Sensor ids and kinds compare bytewise (`COLLATE "C"`, migration 3): the indexes
  compare them with memcmp instead of the database locale, and sort them as SQLite does.
- `records` is range-partitioned by UTC day on `time_us`; a day's partition is
  created the first time a record of that day arrives (in its own short
  transaction, so a rolled-back batch leaves at most an empty partition).
- Retention drops whole partitions when every record in them falls inside the
  removed chain prefixes, and deletes rows otherwise; see `retention.py`.
- The schema is versioned (`auditor_schema`) and moved forward by `migrate()`,
  which `auditor store migrate` runs; a store that is behind is refused, not
  silently altered, because many sensors share it.

Credentials come from the URL, `PGPASSFILE` / `~/.pgpass` or the `PG*` environment
(libpq reads them); `url` keeps only the redacted form.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.types.string import BytesBinaryDumper

from auditor.errors import AuditorError
from auditor.model import EgressEvent, Finding
from auditor.store.base import ChainHead, VerifyResult, redact_url
from auditor.store.chain import GENESIS, Record, canonical_model, link
from auditor.store.retention import (
    RETENTION_SENSOR,
    RemovedPrefix,
    RetentionResult,
    RetentionStatement,
    resume_points,
    statement_event,
)
from auditor.store.sqlite import new_records, time_us
from auditor.store.verify import verify_links

DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAGE = 5_000
_COPY_TYPES = ["text", "int8", "text", "text", "int8", "bytea", "text", "text"]
_COLUMNS = "sensor_id, seq, kind, record_id, time_us, body, prev_hash, hash"

RawRow = tuple[str, int, str, str, int, bytes, str, str]
# `append_new`'s advisory lock: (this class, the schema's key); two-int locks never meet the one-bigint kind
_APPEND_NEW_LOCK = 0x616E6577

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "records partitioned by day; per-sensor checkpoints",
        """
        CREATE TABLE records (
            sensor_id text NOT NULL,
            seq bigint NOT NULL,
            kind text NOT NULL,
            record_id text NOT NULL,
            time_us bigint NOT NULL,
            body bytea NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL,
            PRIMARY KEY (sensor_id, seq, time_us)
        ) PARTITION BY RANGE (time_us);
        CREATE INDEX records_time ON records (kind, time_us);
        CREATE TABLE checkpoints (
            sensor_id text PRIMARY KEY,
            count bigint NOT NULL,
            head_seq bigint NOT NULL,
            head_hash text NOT NULL
        );
        """,
    ),
    (
        2,
        "append-only guard on records (retention alone may delete, inside its own transaction)",
        """
        CREATE FUNCTION auditor_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND current_setting('auditor.retention', true) = 'on' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'evidence is append-only';
        END $$;
        CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON records
            FOR EACH ROW EXECUTE FUNCTION auditor_append_only();
        CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
            FOR EACH STATEMENT EXECUTE FUNCTION auditor_append_only();
        """,
    ),
    (
        3,
        "byte-order (C) collation for sensor ids and kinds: cheaper index comparisons, SQLite's order",
        # same type, new collation: the indexes on these columns are rebuilt, the rows are not rewritten
        """
        ALTER TABLE records ALTER COLUMN sensor_id TYPE text COLLATE "C", ALTER COLUMN kind TYPE text COLLATE "C";
        ALTER TABLE checkpoints ALTER COLUMN sensor_id TYPE text COLLATE "C";
        """,
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _day_bounds(day: int) -> tuple[int, int]:
    return day * DAY_US, (day + 1) * DAY_US


def _partition_name(day: int) -> str:
    return "records_" + (_EPOCH + timedelta(days=day)).strftime("%Y%m%d")


class PostgresStore:
    """One connection per store object; methods are serialised by a lock so a
    `BatchWriter` thread and its sensor can share it."""

    def __init__(self, url: str, *, create: bool = True, migrating: bool = False) -> None:
        """`migrating` skips the version check: only `auditor store migrate` opens a store that way."""
        self.url = redact_url(url)
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
            raise AuditorError(
                f"cannot connect to {self.url}: {reason}",
                fix="check host, port and database; the password comes from the URL, PGPASSFILE or PGPASSWORD",
            ) from None
        # bytea in binary COPY: the C dumper of bytes, not psycopg's default for that type
        # (the Python one that also unwraps DB-API `Binary`): a fifth less client CPU per row
        self._conn.adapters.register_dumper(None, BytesBinaryDumper)
        self._lock = threading.RLock()
        self._partitions: set[int] = set()
        schema, self._lock_key = self._conn.execute(
            "SELECT current_schema(), hashtext(coalesce(current_schema(), '') || '.auditor_records')"
        ).fetchone()  # type: ignore[misc]
        if schema is None:
            self._conn.close()
            raise AuditorError(
                f"{self.url}: the search_path names no existing schema", fix="CREATE SCHEMA it first, or fix options=-csearch_path"
            )
        version = self.schema_version()
        if migrating:
            return
        if version == 0:
            if not create:
                self._conn.close()
                raise AuditorError(f"{self.url}: no evidence store here", fix="write to it first, or check the URL")
            self.migrate()
        elif version != SCHEMA_VERSION:
            self._conn.close()
            if version > SCHEMA_VERSION:
                raise AuditorError(
                    f"{self.url}: schema version {version} is newer than this auditor ({SCHEMA_VERSION})",
                    fix="upgrade the auditor",
                )
            raise AuditorError(
                f"{self.url}: schema version {version}, this auditor needs {SCHEMA_VERSION}",
                fix="run `auditor store migrate --store URL` once, from one place",
            )
        self._load_partitions()

    # --- schema ---------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            exists = self._conn.execute("SELECT to_regclass('auditor_schema') IS NOT NULL").fetchone()[0]  # type: ignore[index]
            if not exists:
                return 0
            row = self._conn.execute("SELECT coalesce(max(version), 0) FROM auditor_schema").fetchone()
            return int(row[0])  # type: ignore[index]

    def migrate(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply pending migrations up to `target`, each in its own transaction, under an
        advisory lock so two processes never run the same one. Returns what it applied."""
        applied: list[int] = []
        with self._lock:
            for version, description, ddl in MIGRATIONS:
                if version > target:
                    break
                with self._conn.transaction():
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                    self._conn.execute(
                        "CREATE TABLE IF NOT EXISTS auditor_schema ("
                        "version int PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                    done = self._conn.execute("SELECT 1 FROM auditor_schema WHERE version = %s", (version,)).fetchone()
                    if done:
                        continue
                    self._conn.execute(ddl)
                    self._conn.execute(
                        "INSERT INTO auditor_schema (version, description) VALUES (%s, %s)", (version, description)
                    )
                    applied.append(version)
        return applied

    def _load_partitions(self) -> None:
        rows = self._conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'records'::regclass"
        ).fetchall()
        self._partitions = set()
        for (name,) in rows:
            if name.startswith("records_") and name[8:].isdigit():
                day = (datetime.strptime(name[8:], "%Y%m%d").replace(tzinfo=UTC) - _EPOCH).days
                self._partitions.add(day)

    def _create_partitions(self, days: Iterable[int]) -> None:
        """Inside the caller's transaction; the advisory lock makes concurrent creators wait
        instead of colliding on the catalog."""
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
        for day in sorted(days):
            lo, hi = _day_bounds(day)
            self._conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF records FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(_partition_name(day)), sql.Literal(lo), sql.Literal(hi)
                )
            )
        self._partitions.update(days)

    def _ensure_partitions(self, days: set[int]) -> None:
        missing = days - self._partitions
        if missing:
            with self._conn.transaction():
                self._create_partitions(missing)

    # --- writing --------------------------------------------------------------------------

    def append(self, events: Sequence[EgressEvent]) -> None:
        self._append([(e.sensor_id, "event", e.id, time_us(e.time), canonical_model(e)) for e in events])

    def append_new(self, events: Sequence[EgressEvent]) -> int:
        records = [(e.sensor_id, "event", e.id, time_us(e.time), canonical_model(e)) for e in events]
        return len(records) - self._append(records, new_only=True)

    def append_findings(self, sensor_id: str, findings: Sequence[Finding]) -> None:
        self._append([(sensor_id, "finding", f.id, time_us(f.last_seen), canonical_model(f)) for f in findings])

    def _append(self, records: list[Record], *, new_only: bool = False) -> int:
        """One transaction; `new_only` drops the events already stored inside it. Returns
        how many records it wrote."""
        if not records:
            return 0
        days = {r[3] // DAY_US for r in records}
        written = 0
        with self._lock:
            for attempt in (1, 2):
                self._ensure_partitions(days)
                try:
                    with self._conn.transaction():
                        fresh = self._unstored_tx(records) if new_only else records
                        if fresh:
                            self._append_tx(fresh)
                    written = len(fresh)
                    break
                except psycopg.errors.CheckViolation:
                    if attempt == 2:  # a partition retention dropped meanwhile; learn and retry once
                        raise
                    self._load_partitions()
        return written

    def _unstored_tx(self, records: list[Record]) -> list[Record]:
        """Inside the caller's transaction: the records the store does not hold yet, found as
        SQLite finds them (`SqliteStore._unstored_tx`): one query for the batch through the
        time index, which also prunes the day partitions to the batch's. Writers of
        `append_new` take one advisory lock first, so a batch another committed meanwhile is
        seen, not stored again; a plain `append` (a sensor's hot path) never waits on it."""
        self._conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_APPEND_NEW_LOCK, self._lock_key))
        held = self._conn.execute(
            "SELECT record_id, time_us FROM records WHERE kind = 'event' AND time_us = ANY(%s)", (sorted({r[3] for r in records}),)
        ).fetchall()
        return new_records(records, ((rid, int(t)) for rid, t in held))

    def _append_tx(self, records: list[Record]) -> None:
        conn = self._conn
        sensors = sorted({r[0] for r in records})
        heads = self._lock_heads(sensors)
        if len(heads) < len(sensors):  # a sensor's first batch: create its checkpoint, then lock it too
            conn.execute(
                "INSERT INTO checkpoints (sensor_id, count, head_seq, head_hash) "
                "SELECT s, 0, 0, %s FROM unnest(%s::text[]) AS s ORDER BY s ON CONFLICT (sensor_id) DO NOTHING",
                (GENESIS, [s for s in sensors if s not in heads]),
            )
            heads = self._lock_heads(sensors)
        chained = link(records, heads)
        with conn.cursor() as cur, cur.copy(f"COPY records ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES)
            for row in chained:
                copy.write_row(row)
        conn.execute(
            "UPDATE checkpoints AS c SET count = v.seq, head_seq = v.seq, head_hash = v.hash "
            "FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS v(sensor_id, seq, hash) "
            "WHERE c.sensor_id = v.sensor_id",
            (sensors, [heads[s][0] for s in sensors], [heads[s][1] for s in sensors]),
        )

    def _lock_heads(self, sensors: list[str]) -> dict[str, tuple[int, str]]:
        """Lock the sensors' checkpoint rows (in one order for every writer: no deadlock) and
        read their heads. Each statement sees what committed before it: a checkpoint another
        writer created meanwhile is found by the second call, after the INSERT waited for it."""
        rows = self._conn.execute(
            "SELECT sensor_id, head_seq, head_hash FROM checkpoints WHERE sensor_id = ANY(%s) "
            "ORDER BY sensor_id FOR UPDATE",
            (sensors,),
        ).fetchall()
        return {s: (int(seq), h) for s, seq, h in rows}

    # --- reading --------------------------------------------------------------------------

    def events(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[EgressEvent]:
        for body in self.event_bodies(since, until):
            yield EgressEvent.model_validate_json(body)

    def event_bodies(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[bytes]:
        """Keyset pages, each its own statement: a caller may write between pages."""
        return (body for *_, body in self.event_rows(since, until))

    def event_rows(
        self, since: datetime | None = None, until: datetime | None = None, *,
        start: tuple[str, int] | None = None, stop: tuple[str, int] | None = None,
    ) -> Iterator[tuple[int, str, int, bytes | str]]:
        """The window's rows (of the `start`..`stop` key range) in the keyset pages of
        `event_bodies` (the server orders them by its index at no extra cost)."""
        lo = time_us(since) if since else -(2**62)
        hi = time_us(until) if until else 2**62
        low, high = start or ("", -(2**62)), stop
        key: tuple[int, str, int] = (lo - 1, "", 0)
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT time_us, sensor_id, seq, body FROM records WHERE kind = 'event' "
                    "AND time_us >= %s AND time_us < %s AND (time_us, sensor_id, seq) > (%s, %s, %s) "
                    "AND (sensor_id, seq) >= (%s, %s) AND (%s::boolean OR (sensor_id, seq) < (%s, %s)) "
                    "ORDER BY time_us, sensor_id, seq LIMIT %s",
                    (lo, hi, *key, *low, high is None, *(high or ("", 0)), _PAGE),
                ).fetchall()
            for t, s, seq, body in rows:
                yield int(t), s, int(seq), bytes(body)
                key = (t, s, seq)
            if len(rows) < _PAGE:
                return

    def events_after(
        self, cursor: dict[str, int], limit: int = 10_000, *, prefix: str = ""
    ) -> list[tuple[str, int, EgressEvent]]:
        out: list[tuple[str, int, EgressEvent]] = []
        with self._lock:
            sensors = [r[0] for r in self._conn.execute("SELECT sensor_id FROM checkpoints ORDER BY sensor_id") if r[0].startswith(prefix)]
            for sensor_id in sensors:
                rows = self._conn.execute(
                    "SELECT seq, body FROM records WHERE sensor_id = %s AND seq > %s AND kind = 'event' "
                    "ORDER BY seq LIMIT %s",
                    (sensor_id, cursor.get(sensor_id, 0), limit - len(out)),
                ).fetchall()
                out.extend((sensor_id, int(seq), EgressEvent.model_validate_json(body)) for seq, body in rows)
                if len(out) >= limit:
                    break
        return out

    def last_event(self, sensor_id: str) -> EgressEvent | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM records WHERE sensor_id = %s AND kind = 'event' ORDER BY seq DESC LIMIT 1",
                (sensor_id,),
            ).fetchone()
        return EgressEvent.model_validate_json(row[0]) if row else None

    def findings(self, sensor_id: str | None = None) -> Iterator[Finding]:
        query = "SELECT body FROM records WHERE kind = 'finding'" + (" AND sensor_id = %s" if sensor_id else "")
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY sensor_id, seq", (sensor_id,) if sensor_id else ()).fetchall()
        for (body,) in rows:
            yield Finding.model_validate_json(body)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM records WHERE kind = 'event'").fetchone()[0])  # type: ignore[index]

    def chain_heads(self) -> list[ChainHead]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT sensor_id, count, head_seq, head_hash FROM checkpoints WHERE head_seq > 0 ORDER BY sensor_id"
            ).fetchall()
        return [ChainHead(sensor_id=r[0], count=r[1], head_seq=r[2], head_hash=r[3]) for r in rows]

    def verify(self) -> VerifyResult:
        """One REPEATABLE READ snapshot: checkpoints and rows agree even while sensors write."""
        with self._lock, self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            checkpoints = {
                r[0]: (int(r[1]), int(r[2]), r[3])
                for r in self._conn.execute(
                    "SELECT sensor_id, count, head_seq, head_hash FROM checkpoints WHERE head_seq > 0"
                )
            }
            resume = resume_points(
                bytes(b) for (b,) in self._conn.execute(
                    "SELECT body FROM records WHERE sensor_id = %s ORDER BY seq", (RETENTION_SENSOR,)
                )
            )
            with self._conn.cursor(name="auditor_verify") as cur:
                cur.itersize = _PAGE
                cur.execute("SELECT sensor_id, seq, record_id, body, prev_hash, hash FROM records ORDER BY sensor_id, seq")
                return verify_links(cur, checkpoints, resume)

    # --- maintenance: copy and retention ---------------------------------------------------

    def raw_checkpoints(self) -> dict[str, tuple[int, int, str]]:
        with self._lock:
            rows = self._conn.execute("SELECT sensor_id, count, head_seq, head_hash FROM checkpoints WHERE head_seq > 0")
            return {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows}

    def raw_records(self) -> Iterator[RawRow]:
        """Every stored row as it is, by sensor then seq (keyset pages)."""
        key: tuple[str, int] = ("", 0)
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE (sensor_id, seq) > (%s, %s) ORDER BY sensor_id, seq LIMIT %s",
                    (*key, _PAGE),
                ).fetchall()
            for r in rows:
                yield (r[0], int(r[1]), r[2], r[3], int(r[4]), bytes(r[5]), r[6], r[7])
                key = (r[0], int(r[1]))
            if len(rows) < _PAGE:
                return

    def load_raw(self, rows: Iterable[RawRow], checkpoints: dict[str, tuple[int, int, str]]) -> int:
        """Write chains exactly as another store holds them, in one transaction; refuses
        a chain this store already has. Returns the rows written."""
        written = 0
        with self._lock, self._conn.transaction():
            clash = self._conn.execute(
                "SELECT sensor_id FROM checkpoints WHERE sensor_id = ANY(%s) AND head_seq > 0 ORDER BY sensor_id FOR UPDATE",
                (sorted(checkpoints),),
            ).fetchall()
            if clash:
                raise AuditorError(
                    f"{self.url} already holds chains {', '.join(r[0] for r in clash)}",
                    fix="copy into an empty store, or one without these sensors",
                )
            batch: list[RawRow] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= _PAGE:
                    written += self._copy_raw(batch)
                    batch = []
            written += self._copy_raw(batch)
            self._conn.execute(
                "INSERT INTO checkpoints (sensor_id, count, head_seq, head_hash) "
                "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[])",
                (
                    list(checkpoints),
                    [c[0] for c in checkpoints.values()],
                    [c[1] for c in checkpoints.values()],
                    [c[2] for c in checkpoints.values()],
                ),
            )
        return written

    def _copy_raw(self, batch: list[RawRow]) -> int:
        if not batch:
            return 0
        self._ensure_partitions_in_tx({r[4] // DAY_US for r in batch})
        with self._conn.cursor() as cur, cur.copy(f"COPY records ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES)
            for row in batch:
                copy.write_row(row)
        return len(batch)

    def retain(self, before: datetime) -> RetentionResult:
        """Remove each chain's prefix older than `before` and chain what was removed, in
        one transaction. Partitions wholly inside the removed prefixes are dropped."""
        cutoff = time_us(before)
        with self._lock:
            with self._conn.transaction():
                self._conn.execute("SET LOCAL auditor.retention = 'on'")
                self._conn.execute("SET LOCAL lock_timeout = '60s'")
                resume = resume_points(
                    bytes(b) for (b,) in self._conn.execute(
                        "SELECT body FROM records WHERE sensor_id = %s ORDER BY seq", (RETENTION_SENSOR,)
                    )
                )
                plan = self._retention_plan(cutoff, resume)
                if not plan:
                    return RetentionResult(before=before, removed=0, chains={}, partitions_dropped=[], record_seq=None)
                self._conn.execute(
                    "CREATE TEMP TABLE retain_plan (sensor_id text PRIMARY KEY, after_seq bigint, through_seq bigint) "
                    "ON COMMIT DROP"
                )
                self._conn.execute(
                    "INSERT INTO retain_plan SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])",
                    (list(plan), [resume.get(s, (0, ""))[0] for s in plan], [p[0] for p in plan.values()]),
                )
                dropped, removed = self._remove_prefixes(cutoff)
                chains = {
                    s: RemovedPrefix(through_seq=through, last_hash=last_hash, removed=removed.get(s, 0))
                    for s, (through, last_hash) in plan.items()
                }
                statement = RetentionStatement(before=before, chains=chains, partitions_dropped=dropped)
                now = datetime.now(UTC)
                self._ensure_partitions_in_tx({time_us(now) // DAY_US})
                event = statement_event(statement, now)
                self._append_tx([(RETENTION_SENSOR, "event", event.id, time_us(now), canonical_model(event))])
                seq = self._conn.execute(
                    "SELECT head_seq FROM checkpoints WHERE sensor_id = %s", (RETENTION_SENSOR,)
                ).fetchone()[0]  # type: ignore[index]
            self._load_partitions()
        return RetentionResult(
            before=before, removed=sum(removed.values()), chains=chains, partitions_dropped=dropped, record_seq=int(seq)
        )

    def _ensure_partitions_in_tx(self, days: set[int]) -> None:
        missing = days - self._partitions
        if missing:
            self._create_partitions(missing)

    def _retention_plan(self, cutoff: int, resume: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
        """Per chain, the new (through_seq, hash of that record) when the removable prefix
        grew: #1..#k with k one below the chain's first record at or after the cut-off."""
        rows = self._conn.execute(
            "SELECT c.sensor_id, c.head_seq, "
            "(SELECT min(r.seq) FROM records r WHERE r.sensor_id = c.sensor_id AND r.time_us >= %s) "
            "FROM checkpoints c WHERE c.head_seq > 0 AND c.sensor_id <> %s ORDER BY c.sensor_id FOR UPDATE",
            (cutoff, RETENTION_SENSOR),
        ).fetchall()
        plan: dict[str, tuple[int, str]] = {}
        for sensor_id, head_seq, first_kept in rows:
            through = int(first_kept) - 1 if first_kept is not None else int(head_seq)
            if through <= resume.get(sensor_id, (0, ""))[0]:
                continue
            found = self._conn.execute(
                "SELECT hash FROM records WHERE sensor_id = %s AND seq = %s", (sensor_id, through)
            ).fetchone()
            if found is None:
                raise AuditorError(
                    f"{self.url}: chain {sensor_id} has no record #{through} to retain up to",
                    fix="run `auditor verify --store` first: the chain is already broken",
                )
            plan[sensor_id] = (through, found[0])
        return plan

    def _remove_prefixes(self, cutoff: int) -> tuple[list[str], dict[str, int]]:
        removed: dict[str, int] = {}
        dropped: list[str] = []
        old_days = sorted(d for d in self._partitions if _day_bounds(d)[1] <= cutoff)
        for day in old_days:
            name = sql.Identifier(_partition_name(day))
            counts = self._conn.execute(
                sql.SQL(
                    "SELECT r.sensor_id, count(*), bool_and(p.sensor_id IS NOT NULL AND r.seq > p.after_seq "
                    "AND r.seq <= p.through_seq) FROM {} r LEFT JOIN retain_plan p USING (sensor_id) GROUP BY r.sensor_id"
                ).format(name)
            ).fetchall()
            if all(inside for _, _, inside in counts):
                self._conn.execute(sql.SQL("DROP TABLE {}").format(name))
                self._partitions.discard(day)  # a later write of that day (the statement itself) recreates it
                dropped.append(_partition_name(day))
                for sensor_id, n, _ in counts:
                    removed[sensor_id] = removed.get(sensor_id, 0) + int(n)
        rows = self._conn.execute(
            "WITH gone AS (DELETE FROM records r USING retain_plan p WHERE r.sensor_id = p.sensor_id "
            "AND r.seq > p.after_seq AND r.seq <= p.through_seq AND r.time_us < %s RETURNING r.sensor_id) "
            "SELECT sensor_id, count(*) FROM gone GROUP BY sensor_id",
            (cutoff,),
        ).fetchall()
        for sensor_id, n in rows:
            removed[sensor_id] = removed.get(sensor_id, 0) + int(n)
        return dropped, removed

    def close(self) -> None:
        with self._lock:
            self._conn.close()
