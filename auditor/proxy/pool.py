"""Large held bodies are classified in worker processes, off the proxy's event loop.

Classifying a 256 KB JSON body takes milliseconds of CPU; on the event loop that time
stalls every other connection and caps the proxy at one core. In audit mode the traffic
is forwarded first anyway, so a big body can be judged by another process while the
proxy keeps moving bytes; in enforce mode only the request being judged waits. Small bodies stay inline: handing them over costs more than
classifying them. Memory stays bounded: past `max_bytes` of bodies in flight, `submit`
declines and the caller classifies inline, which slows the proxy down (back-pressure)
instead of queueing without end.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from auditor.classify import ClassifyContext, load_context
from auditor.classify.decode import Limits
from auditor.model import PayloadInfo
from auditor.proxy.bodies import BodyContext, inspect_held

POOL_MIN_BYTES = 32 * 1024  # smaller bodies are classified inline (cheaper than the hand-over)


def default_workers() -> int:
    """One core stays with the event loop; at most four workers (a proxy per node, not per cluster)."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class ContextFiles:
    """Where a worker loads its fingerprints and canaries from: the loaded sets are not sent per body."""

    fingerprints: str = ""
    key_file: str = ""
    canaries: str = ""


_worker_context: ClassifyContext | None = None


def _init_worker(files: ContextFiles) -> None:
    global _worker_context
    if files.fingerprints or files.canaries:
        _worker_context = load_context(
            Path(files.fingerprints) if files.fingerprints else None,
            Path(files.key_file) if files.key_file else None,
            Path(files.canaries) if files.canaries else None,
        )


def _inspect(body: bytes, ctx: BodyContext, cap: int, limits: Limits) -> PayloadInfo:
    return inspect_held(body, replace(ctx, context=_worker_context), cap, limits)


class ClassifyPool:
    """A few classifier processes, and the budget of body bytes handed to them."""

    def __init__(self, workers: int, files: ContextFiles, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_flight = 0
        self._lock = threading.Lock()  # futures complete on the executor's thread
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(files,)
        )

    def submit(self, body: bytes, ctx: BodyContext, cap: int, limits: Limits) -> Future[PayloadInfo] | None:
        """The classification of `body` in a worker, or None when the budget is spent (classify inline then)."""
        size = len(body)
        with self._lock:
            if self.in_flight and self.in_flight + size > self.max_bytes:
                return None
            self.in_flight += size
        future = self._executor.submit(_inspect, body, replace(ctx, context=None), cap, limits)
        future.add_done_callback(lambda _: self._release(size))
        return future

    def _release(self, size: int) -> None:
        with self._lock:
            self.in_flight -= size

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
