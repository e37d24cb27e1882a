"""Recompute every chain and name the first broken record of each sensor."""

from __future__ import annotations

from collections.abc import Iterable

from auditor.store.base import ChainHead, ChainProblem, VerifyResult
from auditor.store.chain import GENESIS, record_hash


def verify_links(
    rows: Iterable[tuple[str, int, str, bytes, str, str]],
    checkpoints: dict[str, tuple[int, int, str]],
    resume: dict[str, tuple[int, str]] | None = None,
) -> VerifyResult:
    """`rows` are (sensor_id, seq, record_id, body, prev_hash, hash) ordered by sensor
    then seq; `checkpoints` map sensor -> (count, head_seq, head_hash) as recorded
    at write time, which is what exposes a cut-off tail. `resume` maps a sensor to
    (last removed seq, its hash) for chains whose prefix a chained retention
    statement accounts for (see `retention.py`): verification starts after it."""
    resume = resume or {}
    problems: list[ChainProblem] = []
    heads: dict[str, ChainHead] = {}
    broken: set[str] = set()
    total = 0
    current: str | None = None
    expect_seq, expect_prev, count = 1, GENESIS, 0

    def close(sensor: str) -> None:
        heads[sensor] = ChainHead(sensor_id=sensor, count=count, head_seq=expect_seq - 1, head_hash=expect_prev)

    for sensor_id, seq, record_id, body, prev_hash, stored_hash in rows:
        total += 1
        if sensor_id != current:
            if current is not None:
                close(current)
            start_seq, start_prev = resume.get(sensor_id, (0, GENESIS))
            current, expect_seq, expect_prev, count = sensor_id, start_seq + 1, start_prev, start_seq
        count += 1
        if sensor_id in broken:
            continue
        try:
            problem = _check(sensor_id, seq, record_id, body, prev_hash, stored_hash, expect_seq, expect_prev)
        except (TypeError, ValueError, AttributeError) as exc:  # a column rewritten with the wrong type
            problem = ChainProblem(
                sensor_id=str(sensor_id), seq=seq if isinstance(seq, int) else None, kind="unreadable",
                detail=f"the record's columns do not have their types ({exc.__class__.__name__})",
            )
        if problem is not None:
            problems.append(problem)
            broken.add(sensor_id)
        expect_seq, expect_prev = (seq + 1 if isinstance(seq, int) else expect_seq + 1), stored_hash
    if current is not None:
        close(current)
    for sensor_id, (start_seq, start_prev) in resume.items():
        if sensor_id not in heads:  # the whole chain was retained away
            heads[sensor_id] = ChainHead(sensor_id=sensor_id, count=start_seq, head_seq=start_seq, head_hash=start_prev)

    for sensor_id, (cp_count, cp_seq, cp_hash) in sorted(checkpoints.items()):
        head = heads.get(sensor_id)
        if sensor_id in broken:
            continue
        if head is None:
            problems.append(
                ChainProblem(
                    sensor_id=sensor_id, seq=1, kind="truncated",
                    detail=f"checkpoint records {cp_count} records ending at #{cp_seq}, the store has none",
                )
            )
        elif (head.count, head.head_seq, head.head_hash) != (cp_count, cp_seq, cp_hash):
            problems.append(
                ChainProblem(
                    sensor_id=sensor_id, seq=head.head_seq + 1, kind="truncated",
                    detail=(
                        f"checkpoint records {cp_count} records ending at #{cp_seq} ({cp_hash[:16]}…), "
                        f"the store has {head.count} ending at #{head.head_seq} ({head.head_hash[:16]}…)"
                    ),
                )
            )
    for sensor_id in sorted(set(heads) - set(checkpoints)):
        problems.append(
            ChainProblem(sensor_id=sensor_id, seq=1, kind="inserted", detail="a chain with no recorded checkpoint")
        )
    return VerifyResult(ok=not problems, records=total, chains=sorted(heads.values(), key=lambda h: h.sensor_id), problems=problems)


def _check(
    sensor_id: str, seq: int, record_id: str, body: bytes | str, prev_hash: str, stored_hash: str,
    expect_seq: int, expect_prev: str,
) -> ChainProblem | None:
    def problem(kind: str, detail: str, at: int = seq) -> ChainProblem:
        return ChainProblem(sensor_id=sensor_id, seq=at, record_id=record_id, kind=kind, detail=detail)  # type: ignore[arg-type]

    if seq > expect_seq:
        return problem("missing", f"records #{expect_seq}..#{seq - 1} are gone", at=expect_seq)
    if seq < expect_seq:
        return problem("inserted", f"sequence #{seq} appears again after #{expect_seq - 1}")
    raw = body.encode() if isinstance(body, str) else bytes(body)  # an edit through SQL may turn BLOB to TEXT
    recomputed = record_hash(sensor_id, seq, prev_hash, raw)
    if prev_hash != expect_prev:
        if recomputed == stored_hash:
            return problem("reordered", "the record is intact but does not follow the one before it")
        return problem("inserted", "neither the link to the previous record nor the content hash holds")
    if recomputed != stored_hash:
        return problem("edited", "the content no longer matches its hash")
    return None
