"""Judging and storing in a second process, for reading a capture file.

Why: the policy, the hash chain and the store's writes cost about as much CPU as
reading and dissecting the capture that produced the events, and a machine has more
than one core; in one process they share one (the GIL). So `run_pcap` forks a
process that takes the engine's events over a pipe, as JSON in batches in the order
they were produced, judges each with the pack (inherited through the fork, never
reloaded) and appends them to the store: one writer, one order, the same chain the
in-process path writes (tests/probe/test_judge.py compares the stored events).

Live capture keeps the in-process `BatchWriter`: a pipe blocks when the store falls
behind, and a capture loop that blocks loses packets in the kernel. Reading a file,
blocking is the backpressure the reader needs.
"""

from __future__ import annotations

import gc
import mmap
import os
import resource
import signal
import struct
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from auditor.errors import AuditorError
from auditor.model import Decision, EgressEvent, sensor_event
from auditor.store.base import open_store

if TYPE_CHECKING:
    from auditor.rules import Pack

_EVENTS = TypeAdapter(list[EgressEvent])
_HEAD = struct.Struct("<Q")  # bytes of the batch that follows
_COUNTS = struct.Struct("<qq")  # written, dropped: the child's progress, shared memory
_PIPE_BYTES = 1 << 20  # room for a few batches in flight (Linux's default cap for an unprivileged pipe)
_F_SETPIPE_SZ = 1031
Judge = Callable[[EgressEvent, "Pack"], Decision | None]


def peak_memory_mb() -> int:
    """This process's own high-water mark (VmHWM). ru_maxrss is not used: after
    fork and exec it can still carry the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


class JudgeProcess:
    """The forked judge and writer. `send` hands over a batch (blocking while the pipe is
    full), `progress` reads the child's counts, `close` waits for the last write."""

    def __init__(self, store_url: str, sensor_id: str, pack: Pack | None) -> None:
        evaluate: Judge | None = None
        if pack is not None:
            from auditor.rules.policy import evaluate  # noqa: PLC0415 - imported before the fork, never in the child
        open_store(store_url).close()  # a bad URL fails here, in the caller; the schema exists before the child opens it
        self._counts = mmap.mmap(-1, _COUNTS.size)
        events_r, events_w = os.pipe()
        result_r, result_w = os.pipe()
        try:
            import fcntl  # noqa: PLC0415 - Linux only, and only for the pipe's size

            fcntl.fcntl(events_w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except (ImportError, OSError):
            pass  # a smaller pipe only means less slack between the two processes
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            result: dict[str, Any] = {"error": "the judging process failed before it started"}
            try:
                os.close(events_w)
                os.close(result_r)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the reader, which then closes the pipe
                gc.freeze()  # the parent's objects: never scanned, never copied by a collection
                result = _serve(events_r, store_url, sensor_id, pack, evaluate, self._counts)
                code = 0
            except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
                result = {"error": traceback.format_exc(limit=5)}
            finally:
                try:
                    os.write(result_w, orjson.dumps(result))
                finally:
                    os._exit(code)
        os.close(events_r)
        os.close(result_w)
        self._pid = pid
        self._pipe = os.fdopen(events_w, "wb")
        self._result = result_r
        self.written = 0
        self.dropped = 0
        self.peak_memory_mb = 0  # the child's own high-water mark, known once it has ended

    def send(self, events: list[dict[str, Any]]) -> None:
        """One batch of event documents (an EgressEvent's fields as plain data, `model_dump()`
        of one or the engine's `EventDoc`), in order after every batch before it. The child
        validates them: an invalid one fails the run there, as a bad model would have here."""
        if not events:
            return
        blob = orjson.dumps(events)
        try:
            self._pipe.write(_HEAD.pack(len(blob)))
            self._pipe.write(blob)
            self._pipe.flush()
        except BrokenPipeError:
            self.close()  # raises the child's error
            raise

    def progress(self) -> tuple[int, int]:
        """(written, dropped) so far."""
        written, dropped = _COUNTS.unpack_from(self._counts)
        return written, dropped

    def close(self) -> None:
        """End of input: wait for the child to write the rest. Raises when the child failed."""
        if self._pid == 0:
            return
        try:
            self._pipe.close()
        except BrokenPipeError:
            pass
        chunks = []
        while chunk := os.read(self._result, 1 << 16):
            chunks.append(chunk)
        os.close(self._result)
        os.waitpid(self._pid, 0)
        self._pid = 0
        result = orjson.loads(b"".join(chunks)) if chunks else {"error": "the judging process ended without a word"}
        if "error" in result:
            raise AuditorError(
                f"judging and storing the events failed: {result['error'].strip().splitlines()[-1]}",
                fix="the events before the failure are stored; check the store (auditor verify) and run again",
            )
        self.written, self.dropped, self.peak_memory_mb = result["written"], result["dropped"], result["peak_memory_mb"]


def _valid_events(blob: bytes) -> tuple[list[EgressEvent], int, str]:
    """The events of a batch that did not validate as a whole, one document at a time:
    (the valid ones, how many were not, the first reason). A bug in the reader costs
    the documents it spoiled, never the rest of the run."""
    try:
        docs = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        return [], 1, f"a batch of {len(blob)} bytes is not JSON ({exc})"
    if not isinstance(docs, list):
        return [], 1, "a batch is not a list of events"
    events: list[EgressEvent] = []
    why = ""
    for doc in docs:
        try:
            events.append(EgressEvent.model_validate(doc))
        except ValidationError as exc:
            err = exc.errors()[0]
            why = why or f"{'.'.join(map(str, err['loc'])) or 'the event'}: {err['msg']}"
    return events, len(docs) - len(events), why


def _serve(fd: int, store_url: str, sensor_id: str, pack: Pack | None, evaluate: Judge | None, counts: mmap.mmap) -> dict[str, Any]:
    """The child's loop: read a batch, judge it, append it. The events of a failed append
    are counted (`dropped`) and chained as one drop record with the next batch, as
    `BatchWriter` does."""
    gc.set_threshold(50_000, 20, 100)
    store = open_store(store_url)
    written = 0
    dropped = 0
    pending = 0  # lost and not yet chained as a drop
    try:
        with os.fdopen(fd, "rb") as pipe:
            while head := pipe.read(_HEAD.size):
                blob = pipe.read(_HEAD.unpack(head)[0])
                try:
                    events = _EVENTS.validate_json(blob)
                except ValidationError:  # keep every document that is an event
                    events, bad, why = _valid_events(blob)
                    dropped += bad
                    events.append(sensor_event(sensor_id, "error", dropped=bad, detail=f"{bad} events not stored: {why}"))
                if evaluate is not None and pack is not None:
                    for ev in events:
                        if ev.kind != "sensor":
                            ev.decision = evaluate(ev, pack)
                batch = len(events)
                if pending:
                    events.append(sensor_event(sensor_id, "drop", dropped=pending, detail="store write failed"))
                try:
                    store.append(events)
                except Exception:  # noqa: BLE001 - the sensor keeps going; the loss is evidence
                    dropped += batch
                    pending += batch
                else:
                    written += len(events)
                    pending = 0
                _COUNTS.pack_into(counts, 0, written, dropped)
    finally:
        store.close()
    return {"written": written, "dropped": dropped, "peak_memory_mb": peak_memory_mb()}
