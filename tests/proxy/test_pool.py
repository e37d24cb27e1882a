"""The classifier pool: answers equal to inline classification, in order, and a dead worker never loses a body."""

from __future__ import annotations

import asyncio
import json

import pytest

from auditor.classify.decode import Limits
from auditor.proxy.bodies import DEFAULT_INSPECT_CAP, BodyContext, inspect_held
from auditor.proxy.pool import ClassifierFailed, ClassifyPool, ContextFiles

CTX = BodyContext("PATCH", "/projects/models", "api.gretel.cloud", "application/json", None)
LEAK = BodyContext("POST", "/v1/logs", "api.gretel.cloud", "text/csv", None)


def _bodies() -> list[tuple[bytes, BodyContext]]:
    quiet = json.dumps({"uid": "m1", "status": "active", "status_history": [{"status": "active", "ts": f"t{i}"} for i in range(4000)]}).encode()
    rows = "\n".join(f"{i},alice{i}@example.com,{i * 7 % 1000},2024-01-{i % 28 + 1:02d}" for i in range(3000))
    return [(quiet, CTX), (("id,email,amount,day\n" + rows).encode(), LEAK), (b"x" * (3 * 1024 * 1024), CTX)]


def test_answers_equal_inline_and_in_order() -> None:
    async def run() -> list[object]:
        pool = ClassifyPool(2, ContextFiles(), max_bytes=64 * 1024 * 1024)
        try:
            futures = [pool.submit(body, ctx, DEFAULT_INSPECT_CAP, Limits()) for body, ctx in _bodies() * 3]
            assert all(f is not None for f in futures)
            return list(await asyncio.gather(*futures))  # type: ignore[arg-type]
        finally:
            pool.close()

    got = asyncio.run(run())
    want = [inspect_held(body, ctx, DEFAULT_INSPECT_CAP, Limits()) for body, ctx in _bodies() * 3]
    assert [g.model_dump() for g in got] == [w.model_dump() for w in want]  # type: ignore[attr-defined]
    assert "training-data" in want[1].labels


def test_budget_declines_past_max_bytes() -> None:
    async def run() -> tuple[bool, bool, int]:
        pool = ClassifyPool(1, ContextFiles(), max_bytes=100_000)
        try:
            first = pool.submit(b"a" * 80_000, CTX, DEFAULT_INSPECT_CAP, Limits())
            second = pool.submit(b"b" * 80_000, CTX, DEFAULT_INSPECT_CAP, Limits())
            assert first is not None
            await first
            return first.done(), second is None, pool.in_flight
        finally:
            pool.close()

    assert asyncio.run(run()) == (True, True, 0)


def test_outside_an_event_loop_the_caller_classifies_inline() -> None:
    pool = ClassifyPool(1, ContextFiles(), max_bytes=1 << 20)
    try:
        assert pool.submit(b"{}", CTX, DEFAULT_INSPECT_CAP, Limits()) is None
    finally:
        pool.close()


def test_a_dead_worker_fails_what_it_held_and_the_rest_go_on() -> None:
    async def run() -> tuple[str, object, bool]:
        pool = ClassifyPool(2, ContextFiles(), max_bytes=64 * 1024 * 1024)
        try:
            body = _bodies()[0][0]
            first = pool.submit(body, CTX, DEFAULT_INSPECT_CAP, Limits())
            assert first is not None
            await first  # both workers are up
            victim = pool._workers[0]
            held = pool.submit(body, CTX, DEFAULT_INSPECT_CAP, Limits())
            assert held is not None and victim.pending
            victim.process.kill()
            with pytest.raises(ClassifierFailed) as failed:
                await held
            after = pool.submit(body, CTX, DEFAULT_INSPECT_CAP, Limits())
            assert after is not None
            info = await after
            pool._workers[1].process.kill()
            while pool._workers[1].alive:
                await asyncio.sleep(0.01)
            return str(failed.value), info.labels, pool.submit(body, CTX, DEFAULT_INSPECT_CAP, Limits()) is None
        finally:
            pool.close()

    why, labels, none_left = asyncio.run(run())
    assert why.startswith("classifier process exited (code -9)")
    assert labels == ["metadata"] and none_left


def test_close_answers_every_body_still_held() -> None:
    loop = asyncio.new_event_loop()
    try:
        pool = ClassifyPool(1, ContextFiles(), max_bytes=64 * 1024 * 1024)

        async def submit() -> list[asyncio.Future[object]]:
            return [f for f in (pool.submit(body, ctx, DEFAULT_INSPECT_CAP, Limits()) for body, ctx in _bodies()) if f is not None]

        futures = loop.run_until_complete(submit())
        assert len(futures) == 3 and not all(f.done() for f in futures)
        pool.close()
        assert all(f.done() and f.exception() is None for f in futures)
        assert not pool._workers[0].process.is_alive()
    finally:
        loop.close()
