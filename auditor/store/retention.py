"""Retention that is evidence, not a gap.

Retention removes, per sensor, the longest *prefix* of its chain whose records are
all older than the cut-off (records #1..#k), never a hole in the middle: a chain
whose times are out of order (an old capture imported late) keeps those records
until everything before them may go too. What was removed is chained as a
`retention` lifecycle event in the store's own chain (`RETENTION_SENSOR`), in the
same transaction as the deletion. The statement names, per chain, the last removed
sequence number and that record's hash, so `verify` resumes each chain from there:
a prefix deleted without such a chained statement is still reported as missing, and
the statement itself is protected by the retention chain and its checkpoint.
The retention chain itself is never removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ValidationError

from auditor.model import EgressEvent, sensor_event

RETENTION_SENSOR = "auditor-retention"


class RemovedPrefix(BaseModel):
    through_seq: int  # records #1..#through_seq of this chain are gone
    last_hash: str  # hash of record #through_seq: where verification resumes
    removed: int  # records this run removed (earlier runs removed the rest)


class RetentionStatement(BaseModel):
    before: datetime
    chains: dict[str, RemovedPrefix]
    partitions_dropped: list[str] = []


class RetentionResult(BaseModel):
    before: datetime
    removed: int
    chains: dict[str, RemovedPrefix]
    partitions_dropped: list[str]
    record_seq: int | None  # where the statement sits in the retention chain; None: nothing to remove


def statement_event(statement: RetentionStatement, time: datetime) -> EgressEvent:
    """The chained record of one retention run (its detail is the statement as JSON)."""
    event = sensor_event(RETENTION_SENSOR, "retention", detail=statement.model_dump_json())
    event.time = time
    return event


def resume_points(bodies: Iterable[bytes]) -> dict[str, tuple[int, str]]:
    """Per chain, (last removed seq, its hash) from the retention chain's records in
    seq order; later statements supersede earlier ones. Unreadable records are
    skipped here: the chain check reports them."""
    points: dict[str, tuple[int, str]] = {}
    for body in bodies:
        try:
            event = EgressEvent.model_validate_json(body)
            if event.sensor is None or event.sensor.lifecycle != "retention" or not event.sensor.detail:
                continue
            statement = RetentionStatement.model_validate_json(event.sensor.detail)
        except (ValidationError, ValueError):
            continue
        for sensor_id, prefix in statement.chains.items():
            points[sensor_id] = (prefix.through_seq, prefix.last_hash)
    return points
