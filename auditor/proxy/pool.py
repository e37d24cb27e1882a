"""Large held bodies are classified in worker processes, off the proxy's event loop.

Classifying a 256 KB JSON body takes milliseconds of CPU; on the event loop that time
stalls every other connection and caps the proxy at one core. In audit mode the traffic
is forwarded first anyway, so a big body can be judged by another process while the
proxy keeps moving bytes; in enforce mode only the request being judged waits. Small
bodies stay inline: handing them over costs more than classifying them.

The hand-over runs on the event loop itself, over one Unix socket per worker, with no
thread in the proxy: `concurrent.futures.ProcessPoolExecutor` feeds its workers from
two threads, and their fight with the event loop for the GIL cost the proxy more than a
millisecond per 256 KB body. Memory stays bounded: past `max_bytes` of bodies in
flight, `submit` declines and the caller classifies inline, which slows the proxy down
(back-pressure) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import socket
import struct
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from auditor.classify import ClassifyContext, load_context
from auditor.classify.decode import Limits
from auditor.model import PayloadInfo
from auditor.proxy.bodies import BodyContext, inspect_held

POOL_MIN_BYTES = 32 * 1024  # smaller bodies are classified inline (cheaper than the hand-over)
_REQUEST = struct.Struct("!II")  # pickled (context, cap, limits), then the body
_REPLY = struct.Struct("!I")  # a pickled ("ok", PayloadInfo) or ("error", message)
_READ = 256 * 1024


def default_workers() -> int:
    """One core stays with the event loop; at most four workers (a proxy per node, not per cluster)."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class ContextFiles:
    """Where a worker loads its fingerprints and canaries from: the loaded sets are not sent per body."""

    fingerprints: str = ""
    key_file: str = ""
    canaries: str = ""


class ClassifierFailed(Exception):
    """The worker raised, or died, while classifying this body."""


def _load(files: ContextFiles) -> ClassifyContext | None:
    if not (files.fingerprints or files.canaries):
        return None
    return load_context(
        Path(files.fingerprints) if files.fingerprints else None,
        Path(files.key_file) if files.key_file else None,
        Path(files.canaries) if files.canaries else None,
    )


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _serve(sock: socket.socket, files: ContextFiles) -> None:
    """A worker: one request at a time, answered in order, until the proxy closes its end.

    It runs at a lower priority than the proxy: on a busy node moving bytes comes first
    and the verdicts catch up in the gaps (the in-flight budget bounds how far behind).
    """
    os.nice(10)
    context = _load(files)
    with sock:
        while True:
            head = _recv_exactly(sock, _REQUEST.size)
            if head is None:
                return
            meta_len, body_len = _REQUEST.unpack(head)
            meta, body = _recv_exactly(sock, meta_len), _recv_exactly(sock, body_len)
            if meta is None or body is None:
                return
            try:
                ctx, cap, limits = pickle.loads(meta)
                reply: tuple[str, Any] = ("ok", inspect_held(body, replace(ctx, context=context), cap, limits))
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}")
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(_REPLY.pack(len(data)) + data)


class _Worker:
    """One classifier process and the proxy's end of its socket."""

    def __init__(self, mp: Any, files: ContextFiles) -> None:
        ours, theirs = socket.socketpair()
        self.process = mp.Process(target=_serve, args=(theirs, files), daemon=True, name="auditor-classify")
        self.process.start()
        theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.pending: deque[tuple[asyncio.Future[PayloadInfo], int]] = deque()
        self.queued = 0  # body bytes sent and not yet answered
        self.out: deque[memoryview] = deque()
        self.inbox = bytearray()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writing = False
        self.alive = True


class ClassifyPool:
    """A few classifier processes, and the budget of body bytes handed to them."""

    def __init__(self, workers: int, files: ContextFiles, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_flight = 0
        mp = multiprocessing.get_context("spawn")
        self._workers = [_Worker(mp, files) for _ in range(workers)]

    def submit(self, body: bytes, ctx: BodyContext, cap: int, limits: Limits) -> asyncio.Future[PayloadInfo] | None:
        """The classification of `body` in a worker, or None when the budget is spent or no worker is left."""
        size = len(body)
        if self.in_flight and self.in_flight + size > self.max_bytes:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # nothing would read the answer
            return None
        live = [w for w in self._workers if w.alive]
        if not live:
            return None
        worker = min(live, key=lambda w: w.queued)
        if worker.loop is None:
            worker.loop = loop
            loop.add_reader(worker.sock, self._readable, worker)
        meta = pickle.dumps((replace(ctx, context=None), cap, limits), protocol=pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[PayloadInfo] = loop.create_future()
        worker.pending.append((future, size))
        worker.queued += size
        self.in_flight += size
        worker.out.extend((memoryview(_REQUEST.pack(len(meta), size) + meta), memoryview(body)))
        self._write(worker)
        return future

    def _write(self, worker: _Worker) -> None:
        """Send what the socket takes now; the rest when it is writable again."""
        try:
            while worker.out:
                sent = worker.sock.sendmsg(list(worker.out)[:64])
                while sent and worker.out:
                    head = worker.out[0]
                    if sent >= len(head):
                        sent -= len(head)
                        worker.out.popleft()
                    else:
                        worker.out[0] = head[sent:]
                        sent = 0
        except BlockingIOError:
            if not worker.writing and worker.loop is not None:
                worker.writing = True
                worker.loop.add_writer(worker.sock, self._write, worker)
            return
        except OSError as exc:
            self._lost(worker, f"classifier process unreachable: {exc}")
            return
        if worker.writing and worker.loop is not None:
            worker.writing = False
            worker.loop.remove_writer(worker.sock)

    def _readable(self, worker: _Worker) -> None:
        try:
            data = worker.sock.recv(_READ)
        except BlockingIOError:
            return
        except OSError:  # a reset: the worker died with a request unread
            data = b""
        if not data:
            worker.process.join(1)
            self._lost(worker, f"classifier process exited (code {worker.process.exitcode})")
            return
        worker.inbox += data
        self._answers(worker)

    def _answers(self, worker: _Worker) -> None:
        """Resolve the futures whose replies are whole; replies come in the order of the requests."""
        inbox, at = worker.inbox, 0
        while len(inbox) - at >= _REPLY.size:
            (n,) = _REPLY.unpack_from(inbox, at)
            if len(inbox) - at - _REPLY.size < n:
                break
            status, value = pickle.loads(inbox[at + _REPLY.size : at + _REPLY.size + n])
            at += _REPLY.size + n
            self._settle(worker, value if status == "ok" else ClassifierFailed(value))
        del inbox[:at]

    def _settle(self, worker: _Worker, outcome: PayloadInfo | ClassifierFailed) -> None:
        future, size = worker.pending.popleft()
        worker.queued -= size
        self.in_flight -= size
        if future.done():
            return
        # At shutdown the loop may be closed: the outcome is still set (the caller reads
        # it), only the scheduling of the done-callbacks fails.
        with contextlib.suppress(RuntimeError):
            if isinstance(outcome, ClassifierFailed):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _lost(self, worker: _Worker, why: str) -> None:
        """A worker that died fails what it held; the others (or the event loop) take the rest."""
        if not worker.alive:
            return
        worker.alive = False
        self._unwatch(worker)
        worker.sock.close()
        while worker.pending:
            self._settle(worker, ClassifierFailed(why))

    def _unwatch(self, worker: _Worker) -> None:
        if worker.loop is not None and not worker.loop.is_closed() and worker.sock.fileno() >= 0:
            worker.loop.remove_reader(worker.sock)
            if worker.writing:
                worker.loop.remove_writer(worker.sock)
        worker.writing = False

    def close(self) -> None:
        """Answer every body still in a worker (blocking: shutdown or reconfiguration), then stop them."""
        for worker in self._workers:
            if worker.alive:
                self._unwatch(worker)
                worker.sock.setblocking(True)
                try:
                    for chunk in worker.out:
                        worker.sock.sendall(chunk)
                    worker.out.clear()
                    worker.sock.shutdown(socket.SHUT_WR)
                    while worker.pending:
                        data = worker.sock.recv(_READ)
                        if not data:
                            break
                        worker.inbox += data
                        self._answers(worker)
                except OSError:
                    pass
                self._lost(worker, "classifier process stopped before answering")
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
