"""IncrementalScanner: a body fed in chunks, hashed whole, scanned with bounded memory.

Small bodies (up to `whole_cap`) are kept and classified whole at `finish()`. Past
that the scanner streams: content codings are undone incrementally under the same
caps, complete lines are scanned as they arrive (keywords, credentials, canaries,
personal data, CSV blocks, fingerprints, embedded runs), the first bytes are checked
for artifact magic, and nothing but a line tail is kept. A streamed body's structure
is never validated, so it is never `metadata`: it is reported as not inspected whole.
"""

from __future__ import annotations

import codecs
import hashlib
import zlib
from collections.abc import Sequence

import brotli
import zstandard

from auditor.classify import detectors as det
from auditor.classify.decode import Budget, LimitExceeded, Limits, Undecodable, _check_ratio, as_text, compression_of, is_tar, is_zip
from auditor.classify.engine import VIOLATION_LABELS, ClassifyContext, _Gate, _Run, carried_checks, classify
from auditor.classify.fingerprint import cells_of
from auditor.classify.fingerprint import match as fp_match
from auditor.classify.routes import is_gretel_host, match
from auditor.model import PayloadInfo

_MAX_TAIL = 64 * 1024


class _Decoder:
    """One content coding undone chunk by chunk; output per call bounded by the input fed."""

    def __init__(self, encoding: str, limits: Limits):
        self.enc = encoding.strip().lower()
        self.limits = limits
        self.fed = 0
        self.out = 0
        if self.enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.enc == "deflate":
            self.z = zlib.decompressobj(zlib.MAX_WBITS)
        elif self.enc == "br":
            self.b = brotli.Decompressor()
        elif self.enc in ("zstd", "zst"):
            self.zs = zstandard.ZstdDecompressor(max_window_size=8 << 20).decompressobj()
        elif self.enc not in ("", "identity"):
            raise Undecodable(f"unknown content-encoding {encoding!r}")

    def feed(self, data: bytes) -> bytes:
        self.fed += len(data)
        try:
            if self.enc in ("gzip", "x-gzip", "deflate"):
                out = bytearray()
                inp = data
                while inp or not out:
                    piece = self.z.decompress(inp, 64 * 1024)
                    out += piece
                    self._count(len(piece))
                    inp = self.z.unconsumed_tail
                    if not piece:
                        break
                return bytes(out)
            if self.enc == "br":
                out = bytearray()
                for i in range(0, len(data), 8):
                    piece = self.b.process(data[i : i + 8])
                    out += piece
                    self._count(len(piece))
                return bytes(out)
            if self.enc in ("zstd", "zst"):
                # a 3-byte RLE block can stand for 128 KiB: small steps keep one step small
                out = bytearray()
                for i in range(0, len(data), 64):
                    piece = self.zs.decompress(data[i : i + 64])
                    out += piece
                    self._count(len(piece))
                return bytes(out)
        except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
            raise Undecodable(f"corrupt {self.enc}: {exc}") from None
        return data

    def _count(self, n: int) -> None:
        self.out += n
        _check_ratio(self.out, self.fed, self.limits, self.enc)


class IncrementalScanner:
    """feed(chunk) ... finish() -> PayloadInfo, for bodies too big to hold."""

    def __init__(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        host: str | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        limits: Limits | None = None,
        context: ClassifyContext | None = None,
        whole_cap: int = 1 << 20,
        headers: Sequence[tuple[str, str]] = (),
    ):
        self.method, self.path, self.host = method, path, host
        self.headers = headers
        self.content_type, self.content_encoding = content_type, content_encoding
        self.limits = limits or Limits()
        self.context = context or ClassifyContext()
        self.whole_cap = whole_cap
        self._sha = hashlib.sha256()
        self._size = 0
        self._buf: bytearray | None = bytearray()
        self._run = _Run(limits=self.limits, budget=Budget(self.limits), ctx=self.context)
        self._decoders: list[_Decoder] = []
        self._text = codecs.getincrementaldecoder("utf-8")("replace")
        self._tail = ""
        self._head = b""
        self._binary: bool | None = None
        self._stopped: str | None = None  # why scanning stopped (hashing goes on)
        self._offset = 0
        self._rows = 0
        self._fp_cells = 0
        self._fp_path: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Never raises: a crossed limit stops the scan and is reported by finish()."""
        self._sha.update(chunk)
        self._size += len(chunk)
        if self._buf is not None:
            self._buf += chunk
            if len(self._buf) <= self.whole_cap:
                return
            pending, self._buf = bytes(self._buf), None
            self._start()
            self._scan(pending)
            return
        self._scan(chunk)

    def _start(self) -> None:
        try:
            layers = [e for e in (self.content_encoding or "").split(",") if e.strip() and e.strip().lower() != "identity"]
            self._run.budget.depth(len(layers), "content-encoding")
            self._decoders = [_Decoder(e, self.limits) for e in reversed(layers)]
        except (LimitExceeded, Undecodable) as exc:
            self._stopped = getattr(exc, "reason", None) or f"undecodable: {exc}"

    def _scan(self, chunk: bytes) -> None:
        if self._stopped:
            return
        try:
            data = chunk
            for d in self._decoders:
                data = d.feed(data)
            self._run.budget.charge(len(data))
            self._run.budget.tick()
            self._decoded(data)
        except LimitExceeded as exc:
            self._stopped = exc.reason
        except Undecodable as exc:
            self._stopped = f"undecodable: {exc}"
        except Exception as exc:  # a sensor never crashes on a body
            self._stopped = f"classifier-error: {type(exc).__name__}"

    def _decoded(self, data: bytes) -> None:
        if self._binary is None:
            self._head += data[: 4096 - len(self._head)]
            if len(self._head) < 512 and len(data) < 4096:
                return
            self._classify_head()
        if self._binary:
            return
        self._lines(self._text.decode(data))

    def _classify_head(self) -> None:
        head = self._head
        run = self._run
        mg = det.magic(head)
        if mg:
            run.finding("magic", mg.label, "body", mg.what, "VERY_LIKELY", 0)
            self._binary = True
        elif is_zip(head) or is_tar(head):
            run.finding("magic", "model-artifact", "body", "zip archive" if is_zip(head) else "tar archive", "LIKELY", 0)
            self._binary = True
        elif compression_of(head) in ("gzip", "zstd"):
            run.finding("magic", "model-artifact", "body", f"{compression_of(head)} file streamed (not content-encoding)", "POSSIBLE", 0)
            self._binary = True
        else:
            self._binary = as_text(head) is None
            if self._binary:
                f = det.entropy_finding(head, "body", min_size=512)
                if f:
                    run.add(f)
        if not self._binary:
            self._lines(self._text.decode(head))
        self._head = b""

    def _lines(self, text: str, final: bool = False) -> None:
        text = self._tail + text
        cut = len(text) if final else text.rfind("\n") + 1
        if not final and cut == 0 and len(text) > _MAX_TAIL:
            cut = len(text)
        window, self._tail = text[:cut], text[cut:]
        if window:
            self._window(window)

    def _window(self, text: str) -> None:
        run = self._run
        path = "body"
        sightings: list[det.Sighting] | None = [] if len(text) > det.WINDOWED else None
        gate = _Gate(hits=det.keyword_hits(text.lower(), sightings), runs=True, sightings=sightings)
        if gate.hits:
            run.keyworded(text, path, gate, whole=True)
        for hit in det.pii_hits(text):
            run.pii.append((path, hit))
        block = det.csv_block(text)
        if block:
            off, rows, cols, delim = block
            run.finding("tabular:csv", "training-data", path, f"delimited rows x {cols} columns ({delim!r}), values redacted", "LIKELY", self._offset + off, rows)
        if len(text) >= self.limits.min_embedded:
            run.embedded(text, path, 0)
        if self.context.fingerprints is not None:
            m = fp_match(self.context.fingerprints, [(path, cells_of(text))])
            if m:
                self._rows += m.rows
                self._fp_cells += m.cells
                self._fp_path = self._fp_path or m.path
        if len(run.pii) > 10_000:
            del run.pii[10_000:]
        self._offset += len(text)

    def finish(self) -> PayloadInfo:
        """The verdict on everything fed; a body that stayed under whole_cap is classified whole."""
        if self._buf is not None:
            return classify(
                bytes(self._buf),
                method=self.method,
                path=self.path,
                host=self.host,
                content_type=self.content_type,
                content_encoding=self.content_encoding,
                limits=self.limits,
                context=self.context,
                headers=self.headers,
            )
        run = self._run
        if not self._stopped:
            try:
                if self._binary is None:
                    self._classify_head()
                if not self._binary:
                    self._lines(self._text.decode(b"", final=True), final=True)
            except LimitExceeded as exc:
                self._stopped = exc.reason
            except Exception as exc:  # never raise out of finish either
                self._stopped = f"classifier-error: {type(exc).__name__}"
        try:
            run.finish()
        except Exception as exc:
            self._stopped = self._stopped or f"classifier-error: {type(exc).__name__}"
        if self._rows:
            src = self.context.fingerprints.header.source if self.context.fingerprints else "data set"
            run.finding("fingerprint", "fingerprint-match", self._fp_path, f"{self._rows} rows of {src} ({self._fp_cells} fingerprinted cells)", "VERY_LIKELY", None, self._rows)
            run.finding("fingerprint", "training-data", self._fp_path, f"{self._rows} rows of {src}", "VERY_LIKELY", None, self._rows)
        gretel = self.host is None or is_gretel_host(self.host)
        route = match(self.method, self.path, self.host) if gretel else None
        try:
            carried_checks(run, self.path, route, self.headers)
        except Exception as exc:  # the body's verdict stands; what broke is the reason
            self._stopped = self._stopped or f"classifier-error: {type(exc).__name__}"
        reason = self._stopped or f"over-inspect-cap: {self._size} bytes scanned as a stream, structure not validated"
        labels = {f.label for f in run.findings} | {"uninspectable"}
        if gretel and route is None and self.method:
            labels.add("unrecognised-route")
        return PayloadInfo(
            sha256=self._sha.hexdigest(),
            size=self._size,
            labels=sorted(labels),
            metadata_kinds=[],
            findings=run.findings,
            inspected=False,
            not_inspected_reason=reason,
            route=route.name if route else None,
        )


__all__ = ["IncrementalScanner", "VIOLATION_LABELS"]
