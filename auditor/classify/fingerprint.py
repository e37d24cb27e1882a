"""Dataset fingerprints: keyed hashes of normalised cells, with the ordinal of the row
each came from, so a payload holding two cells of one row is caught as training data
while the fingerprint file itself reveals no value.

The MAC is keyed BLAKE2b truncated to 64 bits (RFC 7693 keyed mode, a PRF like HMAC,
three times faster than HMAC-SHA256 in CPython, which matters at 50 MB/s). "Cell pairs
of a row" are kept as row ordinals shared by cells: the same test as storing every pair
digest, in O(cells) instead of O(cells x columns) space, and it yields the row count.
Cells that say nothing (short, numeric counts, booleans) and cells common to many rows
are left out, so "2021" and "true" never make a match.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import re
import struct
import unicodedata
from collections.abc import Iterator
from itertools import repeat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from auditor.errors import AuditorError

MAGIC = b"BAFP1\n"
STRIP = " '\".:!?()"
MIN_LEN = 4
_STOP = frozenset({"true", "false", "null", "none", "nan", "n/a", "yes", "no", "unknown", "other", "male", "female"})
_NUMERIC = re.compile(r"^[\d\s.,:/+-]*$")
_WS = re.compile(r"\s+")
_SEG = re.compile(r"(?:[\n\r\t,;|\"{}\[\]<>=&]|:\s)+")
_NGRAM_TEXT = 4096
_WORD = re.compile(r"[^\s,;|\"{}\[\]<>=&():]+")


def derive_key(raw: bytes) -> bytes:
    """The MAC key from a key file's bytes (any length, at least 16 bytes of it)."""
    raw = raw.strip()
    if len(raw) < 16:
        raise ValueError("key file must hold at least 16 bytes")
    return hashlib.blake2b(raw, digest_size=32, person=b"ba-fp-key").digest()


def key_id(key: bytes) -> str:
    """Names the key without revealing it, so a wrong key file is a clear error."""
    return hashlib.blake2b(b"key-id", key=key, digest_size=8).hexdigest()


def normalise(cell: str) -> str:
    """What equal cells share despite case, width and whitespace: NFKC, casefold, one space."""
    if not cell.isascii():
        cell = unicodedata.normalize("NFKC", cell)
    return _WS.sub(" ", cell.casefold()).strip(STRIP)


def informative(norm: str) -> bool:
    """A cell worth fingerprinting: long enough, not a stop word, not a small number."""
    if len(norm) < MIN_LEN or norm in _STOP:
        return False
    if _NUMERIC.match(norm):
        return sum(c.isdigit() for c in norm) >= 6
    return True


def digest(key: bytes, norm: str) -> bytes:
    return hashlib.blake2b(norm.encode("utf-8"), key=key, digest_size=8).digest()


class FingerprintHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = "boundary-auditor-fingerprints"
    version: int = 1
    mac: str = "blake2b-64-keyed"
    normalisation: str = "nfkc-casefold-ws-v1"
    key_id: str
    source: str
    rows: int
    records: int
    distinct: int
    dropped_common: int
    min_len: int
    max_len: int
    created: str


# --- reading data sets ---------------------------------------------------------------------


def _cells(value: Any) -> Iterator[str]:
    """Scalar leaves of a JSON record, as strings."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _cells(v)
    elif isinstance(value, list):
        for v in value:
            yield from _cells(v)
    elif value is None or isinstance(value, bool):
        return
    else:
        yield str(value)


def read_rows(path: Path) -> Iterator[list[str]]:
    """Rows of a CSV/TSV, JSONL or Parquet file as lists of cell strings; bad input is an AuditorError."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    try:
        fh = path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise AuditorError(f"cannot read data set: {exc.strerror}", file=str(path)) from None
    with fh:
        if suffix in (".jsonl", ".ndjson", ".json"):
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield list(_cells(json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise AuditorError(f"not JSON: {exc.msg}", file=str(path), line=lineno, fix="one JSON object per line") from None
            return
        try:
            sample = fh.read(65536)
            fh.seek(0)
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",\t;|") if sample else csv.excel
        except csv.Error:
            dialect = csv.excel_tab if suffix == ".tsv" else csv.excel
        reader = csv.reader(fh, dialect)
        try:
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                yield row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise AuditorError(f"bad CSV: {exc}", file=str(path), line=reader.line_num, fix="a UTF-8 CSV with a header row") from None


def _parquet_rows(path: Path) -> Iterator[list[str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise AuditorError(f"not a Parquet file: {exc}", file=str(path)) from None
    for batch in pf.iter_batches(batch_size=10_000):
        for record in batch.to_pylist():
            yield list(_cells(record))


# --- building --------------------------------------------------------------------------------


@dataclass
class BuildResult:
    header: FingerprintHeader
    path: Path


def build(data: Path, out: Path, key_file: Path) -> BuildResult:
    """Write `out`: header + sorted (digest, row) records for every informative cell of `data`."""
    try:
        key = derive_key(key_file.read_bytes())
    except OSError as exc:
        raise AuditorError(f"cannot read key file: {exc.strerror}", file=str(key_file), fix="pass --key-file with 16+ secret bytes") from None
    except ValueError as exc:
        raise AuditorError(str(exc), file=str(key_file), fix="e.g. head -c 32 /dev/urandom > KEY") from None
    pairs: list[tuple[bytes, int]] = []
    rows = 0
    max_len = 0
    for row in read_rows(data):
        seen: set[bytes] = set()
        for cell in row:
            norm = normalise(cell)
            if informative(norm):
                d = digest(key, norm)
                if d not in seen:
                    seen.add(d)
                    pairs.append((d, rows))
                    max_len = max(max_len, len(norm))
        rows += 1
    pairs.sort()
    per_digest: dict[bytes, int] = {}
    for d, _ in pairs:
        per_digest[d] = per_digest.get(d, 0) + 1
    common = max(3, rows // 1000)
    kept = [(d, r) for d, r in pairs if per_digest[d] <= common]
    dropped = len({d for d, n in per_digest.items() if n > common})
    header = FingerprintHeader(
        key_id=key_id(key),
        source=data.name,
        rows=rows,
        records=len(kept),
        distinct=len(per_digest) - dropped,
        dropped_common=dropped,
        min_len=MIN_LEN,
        max_len=max_len,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    blob = bytearray()
    for d, r in kept:
        blob += d
        blob += struct.pack(">I", r)
    out.write_bytes(MAGIC + header.model_dump_json().encode() + b"\n" + bytes(blob))
    return BuildResult(header=header, path=out)


# --- matching --------------------------------------------------------------------------------


@dataclass
class FingerprintSet:
    """A loaded fingerprint file with its key: membership in C, rows by binary search."""

    header: FingerprintHeader
    key: bytes
    records: bytes  # sorted 12-byte (digest, row) records
    cells: frozenset[bytes] = field(default_factory=frozenset)

    @property
    def digests(self) -> _DigestView:
        return _DigestView(self.records)

    def rows_of(self, d: bytes) -> list[int]:
        view = self.digests
        i = bisect.bisect_left(view, d)
        out = []
        while i < len(view) and view[i] == d:
            out.append(struct.unpack_from(">I", self.records, i * 12 + 8)[0])
            i += 1
        return out


class _DigestView:
    """The sorted digests of a record blob as a sequence, for bisect."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // 12

    def __getitem__(self, i: int) -> bytes:
        return self.blob[i * 12 : i * 12 + 8]


def load(path: Path, key_file: Path) -> FingerprintSet:
    """Read a fingerprint file; a wrong key or a foreign file is an AuditorError, not silence."""
    try:
        raw = path.read_bytes()
        key = derive_key(key_file.read_bytes())
    except OSError as exc:
        raise AuditorError(f"cannot read: {exc.strerror}", file=exc.filename) from None
    except ValueError as exc:
        raise AuditorError(str(exc), file=str(key_file)) from None
    if not raw.startswith(MAGIC):
        raise AuditorError("not a fingerprint file", file=str(path), fix="make one with `auditor fingerprint DATA -o FILE --key-file K`")
    head, _, blob = raw[len(MAGIC) :].partition(b"\n")
    try:
        header = FingerprintHeader.model_validate_json(head)
    except ValueError:
        raise AuditorError("corrupt fingerprint header", file=str(path), line=2) from None
    if header.key_id != key_id(key):
        raise AuditorError("the key file does not match the one this fingerprint file was made with", file=str(key_file), fix="pass the --key-file used by `auditor fingerprint`")
    if len(blob) != header.records * 12:
        raise AuditorError(f"fingerprint file truncated: {len(blob)} bytes of records, expected {header.records * 12}", file=str(path))
    cells = frozenset(blob[i : i + 8] for i in range(0, len(blob), 12))
    return FingerprintSet(header=header, key=key, records=blob, cells=cells)


_ASCII_WS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what \s and str.split() take as space in ASCII text
_SEG_BYTES = b"\n\r\t,;|\"{}[]<>=&"
_WORD_BYTES = b",;|\"{}[]<>=&():" + _ASCII_WS.encode()
# _SEG's single-character delimiters become "\n"; _WORD's separators (and all ASCII space) become " "
_TO_SEG = bytes(0x0A if b in _SEG_BYTES else b for b in range(256))
_TO_WORD = bytes(0x20 if b in _WORD_BYTES else b for b in range(256))
_COLON_WS = re.compile(r":\s")


def _ascii_parts(low: str) -> tuple[list[str], list[str] | None]:
    """_SEG.split and _WORD.findall of ASCII text by C-level translate and split (the
    regexes cost ~30 ns a character; this ~3). Consecutive delimiters give empty strings
    here where the regex gives none: the caller drops "" anyway."""
    seg_text = _COLON_WS.sub("\n", low) if ":" in low else low
    segs = seg_text.encode("ascii").translate(_TO_SEG).decode("ascii").split("\n")
    words = low.encode("ascii").translate(_TO_WORD).decode("ascii").split() if " " in low else None
    return segs, words


def candidates(text: str) -> set[str]:
    """Every string in `text` that could be a cell: delimited segments and words, normalised."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    low = text.casefold()
    if "  " in low:
        low = re.sub(r" {2,}", " ", low)
    if low.isascii():
        segs, raw_words = _ascii_parts(low)
    else:
        segs, raw_words = _SEG.split(low), (_WORD.findall(low) if " " in low else None)
    out = set(map(str.strip, set(segs), repeat(STRIP)))
    if raw_words is not None:
        if len(low) > _NGRAM_TEXT:
            # no n-grams: strip each distinct word once (a big body repeats most of its words)
            out.update(map(str.strip, set(raw_words), repeat(STRIP)))
            return out
        words = list(map(str.strip, raw_words, repeat(STRIP)))
        out.update(words)
        if len(low) <= _NGRAM_TEXT:
            # a multi-word cell inside a sentence: "failed for alice smith at ..."
            out.update(f"{a} {b}" for a, b in zip(words, words[1:]))
            out.update(f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:]))
    return out


@dataclass
class Match:
    rows: int  # rows with two or more of their cells present
    cells: int  # distinct fingerprinted cells present
    path: str | None


def hits(fps: FingerprintSet, tokens: set[str]) -> dict[bytes, str]:
    """Fingerprinted digest -> the token that made it, for every token that is a cell.

    One pass, one keyed BLAKE2b-64 per token that can be a cell: the key block is hashed
    once and copied, and tokens outside the header's length range or short digit runs
    (never fingerprinted, see `informative`) are skipped. The pass touches each token
    once: on big bodies the cost is memory, not arithmetic."""
    copy = hashlib.blake2b(key=fps.key, digest_size=8).copy
    cells = fps.cells
    lo, hi = fps.header.min_len, fps.header.max_len
    out: dict[bytes, str] = {}
    for t in tokens:
        n = len(t)
        if lo <= n <= hi and not (n < 6 and t.isdigit()):
            h = copy()
            h.update(t.encode())
            d = h.digest()
            if d in cells:
                out[d] = t
    return out


def match(fps: FingerprintSet, found: list[tuple[str, set[str]]]) -> Match | None:
    """Rows of the data set that the candidates (path, cells) hold two cells of."""
    tokens: set[str] = set()
    for _, toks in found:
        tokens.update(toks)
    tokens.discard("")
    by_digest = hits(fps, tokens)
    if len(by_digest) < 2:
        return None
    per_row: dict[int, int] = {}
    row_cell: dict[int, str] = {}
    for d, cell in by_digest.items():
        for r in fps.rows_of(d):
            per_row[r] = per_row.get(r, 0) + 1
            row_cell.setdefault(r, cell)
    rows = [r for r, n in per_row.items() if n >= 2]
    if not rows:
        return None
    first_cell = row_cell[min(rows)]
    path = next((p for p, toks in found if first_cell in toks), None)
    return Match(rows=len(rows), cells=len(by_digest), path=path)


def dump_header(path: Path) -> dict[str, Any]:
    """The header of a fingerprint file, for `auditor fingerprint` to print."""
    raw = path.read_bytes()[:4096]
    head = raw[len(MAGIC) :].partition(b"\n")[0]
    return dict(json.load(io.BytesIO(head)))
