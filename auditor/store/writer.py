"""Off-the-hot-path writes: a bounded queue drained in batches by one thread.

A sensor calls `submit` and never waits on the database. When the queue is full
the event is counted, and the count is chained as a `drop` record at the next
flush: nothing is lost silently.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from auditor.model import EgressEvent, sensor_event
from auditor.store.base import Store


class BatchWriter:
    def __init__(
        self,
        store: Store,
        sensor_id: str,
        *,
        max_queue: int = 50_000,
        batch_size: int = 1_000,
        flush_interval: float = 0.2,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.sensor_id = sensor_id
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._queue: queue.Queue[EgressEvent | None] = queue.Queue(maxsize=max_queue)
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._on_error = on_error
        self.written = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=f"writer-{sensor_id}", daemon=True)
        self._thread.start()

    def start(self, *, config_digest: str | None = None, detail: str | None = None, version: str | None = None) -> None:
        """Chain `start`; first a `gap` if the previous run of this sensor never chained
        `stop` (a crash or a kill): a hole in monitoring is evidence, not silence."""
        last = self.store.last_event(self.sensor_id)
        if last is not None and not (last.sensor and last.sensor.lifecycle == "stop"):
            self.submit(
                sensor_event(
                    self.sensor_id, "gap",
                    detail=f"previous run ended without a stop record; last record at {last.time.isoformat()}",
                )
            )
        self.submit(sensor_event(self.sensor_id, "start", config_digest=config_digest, detail=detail, version=version))

    def stop(self, detail: str | None = None) -> None:
        """Chain `stop` and flush: the clean end of a run."""
        self._queue.put(sensor_event(self.sensor_id, "stop", detail=detail))
        self.close()

    def submit(self, event: EgressEvent) -> bool:
        """Never blocks. False means the event was dropped (and counted)."""
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            with self._dropped_lock:
                self._dropped += 1
            return False

    @property
    def dropped(self) -> int:
        return self._dropped

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued, then stop. Blocks: call it on shutdown only."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _take_drops(self) -> int:
        with self._dropped_lock:
            n, self._dropped = self._dropped, 0
        return n

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[EgressEvent] = []
            try:
                item = self._queue.get(timeout=self.flush_interval)
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                while len(batch) < self.batch_size and not stopping:
                    item = self._queue.get_nowait()
                    if item is None:
                        stopping = True
                    else:
                        batch.append(item)
            except queue.Empty:
                pass
            drops = self._take_drops()
            if drops:
                batch.append(sensor_event(self.sensor_id, "drop", dropped=drops, detail="writer queue full"))
            if batch:
                self._write(batch)

    def _write(self, batch: list[EgressEvent]) -> None:
        try:
            self.store.append(batch)
            self.written += len(batch)
        except Exception as exc:  # the sensor must keep running; the loss is counted and retried as a drop
            self.errors += 1
            lost = sum(e.sensor.dropped if e.sensor and e.sensor.lifecycle == "drop" else 1 for e in batch)
            with self._dropped_lock:
                self._dropped += lost
            if self._on_error:
                self._on_error(exc)
