"""Per-sensor hash chains over RFC 8785 canonical JSON.

Each sensor appends to its own chain (sensor id, sequence, previous hash), so
writers never contend on one global chain, and a deleted, edited, reordered or
inserted record breaks the chain at a place `verify` can name.

Writing is the store's hot path: `canonical_model` makes each record's bytes in one
orjson pass, and those same bytes are hashed and stored; `link` hashes them with
the header `record_hash` defines, which is what `verify` recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import rfc8785
from pydantic import BaseModel

GENESIS = "0" * 64
_SUPPLEMENTARY = re.compile(rb"[\xf0-\xf4]")  # lead bytes of 4-byte UTF-8: outside the BMP
_MODEL_JSON = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z
_MINUTE = timedelta(minutes=1)

Record = tuple[str, str, str, int, bytes]
"""(sensor_id, kind, record_id, time_us, canonical JSON body): a record before chaining."""
Row = tuple[str, int, str, str, int, bytes, str, str]
"""(sensor_id, seq, kind, record_id, time_us, body, prev_hash, hash): a chained record as the backends store it."""


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


def canonical_model(model: BaseModel) -> bytes:
    """`canonical_json(json_doc(model))` in one pass: orjson writes each model's fields
    straight from its `__dict__`, sorted, instead of pydantic writing JSON that orjson
    parses back and writes again (about 3x faster; the store's hot path). What that pass
    cannot reproduce byte for byte (see `_model_shape`), and any supplementary character,
    takes the two-pass way."""
    try:
        out = orjson.dumps(model, default=_model_fields, option=_MODEL_JSON)
    except orjson.JSONEncodeError:  # an int past 64 bits, a lone surrogate, a model `_model_shape` refuses
        return canonical_json(json_doc(model))
    if not out.isascii() and _SUPPLEMENTARY.search(out):
        return canonical_json(json_doc(model))
    return out


def _model_fields(obj: object) -> dict[str, Any]:
    """orjson's `default` for a model: its `__dict__`, which is exactly what pydantic
    writes for the models `_model_shape` accepts. Datetimes are written by orjson, which
    agrees with pydantic except for a UTC offset with seconds (pydantic drops the
    seconds, orjson rounds): those refuse, and the caller takes the two-pass way."""
    shape = _model_shape(type(obj))
    if shape is not None:
        fields = obj.__dict__
        for name in shape:
            value = fields[name]
            if type(value) is datetime and value.tzinfo not in (None, UTC) and value.utcoffset() % _MINUTE:
                break
        else:
            return fields
    raise TypeError(f"{type(obj).__name__} is not written field by field")


_PLAIN = frozenset({"str", "int", "bool", "none"})
_WRAPPERS = frozenset({"default", "nullable", "function-after", "function-before"})  # validation only, or None


@functools.cache
def _model_shape(cls: type) -> tuple[str, ...] | None:
    """The names of the datetime fields of a model class whose pydantic JSON is its
    `__dict__` written as it is (str, int, bool, None, literals, lists, datetimes and
    nested models; no serialiser, alias, computed or excluded field, no extras, no
    JSON options); None for any other class."""
    if not issubclass(cls, BaseModel):
        return None
    schema = cls.__pydantic_core_schema__
    if schema.get("type") != "model" or schema.get("root_model") or "serialization" in schema:
        return None
    config = schema.get("config") or {}
    if config.get("extra_fields_behavior") == "allow" or any(k.startswith("ser_json") for k in config):
        return None
    fields_schema = schema["schema"]
    if fields_schema.get("type") != "model-fields" or fields_schema.get("computed_fields"):
        return None
    datetimes: list[str] = []
    for name, field in fields_schema["fields"].items():
        if field.get("serialization_exclude") or field.get("serialization_alias") or "serialization" in field:
            return None
        kind = _field_kind(field["schema"], top=True)
        if kind is None:
            return None
        if kind == "datetime":
            datetimes.append(name)
    return tuple(datetimes)


def _field_kind(schema: dict[str, Any], *, top: bool) -> str | None:
    """'datetime' for a (nullable, defaulted) datetime at the top of a field, 'plain' for
    anything else orjson writes as pydantic does, None when it may not."""
    kind = schema["type"]
    if "serialization" in schema:
        return None
    if kind in _WRAPPERS:
        return _field_kind(schema["schema"], top=top)
    if kind in _PLAIN or kind == "model":  # a nested model is checked by its own class
        return "plain"
    if kind == "literal":
        return "plain" if all(v is None or type(v) in (str, int, bool) for v in schema["expected"]) else None
    if kind == "list":
        items = schema.get("items_schema")
        return "plain" if items is None or _field_kind(items, top=False) == "plain" else None
    if kind == "datetime":
        return "datetime" if top else None
    return None


def record_hash(sensor_id: str, seq: int, prev_hash: str, body: bytes) -> str:
    """The link: what was recorded, by whom, where in that sensor's chain."""
    h = hashlib.sha256()
    h.update(canonical_json({"sensor_id": sensor_id, "seq": seq, "prev": prev_hash}))
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


def link(records: list[Record], heads: dict[str, tuple[int, str]]) -> list[Row]:
    """Chain records onto the given heads (sensor -> (last seq, last hash)); `heads` is
    advanced in place. Each hash is `record_hash`, its header written as the canonical
    object's members in key order ("prev" < "sensor_id" < "seq") with the sensor's part
    made once per batch: `verify` recomputes every link with `record_hash` itself."""
    out: list[Row] = []
    sensor_parts: dict[str, bytes] = {}
    sha256 = hashlib.sha256
    for sensor_id, kind, record_id, time_us, body in records:
        seq, prev = heads.get(sensor_id, (0, GENESIS))
        seq += 1
        part = sensor_parts.get(sensor_id)
        if part is None:
            part = sensor_parts[sensor_id] = b',"sensor_id":' + canonical_json(sensor_id) + b',"seq":'
        h = sha256(b'{"prev":%b%b%d}\n' % (canonical_json(prev), part, seq))
        h.update(body)
        digest = h.hexdigest()
        heads[sensor_id] = (seq, digest)
        out.append((sensor_id, seq, kind, record_id, time_us, body, prev, digest))
    return out
