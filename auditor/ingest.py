"""Ingest events people already have as JSON lines: every good line lands, every
bad one is reported with its line number, and the counts say so. An event whose id
the store already holds is skipped and counted, so ingesting a file twice stores it
once (and `check` counts each event once)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from auditor.check import refuse_bundle
from auditor.errors import AuditorError
from auditor.model import EgressEvent
from auditor.store.base import Store, open_store

BATCH = 1_000
MAX_PROBLEMS_SHOWN = 50


class IngestResult(BaseModel):
    ingested: int = 0
    rejected: int = 0
    skipped: int = 0  # events whose id the store already held (or an earlier line of the file)
    problems: list[str] = Field(default_factory=list)

    def summary(self, path: Path) -> str:
        return f"ingested {self.ingested} events, rejected {self.rejected} lines, skipped {self.skipped} already stored, from {path}"


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "line"
    return f"{where}: {first.get('msg', 'invalid')}"


def ingest_jsonl(path: Path, store_url: str) -> IngestResult:
    if not path.is_file():
        raise AuditorError("no such events file", file=str(path), fix="give a JSON lines file of EgressEvents")
    refuse_bundle(store_url, "ingesting events")
    result = IngestResult()
    store = open_store(store_url, make_parents=False)
    batch: list[EgressEvent] = []
    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    batch.append(EgressEvent.model_validate_json(raw))
                except ValidationError as exc:
                    result.rejected += 1
                    if len(result.problems) < MAX_PROBLEMS_SHOWN:
                        result.problems.append(
                            f"{path}:{lineno}: {_reason(exc)} (fix: each line must be one EgressEvent as JSON)"
                        )
                    continue
                if len(batch) >= BATCH:
                    _append(store, batch, result)
                    batch = []
        if batch:
            _append(store, batch, result)
    finally:
        store.close()
    if result.rejected > len(result.problems):
        result.problems.append(f"{path}: {result.rejected - len(result.problems)} more bad lines not shown")
    return result


def _append(store: Store, batch: list[EgressEvent], result: IngestResult) -> None:
    skipped = store.append_new(batch)
    result.skipped += skipped
    result.ingested += len(batch) - skipped
