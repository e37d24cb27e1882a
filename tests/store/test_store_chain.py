"""The store's one-pass serialiser and hash header against the two-pass reference:
`canonical_model(m)` must be `canonical_json(json_doc(m))` byte for byte, and `link`
must give the hashes `record_hash` (what `verify` recomputes) gives."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, field_serializer

from auditor.model import (
    Decision,
    Destination,
    DetectorFinding,
    DnsInfo,
    EgressEvent,
    Finding,
    FlowInfo,
    HttpInfo,
    PayloadInfo,
    SensorInfo,
    Source,
)
from auditor.store.chain import GENESIS, _model_shape, canonical_json, canonical_model, json_doc, link, record_hash

# every kind of character JSON escapes or RFC 8785 orders differently: controls, quotes,
# backslashes, U+2028, the top of the BMP, and supplementary characters
_CHARS = st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028", "\ufeff", "\uffff", "😀", "𝄞"])
TEXT = st.text(_CHARS, max_size=12)
OPT_TEXT = st.none() | TEXT
COUNT = st.integers(min_value=0, max_value=2**63 - 1)
OPT_COUNT = st.none() | COUNT
PORT = st.none() | st.integers(min_value=0, max_value=65535)
# offsets in whole minutes, and in seconds (which pydantic and orjson write differently)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]) | st.builds(
    timezone, st.integers(min_value=-86_399, max_value=86_399).map(lambda s: timedelta(seconds=s))
)
AWARE = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES)
WHEN = AWARE | st.datetimes()  # naive too: only `EgressEvent.time` insists on a zone


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


SOURCES = st.builds(Source, ip=OPT_TEXT, port=PORT, pod=OPT_TEXT, namespace=OPT_TEXT, node=OPT_TEXT, workload=OPT_TEXT,
                    scope=st.sampled_from(["pod", "node", "external", "unknown"]))
DESTINATIONS = st.builds(Destination, host=OPT_TEXT, sni=OPT_TEXT, http_host=OPT_TEXT, ip=OPT_TEXT, port=PORT,
                         transport=st.sampled_from(["tcp", "udp", "icmp", "other"]), app_protocol=OPT_TEXT,
                         tls=st.none() | st.booleans())
HTTP = st.builds(HttpInfo, method=TEXT, scheme=OPT_TEXT, path=TEXT, query=OPT_TEXT, status=_opt(st.integers(-(2**63), 2**63 - 1)),
                 request_bytes_wire=OPT_COUNT, response_bytes_decoded=OPT_COUNT, duration_us=OPT_COUNT, content_type=OPT_TEXT)
PAYLOADS = st.builds(
    PayloadInfo, sha256=OPT_TEXT, size=COUNT, labels=st.lists(TEXT, max_size=3), metadata_kinds=st.lists(TEXT, max_size=3),
    findings=st.lists(st.builds(DetectorFinding, detector=TEXT, label=TEXT, field_path=OPT_TEXT, offset=_opt(st.integers()),
                                excerpt=OPT_TEXT, count=st.integers(-(2**63), 2**63 - 1)), max_size=2),
    inspected=st.booleans(), not_inspected_reason=OPT_TEXT, route=OPT_TEXT,
)
FLOWS = st.builds(FlowInfo, direction=st.sampled_from(["egress", "inbound", "internal", "unknown"]), bytes_up=COUNT,
                  first_seen=_opt(WHEN), last_seen=_opt(WHEN), resolved_name=OPT_TEXT, cname_chain=st.lists(TEXT, max_size=2))
DNS = st.builds(DnsInfo, qname=TEXT, rcode=OPT_TEXT, answers=st.lists(TEXT, max_size=3), ttl=_opt(st.integers()))
SENSORS = st.builds(SensorInfo, lifecycle=st.sampled_from(["start", "stop", "gap", "drop"]), dropped=COUNT, detail=OPT_TEXT)
DECISIONS = st.builds(Decision, action=st.sampled_from(["allowed", "violation", "unverified"]), rule_id=TEXT,
                      reasons=st.lists(TEXT, max_size=2), rule_ids=st.lists(TEXT, max_size=2))
EVENTS = st.builds(
    EgressEvent, id=TEXT, time=AWARE, sensor_id=TEXT, kind=st.sampled_from(["http", "tcp", "dns", "flow", "sensor"]),
    source=SOURCES, destination=DESTINATIONS, http=_opt(HTTP), payload=_opt(PAYLOADS), flow=_opt(FLOWS), dns=_opt(DNS),
    sensor=_opt(SENSORS), observations=st.lists(TEXT, max_size=2), notes=st.lists(TEXT, max_size=2), decision=_opt(DECISIONS),
)
FINDINGS = st.builds(
    Finding, id=TEXT, rule_id=TEXT, action=st.sampled_from(["allowed", "violation", "unverified"]),
    severity=st.sampled_from(["info", "high"]), message=TEXT, remediation=TEXT, destination=TEXT, first_seen=WHEN,
    last_seen=WHEN, count=st.integers(1, 2**63 - 1), event_ids=st.lists(TEXT, max_size=3), excerpts=st.lists(TEXT, max_size=2),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(EVENTS, FINDINGS))
def test_one_pass_is_the_two_pass_canonical_json(model: EgressEvent | Finding) -> None:
    assert _outcome(canonical_model, model) == _outcome(lambda m: canonical_json(json_doc(m)), model)


def _outcome(write: Callable[[BaseModel], bytes], model: BaseModel) -> bytes | type[BaseException]:
    """The bytes, or the kind of error: past 2**53 beside a supplementary character both
    ways end in the RFC 8785 reference encoder, which refuses the integer."""
    try:
        return write(model)
    except ValueError as exc:
        return type(exc)


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
def test_values_assigned_past_validation_still_match() -> None:
    """Models are not validated on assignment: what a sensor assigns is written as pydantic writes it."""
    event = EgressEvent(sensor_id="p", kind="http", time=datetime(2026, 1, 1, tzinfo=UTC))
    event.observations = {"a"}  # type: ignore[assignment]  # a set: orjson refuses it, pydantic writes a list
    event.source.port = 2**70  # past 64 bits
    event.notes = ["x" * 3, 7]  # type: ignore[list-item]
    assert canonical_model(event) == canonical_json(json_doc(event))
    later = EgressEvent(sensor_id="p", kind="flow", flow=FlowInfo(first_seen=datetime(2026, 1, 1, tzinfo=timezone(timedelta(seconds=30)))))
    assert canonical_model(later) == canonical_json(json_doc(later))


class _Renamed(BaseModel):
    inner: int = Field(default=1, serialization_alias="outer")


class _Serialised(BaseModel):
    when: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    blob: dict[str, int] = Field(default_factory=lambda: {"𝄞": 1, "\ufb01": 2})  # UTF-16 order differs from code points

    @field_serializer("when")
    def _epoch(self, value: datetime) -> int:
        return int(value.timestamp())


@given(st.sampled_from([_Renamed(), _Serialised()]))
def test_models_whose_json_is_not_their_fields_take_the_two_pass_way(model: BaseModel) -> None:
    assert _model_shape(type(model)) is None
    assert canonical_model(model) == canonical_json(json_doc(model))


def test_the_stored_models_take_the_one_pass_way() -> None:
    assert _model_shape(EgressEvent) == ("time",)
    assert _model_shape(Finding) == ("first_seen", "last_seen")
    assert _model_shape(FlowInfo) == ("first_seen", "last_seen")
    for part in (Source, Destination, HttpInfo, PayloadInfo, DetectorFinding, DnsInfo, SensorInfo, Decision):
        assert _model_shape(part) == ()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", 'q"uote', "é", "😀", "\x00"]), st.binary(max_size=40)), max_size=30),
       st.dictionaries(st.sampled_from(["a", "é"]), st.tuples(st.integers(0, 2**40), st.text(max_size=70)), max_size=2))
def test_link_hashes_are_record_hash(records: list[tuple[str, bytes]], start: dict[str, tuple[int, str]]) -> None:
    heads = dict(start)
    rows = link([(sensor, "event", f"id{i}", i, body) for i, (sensor, body) in enumerate(records)], heads)
    expect = dict(start)
    for sensor_id, seq, _, _, _, body, prev, digest in rows:
        last_seq, last_hash = expect.get(sensor_id, (0, GENESIS))
        assert (seq, prev) == (last_seq + 1, last_hash)
        assert digest == record_hash(sensor_id, seq, prev, body)
        expect[sensor_id] = (seq, digest)
    assert heads == expect
