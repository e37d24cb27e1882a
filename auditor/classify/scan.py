"""Hyperscan block-mode databases and scans, shared by the detectors and the decoder.

One pass over a text reports every pattern of a database at C speed (~1 GB/s for
literals), where one Python regex or substring search per pattern would each walk the
text again. A scratch space serves one scan at a time, so each thread keeps its own.
"""

from __future__ import annotations

import threading

import hyperscan

_SCRATCH = threading.local()


def database(expressions: list[bytes], *, literal: bool, flags: int | list[int] = 0) -> hyperscan.Database:
    """A block-mode database whose pattern ids are the expressions' indices."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions), flags=flags, literal=literal)
    return db


def _scratch(db: hyperscan.Database) -> hyperscan.Scratch:
    spaces: dict[int, hyperscan.Scratch] | None = getattr(_SCRATCH, "spaces", None)
    if spaces is None:
        spaces = _SCRATCH.spaces = {}
    scratch = spaces.get(id(db))
    if scratch is None:
        scratch = spaces[id(db)] = hyperscan.Scratch(db)
    return scratch


def scan(db: hyperscan.Database, data: bytes) -> list[tuple[int, int]]:
    """Every (pattern id, end offset) of `db` in `data`, in order of end offset."""
    found: list[tuple[int, int]] = []
    db.scan(data, match_event_handler=_collect, context=found, scratch=_scratch(db))
    return found


def any_match(db: hyperscan.Database, data: bytes) -> bool:
    """Whether any pattern of `db` occurs in `data`: the scan stops at the first match."""
    try:
        db.scan(data, match_event_handler=_stop, scratch=_scratch(db))
    except hyperscan.ScanTerminated:
        return True
    return False


def match_ends(db: hyperscan.Database, data: bytes, cap: int) -> list[int] | None:
    """The end offset of every match of `db` in `data`, ascending; None once there are
    more than `cap` (the scan stops there: the caller has a cheaper way for so many)."""
    found: list[int] = []
    try:
        db.scan(data, match_event_handler=_collect_end, context=(found, cap), scratch=_scratch(db))
    except hyperscan.ScanTerminated:
        return None
    return found


def _collect_end(pattern: int, start: int, end: int, flags: int, context: tuple[list[int], int]) -> bool:
    found, cap = context
    found.append(end)
    return len(found) > cap


def _stop(pattern: int, start: int, end: int, flags: int, context: None) -> bool:
    return True


def _collect(pattern: int, start: int, end: int, flags: int, found: list[tuple[int, int]]) -> None:
    found.append((pattern, end))
