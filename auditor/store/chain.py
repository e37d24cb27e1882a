"""Per-sensor hash chains over RFC 8785 canonical JSON.

Each sensor appends to its own chain (sensor id, sequence, previous hash), so
writers never contend on one global chain, and a deleted, edited, reordered or
inserted record breaks the chain at a place `verify` can name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
import rfc8785
from pydantic import BaseModel

GENESIS = "0" * 64
_SUPPLEMENTARY = re.compile(rb"[\xf0-\xf4]")  # lead bytes of 4-byte UTF-8: outside the BMP


def canonical_json(doc: Any) -> bytes:
    """RFC 8785 bytes. orjson's sorted output is identical for float-free documents
    whose keys are in the Basic Multilingual Plane (the schema has no floats);
    anything with a supplementary character falls back to the reference encoder,
    whose key order follows UTF-16 code units."""
    out = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    if not out.isascii() and _SUPPLEMENTARY.search(out):
        return rfc8785.dumps(doc)
    return out


def json_doc(model: BaseModel) -> Any:
    """A model as plain JSON data, every field kept. pydantic's JSON serialiser then
    orjson is ~3x faster than `model_dump(mode="json")`, and any exclusion option
    (none, defaults) costs more than the bytes it saves."""
    return orjson.loads(model.model_dump_json())


def record_hash(sensor_id: str, seq: int, prev_hash: str, body: bytes) -> str:
    """The link: what was recorded, by whom, where in that sensor's chain."""
    h = hashlib.sha256()
    h.update(canonical_json({"sensor_id": sensor_id, "seq": seq, "prev": prev_hash}))
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


class Link:
    """One chained record as the backends store it."""

    __slots__ = ("sensor_id", "seq", "kind", "record_id", "time_us", "body", "prev_hash", "hash")

    def __init__(
        self, sensor_id: str, seq: int, kind: str, record_id: str, time_us: int, body: bytes, prev_hash: str, hash_: str
    ) -> None:
        self.sensor_id = sensor_id
        self.seq = seq
        self.kind = kind
        self.record_id = record_id
        self.time_us = time_us
        self.body = body
        self.prev_hash = prev_hash
        self.hash = hash_

    def row(self) -> tuple[str, int, str, str, int, bytes, str, str]:
        return (self.sensor_id, self.seq, self.kind, self.record_id, self.time_us, self.body, self.prev_hash, self.hash)


def link(records: list[tuple[str, str, str, int, Any]], heads: dict[str, tuple[int, str]]) -> list[Link]:
    """Chain (sensor_id, kind, record_id, time_us, json-ready doc) records onto the
    given heads (sensor -> (last seq, last hash)); `heads` is advanced in place."""
    out: list[Link] = []
    for sensor_id, kind, record_id, time_us, doc in records:
        seq, prev = heads.get(sensor_id, (0, GENESIS))
        seq += 1
        body = canonical_json(doc)
        digest = record_hash(sensor_id, seq, prev, body)
        heads[sensor_id] = (seq, digest)
        out.append(Link(sensor_id, seq, kind, record_id, time_us, body, prev, digest))
    return out
