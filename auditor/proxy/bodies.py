"""Bodies: classified whole up to the inspect cap, streamed and scanned past it.

Memory stays bounded whatever the body size: a streamed body is hashed and fed to the
classifier's incremental scanner chunk by chunk, and only the cap's worth is ever held.
Anything not fully inspected says so, with the reason, so coverage can count it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from auditor.classify import ClassifyContext, IncrementalScanner, classify
from auditor.classify.decode import Budget, LimitExceeded, Limits, Undecodable, decode_content
from auditor.model import PayloadInfo

DEFAULT_INSPECT_CAP = 1024 * 1024
DEFAULT_ENFORCE_CAP = 32 * 1024 * 1024  # enforce mode holds a request body whole up to this, then refuses it
_SCAN_SLICE = 64 * 1024


@dataclass(frozen=True)
class BodyContext:
    """What the classifier needs to know about a body besides its bytes."""

    method: str | None
    path: str | None
    host: str | None
    content_type: str | None
    content_encoding: str | None
    context: ClassifyContext | None = None
    headers: tuple[tuple[str, str], ...] = ()  # judged like the body (`carried_checks`)


@dataclass
class Sizes:
    wire: int = 0
    decoded: int | None = None
    notes: list[str] = field(default_factory=list)
    malformed: bool = False


def decoded_size(body: bytes, encoding: str | None, limits: Limits) -> Sizes:
    """Wire and decoded sizes; a body that does not decode is `malformed`, never an exception."""
    sizes = Sizes(wire=len(body))
    if not encoding or encoding.strip().lower() in ("", "identity"):
        sizes.decoded = len(body)
        return sizes
    try:
        sizes.decoded = len(decode_content(body, encoding, Budget(limits)))
    except Undecodable as exc:
        sizes.notes.append(f"content-encoding {encoding!r} does not decode: {exc}")
        sizes.malformed = True
    except LimitExceeded as exc:
        sizes.notes.append(f"decoded size not measured: {exc.reason}")
    return sizes


def inspect_whole(body: bytes, ctx: BodyContext, limits: Limits) -> PayloadInfo:
    """Classify a body held whole (at most the inspect cap); the classifier hashes it."""
    info = classify(
        body,
        method=ctx.method,
        path=ctx.path,
        host=ctx.host,
        content_type=ctx.content_type,
        content_encoding=ctx.content_encoding,
        limits=limits,
        context=ctx.context,
        headers=ctx.headers,
    )
    info.size = info.size or len(body)
    return info


def inspect_held(body: bytes, ctx: BodyContext, cap: int, limits: Limits) -> PayloadInfo:
    """Classify a body enforce mode held whole: past the inspect cap it is scanned as audit mode streams it."""
    if len(body) <= cap:
        return inspect_whole(body, ctx, limits)
    scan = StreamedBody(ctx, cap, limits)
    view = memoryview(body)
    for start in range(0, len(body), _SCAN_SLICE):
        scan(bytes(view[start : start + _SCAN_SLICE]))
    scan(b"")
    assert scan.info is not None
    if not scan.info.inspected and not scan.info.not_inspected_reason:
        scan.info.not_inspected_reason = "scanned past the inspect cap"
    return scan.info


class StreamedBody:
    """The `flow.request.stream` callable (audit mode) for bodies past the cap or of unknown length.

    Holds bytes back until the cap is crossed (so a body that ends under the cap is
    classified whole), then forwards each chunk while hashing and scanning incrementally.
    """

    def __init__(self, ctx: BodyContext, cap: int, limits: Limits) -> None:
        self.ctx = ctx
        self.cap = cap
        self.limits = limits
        self.sha = hashlib.sha256()
        self.size = 0
        self._held: list[bytes] = []
        self._held_size = 0
        self._scanner: IncrementalScanner | None = None
        self._scan_error: str | None = None
        self.streamed = False
        self.info: PayloadInfo | None = None

    def _start_scanner(self) -> None:
        self._scanner = IncrementalScanner(
            method=self.ctx.method,
            path=self.ctx.path,
            host=self.ctx.host,
            content_type=self.ctx.content_type,
            content_encoding=self.ctx.content_encoding,
            limits=self.limits,
            context=self.ctx.context,
            headers=self.ctx.headers,
            whole_cap=0,  # we already held the cap's worth; scan from the first byte on
        )

    def _feed(self, chunk: bytes) -> None:
        if self._scanner is None or self._scan_error is not None:
            return
        try:
            self._scanner.feed(chunk)
        except Exception as exc:  # a scanner failure must not stop the traffic; it is recorded
            self._scan_error = f"scanner failed: {type(exc).__name__}: {exc}"

    def __call__(self, chunk: bytes) -> list[bytes]:
        if chunk:
            self.sha.update(chunk)
            self.size += len(chunk)
            if not self.streamed:
                self._held.append(chunk)
                self._held_size += len(chunk)
                if self._held_size <= self.cap:
                    return []
                self.streamed = True
                self._start_scanner()
                for part in self._held:
                    self._feed(part)
                out, self._held = self._held, []
                return out
            self._feed(chunk)
            return [chunk]
        self.info = self._result()
        out, self._held = self._held, []
        return out

    def _result(self) -> PayloadInfo:
        digest = self.sha.hexdigest()
        if not self.streamed:
            body = b"".join(self._held)
            info = inspect_whole(body, self.ctx, self.limits)
            info.sha256 = digest
            return info
        if self._scanner is None or self._scan_error is not None:
            return PayloadInfo(sha256=digest, size=self.size, inspected=False, not_inspected_reason=self._scan_error or "scanner not started")
        try:
            info = self._scanner.finish()
        except Exception as exc:  # recorded as not inspected, never a crash of the proxy
            return PayloadInfo(sha256=digest, size=self.size, inspected=False, not_inspected_reason=f"scanner failed: {exc}")
        info.sha256 = digest
        info.size = self.size
        return info


class CountedBody:
    """The `flow.response.stream` callable for large responses: counted and hashed, never
    held, except for its first `keep` bytes (`head`) when a reader wants those."""

    def __init__(self, keep: int = 0) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.keep = keep
        self.head = bytearray()

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            self.sha.update(chunk)
            self.size += len(chunk)
            if len(self.head) < self.keep:
                self.head += chunk[: self.keep - len(self.head)]
        return chunk
