"""Ingest events people already have as JSON lines: every good line lands, every
bad one is reported with its line number, and the counts say so."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from auditor.errors import AuditorError
from auditor.model import EgressEvent
from auditor.store.base import open_store

BATCH = 1_000
MAX_PROBLEMS_SHOWN = 50


class IngestResult(BaseModel):
    ingested: int = 0
    rejected: int = 0
    problems: list[str] = Field(default_factory=list)


def _reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "line"
    return f"{where}: {first.get('msg', 'invalid')}"


def ingest_jsonl(path: Path, store_url: str) -> IngestResult:
    if not path.is_file():
        raise AuditorError("no such events file", file=str(path), fix="give a JSON lines file of EgressEvents")
    result = IngestResult()
    store = open_store(store_url)
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
                    store.append(batch)
                    result.ingested += len(batch)
                    batch = []
        if batch:
            store.append(batch)
            result.ingested += len(batch)
    finally:
        store.close()
    if result.rejected > len(result.problems):
        result.problems.append(f"{path}: {result.rejected - len(result.problems)} more bad lines not shown")
    return result
