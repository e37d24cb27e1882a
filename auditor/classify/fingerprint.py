"""Dataset fingerprints: keyed hashes of normalised cells, with the ordinal of the row
each came from, so a payload holding two cells of one row is caught as training data
while the fingerprint file itself reveals no value.

The MAC (format 2) is AES-256-CMAC truncated to 64 bits (NIST SP 800-38B), computed
for every token of a body at once (`cmac.py`): a 10 MB body holds a million candidate
tokens, and one keyed hash per token in a Python loop was the whole cost of a big body.
A big ASCII text is tokenised in place by numpy (`spans`), so no Python string is made
per token: the 10 MB body of benchmarks/classify.py against 1M cells is classified at
~51-58 MB/s wall clock on a shared 2-core machine at load ~1.5-1.8 (was ~7, then ~48-52
in the same runs), about half of it tokenising and hashing.
Format 1 files (keyed BLAKE2b) are refused with the command that rebuilds them. "Cell
pairs of a row" are kept as row ordinals shared by cells: the same test as storing every
pair digest, in O(cells) instead of O(cells x columns) space, and it yields the row count.
Cells that say nothing (short, numeric counts, booleans) and cells common to many rows
are left out, so "2021" and "true" never make a match.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from auditor.classify.cmac import PAD, Cmac64
from auditor.errors import AuditorError

MAGIC = b"BAFP2\n"
_MAGIC_V1 = b"BAFP1\n"
_REBUILD = "rebuild it with `auditor fingerprint DATA -o FILE --key-file K`"
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


def _tokens_buffer(tokens: list[str]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Tokens as one padded UTF-8 buffer with (start, length) of each, for `Cmac64.many`."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in tokens]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    starts = np.zeros(len(encoded), dtype=np.int64)
    if len(encoded) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    return b"".join(encoded) + bytes(PAD), starts, lengths


def digests(key: bytes, norms: list[str]) -> np.ndarray:
    """The MAC of each normalised cell, as uint64 (the big-endian value of its 8 bytes)."""
    buf, starts, lengths = _tokens_buffer(norms)
    return Cmac64(key).many(buf, starts, lengths)


class FingerprintHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = "boundary-auditor-fingerprints"
    version: int = 2
    mac: str = "aes256-cmac-64"
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


_RECORD = np.dtype([("d", ">u8"), ("r", ">u4")])  # 12 bytes: digest, row ordinal


@dataclass
class BuildResult:
    header: FingerprintHeader
    path: Path


def build(data: Path, out: Path, key_file: Path) -> BuildResult:
    """Write `out`: header + sorted (digest, row) records for every informative cell of `data`.
    Cells common to many rows (more than max(3, rows/1000)) are left out."""
    try:
        key = derive_key(key_file.read_bytes())
    except OSError as exc:
        raise AuditorError(f"cannot read key file: {exc.strerror}", file=str(key_file), fix="pass --key-file with 16+ secret bytes") from None
    except ValueError as exc:
        raise AuditorError(str(exc), file=str(key_file), fix="e.g. head -c 32 /dev/urandom > KEY") from None
    norms: list[str] = []
    row_of: list[int] = []
    rows = 0
    max_len = 0
    for row in read_rows(data):
        seen: set[str] = set()
        for cell in row:
            norm = normalise(cell)
            if informative(norm) and norm not in seen:
                seen.add(norm)
                norms.append(norm)
                row_of.append(rows)
                max_len = max(max_len, len(norm))
        rows += 1
    d = digests(key, norms)
    r = np.array(row_of, dtype=np.uint32)
    order = np.lexsort((r, d))
    d, r = d[order], r[order]
    if len(d):
        # one record per (digest, row): two cells of a row with one digest count once
        first = np.ones(len(d), dtype=bool)
        first[1:] = (d[1:] != d[:-1]) | (r[1:] != r[:-1])
        d, r = d[first], r[first]
    uniq, counts = np.unique(d, return_counts=True)
    common = max(3, rows // 1000)
    keep = np.repeat(counts <= common, counts)
    dropped = int((counts > common).sum())
    records = np.empty(int(keep.sum()), dtype=_RECORD)
    records["d"] = d[keep]
    records["r"] = r[keep]
    header = FingerprintHeader(
        key_id=key_id(key),
        source=data.name,
        rows=rows,
        records=len(records),
        distinct=len(uniq) - dropped,
        dropped_common=dropped,
        min_len=MIN_LEN,
        max_len=max_len,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    out.write_bytes(MAGIC + header.model_dump_json().encode() + b"\n" + records.tobytes())
    return BuildResult(header=header, path=out)


# --- matching --------------------------------------------------------------------------------


class FingerprintSet:
    """A loaded fingerprint file with its key. Membership of many digests at once: a bit
    table on each digest's top bits (64 to 128 bits per digest, at most 32 MiB) rules out
    nearly every token, a binary search over the sorted digests settles the rest."""

    def __init__(self, header: FingerprintHeader, key: bytes, records: bytes):
        self.header = header
        self.key = key
        table = np.frombuffer(records, dtype=_RECORD)
        self.digests = table["d"].astype(np.uint64)
        self.rows = table["r"].astype(np.int64)
        bits = min(28, max(10, int(len(self.digests) * 64).bit_length()))
        self._shift = np.uint64(64 - bits)
        table = np.zeros(1 << bits, dtype=bool)
        table[self.digests >> self._shift] = True
        self._table = np.packbits(table, bitorder="little")
        self.mac = Cmac64(key)

    def contains(self, d: np.ndarray) -> np.ndarray:
        """Indices into `d` of the digests in the set."""
        slot = d >> self._shift
        # np.take: a gather ~1.7x faster than indexing with an array (the table lookups are cache misses)
        bits = (np.take(self._table, slot >> np.uint64(3)) >> (slot & np.uint64(7)).astype(np.uint8)) & np.uint8(1)
        maybe = np.flatnonzero(bits.view(np.bool_))
        if not len(maybe):
            return maybe
        q = d[maybe]
        i = np.minimum(np.searchsorted(self.digests, q), len(self.digests) - 1)
        return maybe[self.digests[i] == q]

    def rows_of(self, found: list[bytes]) -> list[list[int]]:
        """The rows each of these (present) digests came from."""
        v = np.array([int.from_bytes(d, "big") for d in found], dtype=np.uint64)
        lo, hi = np.searchsorted(self.digests, v, "left").tolist(), np.searchsorted(self.digests, v, "right").tolist()
        return [self.rows[a:b].tolist() for a, b in zip(lo, hi)]


def load(path: Path, key_file: Path) -> FingerprintSet:
    """Read a fingerprint file; a wrong key or a foreign file is an AuditorError, not silence."""
    try:
        raw = path.read_bytes()
        key = derive_key(key_file.read_bytes())
    except OSError as exc:
        raise AuditorError(f"cannot read: {exc.strerror}", file=exc.filename) from None
    except ValueError as exc:
        raise AuditorError(str(exc), file=str(key_file)) from None
    if raw.startswith(_MAGIC_V1):
        raise AuditorError("fingerprint file of format 1 (keyed BLAKE2b), which this auditor no longer reads", file=str(path), fix=_REBUILD)
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
    if header.version != 2 or header.mac != "aes256-cmac-64":
        raise AuditorError(f"fingerprint file of format {header.version} ({header.mac}), which this auditor does not read", file=str(path), fix=_REBUILD)
    return FingerprintSet(header=header, key=key, records=blob)


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


# --- big ASCII texts: the same cells, found in place by numpy ------------------------------------

# what each byte is, for the tokeniser below (ASCII texts only)
_F_SEG, _F_WORD, _F_STRIP, _F_WS, _F_COLON = 1, 2, 4, 8, 16  # _F_COLON is _F_WS shifted left once (see spans)
_CLASS = bytes(
    (_F_SEG if b in _SEG_BYTES else 0)
    | (_F_WORD if b in _WORD_BYTES else 0)
    | (_F_STRIP if chr(b) in STRIP else 0)
    | (_F_WS if chr(b) in _ASCII_WS else 0)
    | (_F_COLON if b == 0x3A else 0)
    for b in range(256)
)
_STRIP_BYTES = STRIP.encode()
_STRIP_ROUNDS = 16  # strip runs longer than this (rare) finish in Python


@dataclass
class Spans:
    """The candidate cells of a big ASCII text, left in place: (start, length) of every
    segment and word of `candidates()` in the normalised bytes, stripped, with repeats."""

    buf: bytes  # lower case, runs of spaces made one, PAD zero bytes after the text
    starts: np.ndarray
    lengths: np.ndarray

    def token(self, i: int) -> str:
        s = int(self.starts[i])
        return self.buf[s : s + int(self.lengths[i])].decode("ascii")


def false_runs(sep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of False in a bool array, from one pass for the places
    where the value changes (they alternate: a run's start, its end, the next start...)."""
    n = len(sep)
    edges = np.flatnonzero(sep[1:] != sep[:-1]) + 1
    if n and not sep[0]:
        starts, ends = np.concatenate((np.zeros(1, dtype=edges.dtype), edges[1::2])), edges[0::2]
    else:
        starts, ends = edges[0::2], edges[1::2]
    if len(ends) < len(starts):
        ends = np.concatenate((ends, np.array([n], dtype=edges.dtype)))
    return starts, ends


def _strip(low: bytes, cls: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """str.strip(STRIP) of every span [a, b), in place: a few vector steps, then Python
    for the spans still inside a long run of strip characters."""
    todo = np.flatnonzero(cls[a] & _F_STRIP)
    for _ in range(_STRIP_ROUNDS):
        if not len(todo):
            break
        a[todo] += 1
        at = a[todo]
        todo = todo[at < b[todo]]
        todo = todo[(cls[a[todo]] & _F_STRIP) != 0]
    for i in todo:
        a[i] = b[i] - len(low[a[i] : b[i]].lstrip(_STRIP_BYTES))
    todo = np.flatnonzero(cls[b - 1] & _F_STRIP)
    todo = todo[a[todo] < b[todo]]
    for _ in range(_STRIP_ROUNDS):
        if not len(todo):
            break
        b[todo] -= 1
        todo = todo[a[todo] < b[todo]]
        todo = todo[(cls[b[todo] - 1] & _F_STRIP) != 0]
    for i in todo:
        b[i] = a[i] + len(low[a[i] : b[i]].rstrip(_STRIP_BYTES))


def spans(text: str, lowered: str | None = None, low_data: bytes | None = None) -> Spans:
    """`candidates(text)` of an ASCII text longer than _NGRAM_TEXT (no n-grams), as spans:
    the same delimiters, space folding and strip, over bytes at numpy speed. `lowered`:
    `text.lower()` when the caller has it already; `low_data`, its bytes."""
    low = low_data if low_data is not None else (text.lower() if lowered is None else lowered).encode("ascii")
    u = np.frombuffer(low, dtype=np.uint8)
    space = u == 0x20
    second = space[1:] & space[:-1]  # a space after a space (numpy: `b"  " in low` is slower)
    if second.any():
        keep = np.ones(len(u), dtype=bool)
        keep[1:] = ~second
        low = u[keep].tobytes()
    cls = np.frombuffer(low.translate(_CLASS), dtype=np.uint8)
    seg = (cls & _F_SEG) != 0
    if b":" in low:
        colon_ws = ((cls[:-1] >> 1) & cls[1:] & _F_WS) != 0  # _F_COLON >> 1 == _F_WS: a colon, then space
        seg[:-1] |= colon_ws
        seg[1:] |= colon_ws
    a, b = false_runs(seg)
    if b" " in low:
        wa, wb = false_runs((cls & _F_WORD) != 0)
        a, b = np.concatenate((a, wa)), np.concatenate((b, wb))
    _strip(low, cls, a, b)
    return Spans(low + bytes(PAD), a, b - a)


Candidates = set[str] | Spans


def cells_of(text: str, lowered: str | None = None, low_data: bytes | None = None) -> Candidates:
    """The candidate cells of a text: `candidates()`, or for a big ASCII text the same
    cells as `Spans`, hashed in place without a Python string per token (`lowered`:
    `text.lower()`, when the caller made it; `low_data`, its bytes)."""
    if len(text) > _NGRAM_TEXT and text.isascii():
        return spans(text, lowered, low_data)
    return candidates(text)


# --- matching ------------------------------------------------------------------------------


@dataclass
class Match:
    rows: int  # rows with two or more of their cells present
    cells: int  # distinct fingerprinted cells present
    path: str | None


def _found(fps: FingerprintSet, d: np.ndarray) -> list[tuple[int, bytes]]:
    """(index, digest bytes) of the digests in `d` that are in the set."""
    return [(int(i), int(d[i]).to_bytes(8, "big")) for i in fps.contains(d)]


def hits(fps: FingerprintSet, tokens: set[str]) -> dict[bytes, str]:
    """Fingerprinted digest -> the token that made it, for every token that is a cell.

    One MAC call for all tokens; tokens outside the header's length range or short digit
    runs (never fingerprinted, see `informative`) are not hashed."""
    lo, hi = fps.header.min_len, fps.header.max_len
    toks = [t for t in tokens if lo <= len(t) <= hi and not (len(t) < 6 and t.isdigit())]
    buf, starts, lengths = _tokens_buffer(toks)
    return {d: toks[i] for i, d in _found(fps, fps.mac.many(buf, starts, lengths))}


_HIGH_BITS = np.array([sum(0x80 << (8 * k) for k in range(n)) for n in range(9)], dtype=np.uint64)  # top bit of each of n bytes


def span_hits(fps: FingerprintSet, sp: Spans) -> dict[bytes, str]:
    """`hits` for the cells of a big text, with the same length and digit-run rules."""
    lengths = sp.lengths
    keep = (lengths >= fps.header.min_len) & (lengths <= fps.header.max_len)
    short = np.flatnonzero(keep & (lengths < 6))
    if len(short):
        # all-digit tokens of under 6 bytes, eight bytes at a time: byte x ^ 0x30 is a digit
        # exactly when it is below 10, i.e. neither it nor x + 0x76 has its top bit set
        words = np.ndarray(shape=(len(sp.buf) - 7,), dtype="<u8", buffer=sp.buf, strides=(1,))
        x = words[sp.starts[short]] ^ np.uint64(0x3030303030303030)
        high = ((x + np.uint64(0x7676767676767676)) | x) & _HIGH_BITS[lengths[short]]
        keep[short[high == 0]] = False
    idx = np.flatnonzero(keep)
    d = fps.mac.many(sp.buf, sp.starts[idx], lengths[idx])
    return {dig: sp.token(int(idx[i])) for i, dig in _found(fps, d)}


def match(fps: FingerprintSet, found: list[tuple[str, Candidates]]) -> Match | None:
    """Rows of the data set that the candidates (path, cells) hold two cells of."""
    small: set[str] = set()
    for _, toks in found:
        if isinstance(toks, set):
            small.update(toks)
    small.discard("")
    by_digest = hits(fps, small)
    where: list[tuple[str, set[str]]] = []  # (path, its cells that are fingerprinted, or all of them)
    for p, toks in found:
        if isinstance(toks, Spans):
            h = span_hits(fps, toks)
            by_digest.update(h)
            where.append((p, set(h.values())))
        else:
            where.append((p, toks))
    if len(by_digest) < 2:
        return None
    per_row: dict[int, int] = {}
    row_cell: dict[int, str] = {}
    for cell, rows_of_cell in zip(by_digest.values(), fps.rows_of(list(by_digest))):
        for r in rows_of_cell:
            per_row[r] = per_row.get(r, 0) + 1
            row_cell.setdefault(r, cell)
    rows = [r for r, n in per_row.items() if n >= 2]
    if not rows:
        return None
    first_cell = row_cell[min(rows)]
    path = next((p for p, cells in where if first_cell in cells), None)
    return Match(rows=len(rows), cells=len(by_digest), path=path)


def dump_header(path: Path) -> dict[str, Any]:
    """The header of a fingerprint file, for `auditor fingerprint` to print."""
    raw = path.read_bytes()[:4096]
    head = raw[len(MAGIC) :].partition(b"\n")[0]
    return dict(json.load(io.BytesIO(head)))
