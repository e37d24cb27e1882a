"""The Store protocol: what every evidence backend offers the sensors and the report."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from auditor.errors import AuditorError
from auditor.model import EgressEvent, Finding

ProblemKind = Literal["edited", "missing", "inserted", "reordered", "truncated", "unreadable"]


class ChainHead(BaseModel):
    sensor_id: str
    count: int
    head_seq: int
    head_hash: str


class ChainProblem(BaseModel):
    sensor_id: str
    seq: int | None
    record_id: str | None = None
    kind: ProblemKind
    detail: str

    def line(self) -> str:
        where = f"sensor {self.sensor_id}" + (f" record #{self.seq}" if self.seq is not None else "")
        rid = f" (id {self.record_id})" if self.record_id else ""
        return f"{where}{rid}: {self.kind}: {self.detail}"


class VerifyResult(BaseModel):
    ok: bool
    records: int
    chains: list[ChainHead] = Field(default_factory=list)
    problems: list[ChainProblem] = Field(default_factory=list)


@runtime_checkable
class Store(Protocol):
    """Append-only, per-sensor hash-chained evidence."""

    url: str

    def append(self, events: Sequence[EgressEvent]) -> None:
        """Chain and write a batch atomically: all of it or none of it."""

    def append_new(self, events: Sequence[EgressEvent]) -> int:
        """`append` of only the events the store does not hold yet (nor an earlier event of
        the batch), so ingesting a file twice stores it once. An event is held when a stored
        one has its id and its time, as the same event read again does; a record reusing an
        id at another time is not that event and is kept, never silently dropped. Decided
        inside the write transaction, so two writers of the same events never both store
        them, with one query per batch through the time index. Returns how many it skipped."""

    def append_findings(self, sensor_id: str, findings: Sequence[Finding]) -> None:
        """Findings are chained records too, under the id of whoever judged."""

    def events(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> Iterator[EgressEvent]:
        """Events in time order within [since, until)."""

    def event_bodies(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[bytes]:
        """What `events` reads, undecoded: each event's stored canonical JSON in the same
        order. For bulk readers (the report) that decode fast and, since these bytes are
        only as good as the chain that covers them, check `verify` before trusting them."""

    def event_rows(
        self, since: datetime | None = None, until: datetime | None = None, *,
        start: tuple[str, int] | None = None, stop: tuple[str, int] | None = None,
    ) -> Iterator[tuple[int, str, int, bytes | str]]:
        """The rows `event_bodies` reads, as (time_us, sensor_id, seq, body) in no promised
        order: a bulk reader that orders them itself (the report) can read the table front
        to back instead of through the time index, and split it between processes by
        (sensor_id, seq) from `start` (included) to `stop` (excluded). Trust them as `event_bodies`."""

    def findings(self, sensor_id: str | None = None) -> Iterator[Finding]:
        """Chained findings, of one judge (`check`, `monitor`, ...) or all."""

    def last_event(self, sensor_id: str) -> EgressEvent | None:
        """The newest event of one sensor: how a restarted sensor tells a clean stop from a gap."""

    def events_after(
        self, cursor: dict[str, int], limit: int = 10_000, *, prefix: str = ""
    ) -> list[tuple[str, int, EgressEvent]]:
        """Events past `cursor` (sensor -> last seq seen), for tailing a live store;
        (sensor, seq, event) so the caller can advance its cursor. `prefix`: only the
        sensors whose id starts with it (the probe tails the proxy's records alone)."""

    def count(self) -> int: ...

    def chain_heads(self) -> list[ChainHead]: ...

    def verify(self) -> VerifyResult: ...

    def close(self) -> None: ...


def chain_keys(prefix: str) -> dict[str, tuple[str, int]]:
    """`Store.event_rows`' start and stop for every chain whose sensor id starts with
    `prefix`: the store skips the other chains' rows before any reaches Python."""
    return {"start": (prefix, 0), "stop": (prefix[:-1] + chr(ord(prefix[-1]) + 1), 0)}


STORE_FORMS = "a file path, sqlite:///path or postgresql://..."


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store (a path or sqlite:///path); None for PostgreSQL. Any other
    `scheme://` is refused here: taken as a path it became a file of that odd name."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme is None:
        return Path(url)
    if scheme[1] == "sqlite":
        raise AuditorError(f"a SQLite store URL takes three slashes, not {scheme[0]}", fix="sqlite:///relative/path or sqlite:////absolute/path")
    raise AuditorError(f"unsupported store URL scheme '{scheme[1]}'", fix=STORE_FORMS)


def open_store(url: str, *, create: bool = True, make_parents: bool = True) -> Store:
    """A file path (or sqlite:///path) opens SQLite; postgresql:// opens PostgreSQL.
    `make_parents` off: a new SQLite file's directory must exist (see `SqliteStore`)."""
    path = sqlite_path(url)
    if path is None:
        from auditor.store.postgres import PostgresStore  # noqa: PLC0415 - optional backend

        return PostgresStore(url, create=create)
    from auditor.store.sqlite import SqliteStore  # noqa: PLC0415

    return SqliteStore(path, create=create, make_parents=make_parents)


def open_store_read_only(url: str, *, immutable: bool = False) -> Store:
    """A store for a reader that must leave it as found (`check --no-record`, a signed
    bundle's snapshot): SQLite is opened read-only, running no schema statement (see
    `ReadOnlySqliteStore` for `immutable`); PostgreSQL is opened without creating anything."""
    path = sqlite_path(url)
    if path is None:
        return open_store(url, create=False)
    from auditor.store.sqlite import ReadOnlySqliteStore  # noqa: PLC0415

    return ReadOnlySqliteStore(path, immutable=immutable)


def redact_url(url: str) -> str:
    """A store URL fit to print or record: the password (in the authority or a
    `password=` parameter) becomes `***`; a file path is returned as it is."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit  # noqa: PLC0415

    if "://" not in url or url.startswith("sqlite:"):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="/*")
    if netloc:
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return f"{parts.scheme}://{parts.path}" + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
