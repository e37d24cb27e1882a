"""Tampering with the stored rows directly (the append-only guard removed first, as an
attacker would) is caught by `verify`, which names the broken record."""

from __future__ import annotations

import pytest

from auditor.store.base import ChainProblem, open_store
from auditor.store.chain import record_hash
from auditor.store.retention import RETENTION_SENSOR

from .conftest import T0, Raw, make_events


def _seed(store_url: str) -> list[str]:
    """Chain `p` with 6 records, an untouched chain `q`; returns p's record ids by seq."""
    store = open_store(store_url)
    events = make_events("p", 6)
    store.append(events[:3])
    store.append(events[3:] + make_events("q", 4))
    assert store.verify().ok
    store.close()
    return [e.id for e in events]


def _problems(store_url: str) -> list[ChainProblem]:
    store = open_store(store_url, create=False)
    result = store.verify()
    store.close()
    assert not result.ok
    assert all(p.sensor_id == "p" for p in result.problems), "the untouched chain q must still verify"
    return result.problems


def _row(raw: Raw, seq: int) -> tuple:
    return raw.q("SELECT sensor_id, seq, kind, record_id, time_us, body, prev_hash, hash FROM records WHERE sensor_id = 'p' AND seq = ?", (seq,))[0]


def test_the_guard_refuses_edits_and_deletes(store_url: str, raw: Raw) -> None:
    _seed(store_url)
    with pytest.raises(Exception, match="append-only"):
        raw.q("UPDATE records SET kind = 'x' WHERE seq = 1")
    with pytest.raises(Exception, match="append-only"):
        raw.q("DELETE FROM records WHERE seq = 1")


def test_edit_is_named(store_url: str, raw: Raw) -> None:
    ids = _seed(store_url)
    raw.unguard()
    body = _row(raw, 3)[5]
    raw.q("UPDATE records SET body = ? WHERE sensor_id = 'p' AND seq = 3", (body.replace(b"api.gretel.cloud", b"evil.example.com"),))
    [problem] = _problems(store_url)
    assert (problem.kind, problem.seq, problem.record_id) == ("edited", 3, ids[2])


def test_delete_is_named(store_url: str, raw: Raw) -> None:
    ids = _seed(store_url)
    raw.unguard()
    raw.q("DELETE FROM records WHERE sensor_id = 'p' AND seq = 3")
    [problem] = _problems(store_url)
    assert (problem.kind, problem.seq, problem.record_id) == ("missing", 3, ids[3])
    assert "#3..#3" in problem.detail


def test_reorder_is_named(store_url: str, raw: Raw) -> None:
    ids = _seed(store_url)
    raw.unguard()
    raw.q("UPDATE records SET seq = 100 WHERE sensor_id = 'p' AND seq = 3")
    raw.q("UPDATE records SET seq = 3 WHERE sensor_id = 'p' AND seq = 4")
    raw.q("UPDATE records SET seq = 4 WHERE sensor_id = 'p' AND seq = 100")
    [problem] = _problems(store_url)
    assert problem.seq == 3 and problem.record_id == ids[3]  # the record moved into #3
    assert problem.kind in {"reordered", "inserted"}


def test_insert_with_a_valid_link_is_named(store_url: str, raw: Raw) -> None:
    """The attacker forges #3, correctly linked to #2, and renumbers the rest: the forgery
    verifies on its own, so the chain breaks at the displaced record after it."""
    ids = _seed(store_url)
    raw.unguard()
    for seq in range(6, 2, -1):
        raw.q("UPDATE records SET seq = ? WHERE sensor_id = 'p' AND seq = ?", (seq + 1, seq))
    prev = _row(raw, 2)[7]
    body = _row(raw, 4)[5].replace(b"uid=m_2", b"uid=forged")
    forged = ("p", 3, "event", "forged", _row(raw, 4)[4], body, prev, record_hash("p", 3, prev, body))
    raw.q("INSERT INTO records (sensor_id, seq, kind, record_id, time_us, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", forged)
    [problem] = _problems(store_url)
    assert (problem.kind, problem.seq, problem.record_id) == ("inserted", 4, ids[2])


def test_truncated_tail_is_named(store_url: str, raw: Raw) -> None:
    _seed(store_url)
    raw.unguard()
    raw.q("DELETE FROM records WHERE sensor_id = 'p' AND seq >= 5")
    [problem] = _problems(store_url)
    assert (problem.kind, problem.seq) == ("truncated", 5)
    assert "checkpoint records 6 records ending at #6" in problem.detail


def test_prefix_deleted_without_a_retention_record_is_missing(store_url: str, raw: Raw) -> None:
    ids = _seed(store_url)
    raw.unguard()
    raw.q("DELETE FROM records WHERE sensor_id = 'p' AND seq <= 2")
    [problem] = _problems(store_url)
    assert (problem.kind, problem.seq, problem.record_id) == ("missing", 1, ids[2])


def test_edited_retention_record_is_named(store_url: str, raw: Raw) -> None:
    """The statement that accounts for removed records is evidence too."""
    from datetime import timedelta

    from auditor.store.ops import retain_store

    _seed(store_url)
    assert retain_store(store_url, T0 + timedelta(minutes=2)).removed == 4  # p #1-#2, q #1-#2
    raw.unguard()
    body = raw.q("SELECT body FROM records WHERE sensor_id = ? AND seq = 1", (RETENTION_SENSOR,))[0][0]
    raw.q("UPDATE records SET body = ? WHERE sensor_id = ?", (body.replace(b"through_seq\\\":2", b"through_seq\\\":3"), RETENTION_SENSOR))
    store = open_store(store_url, create=False)
    result = store.verify()
    store.close()
    assert [(p.sensor_id, p.kind, p.seq) for p in result.problems][0] == (RETENTION_SENSOR, "edited", 1)


def test_a_rehashed_retention_record_with_a_wrong_resume_hash_is_caught(store_url: str, raw: Raw) -> None:
    """Even a retention record forged consistently (re-hashed, checkpoint moved) cannot
    hide an edit: the first kept record must still link to the named hash."""
    from datetime import timedelta

    from auditor.store.ops import retain_store

    ids = _seed(store_url)
    retain_store(store_url, T0 + timedelta(minutes=2))
    raw.unguard()
    seq, body, prev = raw.q("SELECT seq, body, prev_hash FROM records WHERE sensor_id = ?", (RETENTION_SENSOR,))[0]
    # "p's #3 went too", resuming from the same hash; q's part of the statement untouched
    forged_body = body.replace(b'through_seq\\":2', b'through_seq\\":3', 1)
    assert forged_body != body
    forged_hash = record_hash(RETENTION_SENSOR, seq, prev, forged_body)
    raw.q("UPDATE records SET body = ?, hash = ? WHERE sensor_id = ?", (forged_body, forged_hash, RETENTION_SENSOR))
    raw.q("UPDATE checkpoints SET head_hash = ? WHERE sensor_id = ?", (forged_hash, RETENTION_SENSOR))
    raw.q("DELETE FROM records WHERE sensor_id = 'p' AND seq = 3")  # what the forgery tried to hide
    [problem] = _problems(store_url)
    assert problem.seq == 4 and problem.record_id == ids[3]
