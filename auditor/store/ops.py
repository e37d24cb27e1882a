"""Store maintenance behind `auditor store ...`: migrate, copy, retain.

Both backends offer the same maintenance surface (`Maintainable`), so copying works
in either direction and retention means the same thing in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Protocol, cast

from pydantic import BaseModel

from auditor.errors import AuditorError
from auditor.store.base import ChainHead, Store, VerifyResult, open_store, redact_url
from auditor.store.retention import RetentionResult

RawRow = tuple[str, int, str, str, int, bytes, str, str]


class Maintainable(Store, Protocol):
    def schema_version(self) -> int: ...

    def migrate(self) -> list[int]: ...

    def raw_checkpoints(self) -> dict[str, tuple[int, int, str]]: ...

    def raw_records(self) -> Iterator[RawRow]: ...

    def load_raw(self, rows: Iterable[RawRow], checkpoints: dict[str, tuple[int, int, str]]) -> int: ...

    def retain(self, before: datetime) -> RetentionResult: ...


class MigrateResult(BaseModel):
    store: str
    before: int
    after: int
    applied: list[int]


class CopyResult(BaseModel):
    source: str
    destination: str
    records: int
    chains: list[ChainHead]
    verify: VerifyResult


def _open(url: str, *, create: bool) -> Maintainable:
    return cast(Maintainable, open_store(url, create=create, make_parents=False))


def migrate_store(url: str) -> MigrateResult:
    """Bring a store's schema to this auditor's version (creating it when empty)."""
    if url.startswith(("postgresql://", "postgres://")):
        from auditor.store.postgres import PostgresStore  # noqa: PLC0415

        store: Maintainable = PostgresStore(url, create=True, migrating=True)
    else:
        store = _open(url, create=True)
    try:
        before = store.schema_version()
        applied = store.migrate()
        return MigrateResult(store=redact_url(url), before=before, after=store.schema_version(), applied=applied)
    finally:
        store.close()


def copy_store(source: str, destination: str) -> CopyResult:
    """Copy every chain row for row (bodies, hashes, checkpoints untouched), in one
    destination transaction, then verify the destination and compare its chain heads
    with the source's: a copy that does not verify identically is an error."""
    src = _open(source, create=False)
    try:
        dst = _open(destination, create=True)
        try:
            checkpoints = src.raw_checkpoints()
            if not checkpoints:
                raise AuditorError(f"{redact_url(source)}: no chains to copy", fix="check the source store")
            source_result = src.verify()
            if not source_result.ok:
                raise AuditorError(
                    f"{redact_url(source)}: the source does not verify: {source_result.problems[0].line()}",
                    fix="run `auditor verify --store` on it; a broken chain is evidence to keep where it is",
                )
            written = dst.load_raw(src.raw_records(), checkpoints)
            result = dst.verify()
        finally:
            dst.close()
    finally:
        src.close()
    copied = {h.sensor_id: h for h in result.chains}
    wrong = [h.sensor_id for h in source_result.chains if copied.get(h.sensor_id) != h]
    if not result.ok or wrong:
        detail = "; ".join(p.line() for p in result.problems) or f"chain heads differ for {', '.join(wrong)}"
        raise AuditorError(f"{redact_url(destination)}: the copy does not verify: {detail}")
    return CopyResult(
        source=redact_url(source), destination=redact_url(destination), records=written,
        chains=[copied[h.sensor_id] for h in source_result.chains], verify=result,
    )


def retain_store(url: str, before: datetime, *, force: bool = False) -> RetentionResult:
    """Remove records older than `before` from each chain's start, chaining what went.
    A cut-off in the future would remove everything written so far, sensors' current
    records included: almost always a typo, so it takes `force`."""
    now = datetime.now(UTC)
    if before > now and not force:
        raise AuditorError(
            f"--before {before.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}): "
            "every record written so far would be removed",
            file=redact_url(url), fix="give a time in the past, or add --force to remove them all",
        )
    store = _open(url, create=False)
    try:
        return store.retain(before)
    finally:
        store.close()
