"""Bounded decoding: every layer a body can hide behind, with caps on size, ratio,
depth, entries and time, so a hostile body costs a known amount and never more.

Crossing a limit raises `LimitExceeded` inside the classifier, which turns it into
an `uninspectable` result with the reason; nothing here is allowed to escape as any
other exception or to hold more than the caps in memory.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import tarfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import brotli
import hyperscan
import zstandard
from pydantic import BaseModel, ConfigDict, Field

from auditor.classify.scan import database, match_ends

KiB = 1024
MiB = 1024 * KiB


class Limits(BaseModel):
    """What one body may cost. Defaults follow the issue: 32 MiB, 100:1 after 100 KiB, depth 3, 1,000 entries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_decoded_bytes: int = Field(default=32 * MiB, ge=1)
    max_ratio: int = Field(default=100, ge=1)
    ratio_grace_bytes: int = Field(default=100 * KiB, ge=0)
    max_depth: int = Field(default=3, ge=0)
    max_entries: int = Field(default=1_000, ge=1)
    time_budget_s: float = Field(default=5.0, gt=0)
    max_structure_depth: int = Field(default=64, ge=1)  # JSON/YAML nesting, not decoding layers
    max_nodes: int = Field(default=500_000, ge=1)  # JSON/YAML values walked per body
    min_embedded: int = Field(default=16, ge=4)  # shortest base64/hex run worth decoding
    max_yaml_bytes: int = Field(default=1 * MiB, ge=1)  # model configs are small; YAML parsing is slow
    pii_table_min: int = Field(default=3, ge=1)  # personal-data items before they mean "a table"


class LimitExceeded(Exception):
    """A cap was crossed; `reason` is what the event records as not_inspected_reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Budget:
    """Shared across every layer of one body: decoded bytes, nodes and wall time."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.decoded = 0
        self.nodes = 0
        self.deadline = time.monotonic() + limits.time_budget_s

    def charge(self, n: int) -> None:
        self.decoded += n
        if self.decoded > self.limits.max_decoded_bytes:
            raise LimitExceeded(f"decoded-size: more than {self.limits.max_decoded_bytes} bytes after decoding")

    def node(self, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > self.limits.max_nodes:
            raise LimitExceeded(f"node-count: more than {self.limits.max_nodes} values in the body")

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"time-budget: inspection took longer than {self.limits.time_budget_s:g} s")

    def depth(self, depth: int, what: str) -> None:
        if depth > self.limits.max_depth:
            raise LimitExceeded(f"nesting-depth: {what} nested deeper than {self.limits.max_depth} layers")


class Undecodable(Exception):
    """The bytes are not what their label says (corrupt gzip, bad multipart)."""


_CHUNK = 64 * KiB


def _check_ratio(out_len: int, in_len: int, limits: Limits, what: str) -> None:
    if out_len > limits.ratio_grace_bytes and out_len > limits.max_ratio * max(in_len, 1):
        raise LimitExceeded(f"inflation-ratio: {what} expands more than {limits.max_ratio}:1")


def _zlib(data: bytes, wbits: int, budget: Budget, what: str) -> bytes:
    out = bytearray()
    rest = data
    total_in = len(data)
    while True:
        d = zlib.decompressobj(wbits)
        inp = rest
        while True:
            budget.tick()
            try:
                chunk = d.decompress(inp, _CHUNK)
            except zlib.error as exc:
                raise Undecodable(f"corrupt {what}: {exc}") from None
            out += chunk
            budget.charge(len(chunk))
            consumed = total_in - len(d.unconsumed_tail) - len(d.unused_data)
            _check_ratio(len(out), consumed, budget.limits, what)
            inp = d.unconsumed_tail
            if d.eof or (not inp and not chunk):
                break
        if not d.eof:
            raise Undecodable(f"truncated {what}")
        rest = d.unused_data
        # gzip allows several members back to back; anything else after the end is ignored
        if wbits & 16 and rest[:2] == b"\x1f\x8b":
            total_in = len(data)
            continue
        return bytes(out)


def _brotli(data: bytes, budget: Budget) -> bytes:
    # Brotli 1.1 (mitmproxy's pin) has no output limit, and one input byte can expand
    # to megabytes: feed a few bytes at a time so one step stays small.
    d = brotli.Decompressor()
    out = bytearray()
    step = 8
    for i in range(0, len(data), step):
        if not i % 4096:
            budget.tick()
        try:
            chunk = d.process(data[i : i + step])
        except brotli.error as exc:
            raise Undecodable(f"corrupt br: {exc}") from None
        out += chunk
        budget.charge(len(chunk))
        _check_ratio(len(out), i + step, budget.limits, "br")
    if not d.is_finished():
        raise Undecodable("truncated br")
    return bytes(out)


def _zstd(data: bytes, budget: Budget) -> bytes:
    dctx = zstandard.ZstdDecompressor(max_window_size=8 * MiB)
    src = io.BytesIO(data)
    out = bytearray()
    try:
        with dctx.stream_reader(src, read_size=16 * KiB, read_across_frames=True) as reader:
            while True:
                budget.tick()
                chunk = reader.read(_CHUNK)
                if not chunk:
                    break
                out += chunk
                budget.charge(len(chunk))
                _check_ratio(len(out), src.tell(), budget.limits, "zstd")
    except zstandard.ZstdError as exc:
        raise Undecodable(f"corrupt zstd: {exc}") from None
    return bytes(out)


def decompress(data: bytes, encoding: str, budget: Budget) -> bytes:
    """One content coding, bounded. Unknown codings are an Undecodable body, not a guess."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return data
    if enc in ("gzip", "x-gzip"):
        return _zlib(data, 16 + zlib.MAX_WBITS, budget, "gzip")
    if enc == "deflate":
        try:
            return _zlib(data, zlib.MAX_WBITS, budget, "deflate")
        except Undecodable:
            return _zlib(data, -zlib.MAX_WBITS, budget, "deflate")
    if enc == "br":
        return _brotli(data, budget)
    if enc in ("zstd", "zst"):
        return _zstd(data, budget)
    raise Undecodable(f"unknown content-encoding {encoding!r}")


def open_unmarked(data: bytes, budget: Budget) -> tuple[str, bytes] | None:
    """Binary of no known format may still be a stream that carries no magic (raw
    deflate, brotli): the first of them it opens as, when that yields text or a known
    format, bounded like a content coding. Only a stream whose first 4 KiB open to such
    bytes is decoded whole: random bytes fail, or open to noise, within them."""
    if len(data) < 16:
        return None
    head = data[:4096]
    for enc in ("raw deflate", "br"):
        try:
            if enc == "raw deflate":
                start = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, _CHUNK)
            else:
                d, parts = brotli.Decompressor(), bytearray()
                for i in range(0, len(head), 8):  # as `_brotli` steps, and no further than it
                    parts += d.process(head[i : i + 8])
                    if len(parts) >= _CHUNK:
                        break
                start = bytes(parts)
        except (zlib.error, brotli.error):
            continue
        if not _meaningful(start[:4096]):
            continue
        try:
            out = _zlib(data, -zlib.MAX_WBITS, budget, enc) if enc == "raw deflate" else _brotli(data, budget)
        except Undecodable:
            continue
        return enc, out
    return None


def _meaningful(data: bytes) -> bool:
    return len(data) >= 8 and (as_text(data) is not None or compression_of(data) is not None or is_zip(data) or is_tar(data))


def decode_content(data: bytes, content_encoding: str | None, budget: Budget) -> bytes:
    """Stacked codings (`gzip, br`) are undone last-applied first; each one is a layer of depth."""
    if not content_encoding:
        return data
    layers = [e for e in content_encoding.split(",") if e.strip() and e.strip().lower() != "identity"]
    budget.depth(len(layers), "content-encoding")
    for enc in reversed(layers):
        data = decompress(data, enc, budget)
    return data


# --- what the bytes are -------------------------------------------------------

COMPRESSED_MAGIC: dict[str, bytes] = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}


def compression_of(data: bytes) -> str | None:
    """Self-describing compressed streams (zlib has a weak magic: checked by header sum)."""
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(data) >= 2 and data[0] == 0x78 and (data[0] << 8 | data[1]) % 31 == 0 and data[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "deflate"
    return None


def is_tar(data: bytes) -> bool:
    return len(data) >= 262 and data[257:262] == b"ustar"


def is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """`multipart/form-data; boundary=x` -> ("multipart/form-data", {"boundary": "x"})."""
    if not content_type:
        return "", {}
    head, *params = content_type.split(";")
    out: dict[str, str] = {}
    for p in params:
        if "=" in p:
            k, v = p.split("=", 1)
            out[k.strip().lower()] = v.strip().strip('"')
    return head.strip().lower(), out


_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))  # what str.isprintable() takes as printable in ASCII


def as_text(data: bytes) -> str | None:
    """UTF-8 text that is mostly printable, else None (binary)."""
    if data.isascii():
        # the same test on bytes: what is left once the printable bytes are deleted
        odd = data[:4096].translate(None, _PRINTABLE_ASCII)
        if odd and len(odd.translate(None, b"\n\r\t")) > min(len(data), 4096) // 50:
            return None
        return data.decode("ascii")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return text
    sample = text[:4096]
    if sample.isprintable():
        return text
    # format characters and separators (zero-width, bidi marks, no-break spaces) are text
    bad = sum(1 for c in sample if not c.isprintable() and c not in "\n\r\t" and unicodedata.category(c) not in _TEXT_CATEGORIES)
    return text if bad <= len(sample) // 50 else None


_TEXT_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp"})


# --- containers ---------------------------------------------------------------


@dataclass
class Entry:
    """One member of a container: a multipart part or an archive member."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def multipart(data: bytes, boundary: str, budget: Budget) -> list[Entry]:
    """RFC 7578 parts; bounded by max_entries; a missing boundary is Undecodable."""
    delim = b"--" + boundary.encode("latin-1", "replace")
    chunks = data.split(delim)
    if len(chunks) < 2:
        raise Undecodable("multipart body without its boundary")
    out: list[Entry] = []
    for raw in chunks[1:]:
        if raw.startswith(b"--"):
            break
        if len(out) >= budget.limits.max_entries:
            raise LimitExceeded(f"archive-entries: more than {budget.limits.max_entries} multipart parts")
        raw = raw[2:] if raw.startswith(b"\r\n") else raw.lstrip(b"\n")
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = raw.partition(b"\n\n")
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        name, filename, ctype = "", None, None
        for line in head.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                for m in re.finditer(r'(\w+\*?)="?([^";]*)"?', value):
                    if m.group(1).lower() == "name":
                        name = m.group(2)
                    elif m.group(1).lower().startswith("filename"):
                        filename = m.group(2).split("''")[-1]
            elif key.strip().lower() == "content-type":
                ctype = value.strip()
        out.append(Entry(name=name, data=body, filename=filename, content_type=ctype))
    return out


def form(text: str, budget: Budget) -> dict[str, list[str]]:
    """application/x-www-form-urlencoded; field count bounded."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=budget.limits.max_entries)
    except ValueError:
        raise LimitExceeded(f"archive-entries: more than {budget.limits.max_entries} form fields") from None
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def zip_entries(data: bytes, budget: Budget) -> Iterator[Entry]:
    """Members of a zip, each inflated under the same caps as a content coding."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise Undecodable(f"corrupt zip: {exc}") from None
    if len(infos) > budget.limits.max_entries:
        raise LimitExceeded(f"archive-entries: zip has {len(infos)} members, more than {budget.limits.max_entries}")
    for info in infos:
        budget.tick()
        if info.is_dir():
            continue
        out = bytearray()
        try:
            with zf.open(info) as member:
                while True:
                    chunk = member.read(_CHUNK)
                    if not chunk:
                        break
                    out += chunk
                    budget.charge(len(chunk))
                    _check_ratio(len(out), max(info.compress_size, 1), budget.limits, f"zip member {info.filename!r}")
                    budget.tick()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, zlib.error) as exc:
            raise Undecodable(f"corrupt zip member {info.filename!r}: {exc}") from None
        yield Entry(name=info.filename, data=bytes(out), filename=info.filename)


def tar_entries(data: bytes, budget: Budget) -> Iterator[Entry]:
    """Members of an (already decompressed) tar, counted and charged."""
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise Undecodable(f"corrupt tar: {exc}") from None
    count = 0
    try:
        for member in tf:
            budget.tick()
            count += 1
            if count > budget.limits.max_entries:
                raise LimitExceeded(f"archive-entries: tar has more than {budget.limits.max_entries} members")
            if not member.isfile():
                continue
            f = tf.extractfile(member)
            body = f.read() if f is not None else b""
            budget.charge(len(body))
            yield Entry(name=member.name, data=body, filename=member.name)
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise Undecodable(f"corrupt tar: {exc}") from None


# --- runs of encoded bytes inside text ------------------------------------------------

_B64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9_-]{16,}={0,2}")
_HEX_RUN = re.compile(r"\b(?:[0-9a-fA-F]{2}){8,}\b")
_HAS_DIGIT = re.compile(r"\d")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


@dataclass
class Run:
    """An encoded run found in text: where it starts and the bytes it stands for."""

    offset: int
    encoding: str  # base64 | hex
    data: bytes


# from the start of a run only, and possessive: a long run without a break costs one pass
_WRAPPED = re.compile(r"(?<![A-Za-z0-9+/])(?:[A-Za-z0-9+/]{8,}+\r?\n)++[A-Za-z0-9+/]*+={0,2}")
_WRAPPED_MAYBE = re.compile(rb"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{8,}+(?:\r?\n|\\r\\n|\\n)[A-Za-z0-9+/]{8}")  # also as JSON escapes
_LINE_BREAK = re.compile(r"\r?\n")


def _wrapped(text: str, min_len: int) -> list[tuple[int, int, Run]]:
    """Base64 or hex wrapped in lines of one width (MIME, PEM, or any): each line alone is
    too short to decode to anything, or decodes to a slice too small to judge, so the
    block is joined and decoded whole. (start, end, run) per block; at least two lines of
    8 characters or more (`_WRAPPED_MAYBE` holds the implication for `maybe_encoded`)."""
    out: list[tuple[int, int, Run]] = []
    for m in _WRAPPED.finditer(text):
        parts = _LINE_BREAK.split(m.group(0))
        full, last = parts[:-1], parts[-1]
        width = len(full[0])
        if any(len(x) != width for x in full) or len(last.rstrip("=")) > width or (len(full) < 2 and len(last) < 8):
            continue
        joined = "".join(parts)
        if len(joined) < min_len:
            continue
        try:
            if not len(joined) % 2 and _HEX_ONLY.fullmatch(joined):
                run = Run(m.start(), "hex-lines", binascii.unhexlify(joined))
            else:
                run = Run(m.start(), "base64-lines", base64.b64decode(joined + "=" * (-len(joined.rstrip("=")) % 4)))
        except (binascii.Error, ValueError):
            continue
        out.append((m.start(), m.end(), run))
    return out


def encoded_runs(text: str, min_len: int) -> Iterator[Run]:
    """Base64 and hex runs of at least min_len characters, decoded, blocks of them
    wrapped in lines (`_wrapped`), and base85 runs (`_base85_runs`). Runs that are plain
    words (no digit and no case mix) are skipped: identifiers are not payloads."""
    blocks = _wrapped(text, min_len) if "\n" in text else []
    for _, _, run in blocks:
        yield run
    if len(text) >= B85_MIN:
        yield from _base85_runs(text)

    def inside(at: int) -> bool:
        return any(s <= at < e for s, e, _ in blocks)

    for m in _HEX_RUN.finditer(text):
        s = m.group(0)
        if len(s) >= min_len and not (blocks and inside(m.start())):
            raw = binascii.unhexlify(s)
            if len(raw) >= 64 or raw.isascii():  # short non-text hex is an id or a hash
                yield Run(m.start(), "hex", raw)
    for m in _B64_RUN.finditer(text):
        s = m.group(0)
        if len(s) < min_len or _HEX_RUN.fullmatch(s) or (blocks and inside(m.start())):
            continue
        core = s.rstrip("=")
        if _HAS_DIGIT.search(core) is None and (core.islower() or core.isupper()):
            continue  # words, paths and identifiers: encoded bytes mix cases or carry digits
        if _B32_ONLY.fullmatch(core):
            raw32 = _base32(core)
            if raw32 is not None:
                yield Run(m.start(), "base32", raw32)
                continue
        try:
            if "-" in core or "_" in core:
                raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
            else:
                raw = base64.b64decode(core + "=" * (-len(core) % 4))
        except (binascii.Error, ValueError):
            continue
        yield Run(m.start(), "base64", raw)


_B32_ONLY = re.compile(r"[A-Z2-7]+")
# base85 (RFC 1924, Python's b85encode): its alphabet, and the characters of it that no
# base64 or URL alphabet has; a stretch is base85 only when it holds some of the latter
_B85_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"
_B85_ONLY = b"!#$%&()*;<>?@^`{|}~"
_B85_MASK = bytes(0x78 if b in _B85_ALPHABET else 0x20 for b in range(256))
B85_MIN = 40  # characters: 32 bytes
_B85_MIN_MARKS = 3


def _b85_stretches(raw: bytes) -> Iterator[tuple[int, int]]:
    """Stretches of the base85 alphabet of B85_MIN characters or more that hold at least
    _B85_MIN_MARKS of its own characters: one translate and a find per stretch."""
    for i, end in _stretches(raw.translate(_B85_MASK), B85_MIN):
        r = raw[i:end]
        if len(r) - len(r.translate(None, _B85_ONLY)) >= _B85_MIN_MARKS:
            yield i, end


def _stretches(mask: bytes, min_len: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each stretch of "x" at least min_len long in a translated mask."""
    needle = b"x" * min_len
    i = mask.find(needle)
    while i != -1:
        end = mask.find(b" ", i + min_len)
        if end == -1:
            end = len(mask)
        yield i, end
        i = mask.find(needle, end)


def _base85_runs(text: str) -> Iterator[Run]:
    """Base85 runs that decode to text or a known format (text offsets: the alphabet is
    ASCII, so a stretch found in the UTF-8 bytes is found in the text by its content)."""
    raw = utf8(text)
    for s, e in _b85_stretches(raw):
        chunk = raw[s:e]
        try:
            data = base64.b85decode(chunk)
        except ValueError:
            continue
        if _meaningful(data):
            yield Run(text.find(chunk.decode("ascii")), "base85", data)


_HEX_ONLY = re.compile(r"[0-9a-fA-F]+")


def _base32(core: str) -> bytes | None:
    """Base32 (RFC 4648) of text or of a known format: what upper-case-and-digit runs that
    base64 reads as noise often are."""
    try:
        raw = base64.b32decode(core + "=" * (-len(core) % 8))
    except (binascii.Error, ValueError):
        return None
    return raw if _meaningful(raw) else None


_B64_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-"
# base64-alphabet bytes become "x", every other byte (non-ASCII included) a space
_RUN_MASK = bytes(0x78 if b in _B64_BYTES else 0x20 for b in range(256))
# the same, with line breaks raw or JSON-escaped ("\\", "\r", "\n") as part of a stretch
_LINES_MASK = bytes(0x78 if b in _B64_BYTES or b in b"\\\r\n" else 0x20 for b in range(256))
_HEX_CHARS = frozenset(b"0123456789abcdefABCDEF")
_HEX_BYTES = bytes(sorted(_HEX_CHARS))
_DIGITS = b"0123456789"


def utf8(text: str) -> bytes:
    """The UTF-8 bytes of a text that may hold lone surrogates (from JSON escapes); ASCII
    text, nearly every body, takes the encoder's fast path (4x faster than the handler's)."""
    return text.encode("ascii") if text.isascii() else text.encode("utf-8", "surrogatepass")


_BIG_TEXT = 64 * KiB  # from this size Hyperscan finds the long runs, not the translate walk
_RUN_WINDOWS = 4096  # window ends at most: past that the runs are long and the walk is cheaper


@functools.lru_cache(maxsize=8)
def _run_database(min_len: int) -> hyperscan.Database:
    """min_len characters of the base64 alphabet in a row: a window of a long run, reported
    at every end offset."""
    return database([b"[A-Za-z0-9+/=_\\-]{%d}" % min_len], literal=False, flags=[0])


def _long_runs(raw: bytes, min_len: int) -> list[tuple[int, int]] | None:
    """Every maximal run of at least min_len base64-alphabet bytes, as (start, end): a run
    of n bytes is n - min_len + 1 window ends in a row. None when there are so many
    windows that the translate walk is the cheaper way."""
    ends = match_ends(_run_database(min_len), raw, _RUN_WINDOWS)
    if ends is None:
        return None
    runs: list[tuple[int, int]] = []
    start = last = -2
    for end in ends:
        if end != last + 1:
            if last >= 0:
                runs.append((start, last))
            start = end - min_len
        last = end
    if last >= 0:
        runs.append((start, last))
    return runs


def _suspicious_run(r: bytes) -> bool:
    """A long run that can be encoded data: it carries a digit or mixes case, and is not a
    short hex id (ObjectIds, UUIDs, hashes)."""
    if len(r.translate(None, _DIGITS)) == len(r) and (r.islower() or r.isupper()):
        return False
    return not (len(r) < 128 and not len(r) % 2 and not r.translate(None, _HEX_BYTES) and not binascii.unhexlify(r).isascii())


def maybe_encoded(text: str, min_len: int, raw: bytes | None = None) -> bool:
    """False only when `encoded_runs` would certainly yield nothing: no run of the
    base64 alphabet that is long enough, carries a digit or mixes case, and is not a
    short hex id (ObjectIds, UUIDs, hashes); no wrapped lines; no base85 stretch. One
    C-level translate and one substring search per long run, so short words cost nothing
    (the alphabet is ASCII, so the UTF-8 bytes split exactly where the text does); past
    64 KiB one Hyperscan pass finds the runs (a third of the translate's time) unless
    they are long. `raw`: `utf8(text)`, when the caller made it."""
    if len(text) < min_len:
        return False
    raw = utf8(text) if raw is None else raw
    runs: Iterable[tuple[int, int]] | None = _long_runs(raw, min_len) if len(raw) >= _BIG_TEXT else None
    if runs is None:
        runs = _stretches(raw.translate(_RUN_MASK), min_len)
    return any(_suspicious_run(raw[s:e]) for s, e in runs) or _maybe_wrapped(raw) or _maybe_b85(raw)


def _maybe_b85(raw: bytes) -> bool:
    return len(raw) >= B85_MIN and next(_b85_stretches(raw), None) is not None


def _maybe_wrapped(raw: bytes) -> bool:
    """Two lines of the base64 alphabet in a row, the break raw or JSON-escaped: looked
    for only inside the stretches of alphabet and breaks long enough to hold them."""
    if b"\n" not in raw and b"\\n" not in raw:
        return False
    return any(_WRAPPED_MAYBE.search(raw, s, e) for s, e in _stretches(raw.translate(_LINES_MASK), 17))


def has_percent_escapes(text: str) -> bool:
    return "%" in text and _PCT.search(text) is not None  # the `in` test runs at memchr speed
