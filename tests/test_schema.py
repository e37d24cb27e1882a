"""The schema every stage speaks, and the canonical JSON the store hashes."""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from auditor import model
from auditor.model import Destination, EgressEvent, HttpInfo, new_id
from auditor.store.chain import canonical_json


def _annotations(tp: object) -> typing.Iterator[object]:
    yield tp
    for arg in typing.get_args(tp):
        yield from _annotations(arg)


def test_no_float_anywhere_in_the_schema() -> None:
    """Floats are where orjson and RFC 8785 disagree; the schema has none."""
    models = [v for v in vars(model).values() if isinstance(v, type) and issubclass(v, BaseModel)]
    for m in models:
        for name, field in m.model_fields.items():
            assert float not in set(_annotations(field.annotation)), f"{m.__name__}.{name} is a float"


def test_event_time_is_normalised_to_utc_and_naive_time_is_refused() -> None:
    ev = EgressEvent(sensor_id="s", kind="http", time=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    assert ev.time == datetime(2026, 1, 1, 10, tzinfo=UTC)
    with pytest.raises(ValidationError):
        EgressEvent(sensor_id="s", kind="http", time=datetime(2026, 1, 1, 12))


def test_unknown_fields_are_refused_at_the_boundary() -> None:
    with pytest.raises(ValidationError):
        EgressEvent.model_validate({"sensor_id": "s", "kind": "http", "destinaton": {}})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_rfc8785(doc: object) -> None:
    assert canonical_json(doc) == rfc8785.dumps(doc)


def test_canonical_json_of_an_event_round_trips() -> None:
    ev = EgressEvent(
        sensor_id="proxy-1",
        kind="http",
        destination=Destination(host="api.gretel.cloud", port=443),
        http=HttpInfo(method="PATCH", path="/projects/models", status=200),
    )
    doc = ev.model_dump(mode="json", exclude_none=True)
    assert EgressEvent.model_validate_json(canonical_json(doc)) == ev


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:200]:
        parsed = uuid.UUID(value)
        assert parsed.hex == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122
