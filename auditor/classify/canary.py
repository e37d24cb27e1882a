"""Canary records: synthetic rows with unique tokens to plant in training data. A token
seen anywhere in egress means training data left, whatever path it took.

Tokens are `ba-canary-` + 24 lowercase hex digits: unchanged by URL encoding, JSON
escaping and case folding, and matched by one keyword of the classifier's pass. The
token list file (one token a line) tells a sighting of *our* canary from a look-alike.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import hyperscan

from auditor.classify.detectors import CANARY_PREFIX, CANARY_RE
from auditor.classify.scan import database, scan
from auditor.errors import AuditorError

_FIRST = ("Avery", "Blake", "Casey", "Devon", "Emery", "Finley", "Harper", "Jordan", "Kendall", "Logan", "Morgan", "Quinn", "Reese", "Rowan", "Sawyer", "Taylor")
_LAST = ("Abernathy", "Bellweather", "Castellano", "Drummond", "Esterhazy", "Fairbanks", "Galloway", "Holloway", "Ingram", "Jessup", "Kingsley", "Lockhart", "Merriweather", "Northcott", "Okonkwo", "Pemberton")
FIELDS = ("canary_id", "name", "email", "phone", "city", "note")
TOKENS_HEADER = "# boundary-auditor canary tokens v1"


def new_token() -> str:
    return CANARY_PREFIX + secrets.token_hex(12)


def records(count: int) -> list[dict[str, str]]:
    """`count` synthetic people, each carrying its own token in the id, the email and the note."""
    out = []
    for _ in range(count):
        tok = new_token()
        suffix = tok[-6:]
        first, last = secrets.choice(_FIRST), secrets.choice(_LAST)
        out.append(
            {
                "canary_id": tok,
                "name": f"{first} {last}-{suffix}",
                "email": f"{tok}@example.invalid",
                "phone": f"+1-555-01{secrets.randbelow(100):02d}",
                "city": f"Canaryville {suffix}",
                "note": f"synthetic canary record {tok}; its presence outside the cluster is a data leak",
            }
        )
    return out


def render(rows: list[dict[str, str]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@dataclass
class CanaryResult:
    records: int
    out: Path | None
    tokens: Path
    text: str


def make(count: int, fmt: str, out: Path | None, tokens_out: Path | None) -> CanaryResult:
    """Write the records (to `out`, or return them for stdout) and always the token list."""
    if count < 1:
        raise AuditorError("--count must be at least 1", fix="e.g. --count 20")
    if fmt not in ("csv", "jsonl"):
        raise AuditorError(f"unknown format {fmt!r}", fix="--format csv or --format jsonl")
    rows = records(count)
    text = render(rows, fmt)
    tokens = tokens_out or (out.with_name(out.name + ".tokens") if out else Path("canaries.tokens"))
    try:
        if out is not None:
            out.write_text(text)
        tokens.write_text(TOKENS_HEADER + "\n" + "".join(r["canary_id"] + "\n" for r in rows))
    except OSError as exc:
        raise AuditorError(f"cannot write: {exc.strerror}", file=exc.filename) from None
    return CanaryResult(records=count, out=out, tokens=tokens, text=text)


@dataclass(frozen=True)
class CanarySet:
    tokens: frozenset[str]
    source: str


def load(path: Path) -> CanarySet:
    """A token list written by `auditor canary` (or any file of tokens, one a line)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditorError(f"cannot read canary tokens: {exc}", file=str(path)) from None
    tokens = set()
    for n, line in enumerate(lines, 1):
        s = line.strip().lower()
        if not s or s.startswith("#"):
            continue
        if not CANARY_RE.fullmatch(s):
            raise AuditorError(f"not a canary token: {mask_token(s)}", file=str(path), line=n, fix="use the .tokens file `auditor canary` wrote")
        tokens.add(s)
    return CanarySet(tokens=frozenset(tokens), source=str(path))


PART = 12  # hex digits of a token that name it: 16^12 leaves no chance match among thousands


def parts_in(canaries: CanarySet, data: bytes) -> list[tuple[int, str]]:
    """Pieces of known tokens in `data`, each PART hex digits or more in any case, without
    the prefix: what is left of a token split across requests or fields. (end offset,
    token) for the first sighting of each piece, so a hostile body costs one C-speed pass."""
    tokens, db = _parts_db(canaries.tokens)
    if db is None:
        return []
    found = scan(db, data)
    return [(end, tokens[i // _WINDOWS]) for i, end in found]


_WINDOWS = 24 - PART + 1  # windows of a token's hex digits


@functools.lru_cache(maxsize=4)
def _parts_db(tokens: frozenset[str]) -> tuple[list[str], hyperscan.Database | None]:
    ordered = sorted(tokens)
    hexes = [t[len(CANARY_PREFIX) :] for t in ordered]
    windows = [h[i : i + PART].encode() for h in hexes for i in range(_WINDOWS)]
    if not windows:
        return ordered, None
    flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH
    return ordered, database(windows, literal=True, flags=flags)


def mask_token(tok: str) -> str:
    """Enough of a token to find it in the token list, not enough to forge a sighting report."""
    return tok[: len(CANARY_PREFIX) + 6] + "…" if tok.startswith(CANARY_PREFIX) else tok[:8] + "…"
