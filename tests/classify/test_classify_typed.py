"""The typed fast path (a route model's msgspec mirror decoding a quiet body in one C
pass) gives the verdict the ordinary path gives: the same labels, kinds and findings.

Bodies are generated from the route models' own fields with values of every JSON type,
right and wrong (nulls, bools for ints, floats for ints, integers past 64 bits, Literal
values and near misses, nested lists and dicts), unknown and duplicate keys, runner_mode
keys, and tight structure and node limits; each is classified with the fast path on and
off (the route's mirror removed), and against the full per-string walk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.classify import ClassifyContext, Limits, classify
from auditor.classify import engine
from auditor.classify import routes as rt
from auditor.model import PayloadInfo

from verdicts import verdict  # tests/classify/verdicts.py (pytest puts this folder on the path)

HOST = "api.gretel.cloud"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TYPED_ROUTES = [(r.method, r.template.replace("{", "").replace("}", ""), r.body) for r in rt.ROUTES if r.body is not None and rt.typed(r.body) is not None]



def _untyped(model: type[rt.Body]) -> None:
    return None


def _classify(body: bytes, method: str, path: str, limits: Limits | None, typed: bool, context: ClassifyContext | None = None) -> PayloadInfo:
    with pytest.MonkeyPatch.context() as mp:
        if not typed:
            mp.setattr(rt, "typed", _untyped)
        return classify(body, method=method, path=path, host=HOST, content_type="application/json", limits=limits, context=context)


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64 + 7, 10**25]),
    st.sampled_from([1.5, 2.0, -0.0, 1e300]),
    st.sampled_from(["pre", "train", "bogus", "active", "2024-02-01T10:00:00Z", "hybrid", "cloud", "x y", ""]),
)
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "status", "ts", "msg", "runner_mode"]), inner, max_size=3)), max_leaves=12)


def _text(pairs: list[tuple[str, Any]]) -> str:
    """An object as JSON text from (key, value) pairs, so a key can appear twice."""
    return "{" + ",".join(f"{json.dumps(k)}:{v if isinstance(v, _Raw) else json.dumps(v)}" for k, v in pairs) + "}"


class _Raw(str):
    """JSON text already made (a nested object with its own duplicate keys)."""


def _fitting(spec: rt.FieldSpec) -> st.SearchStrategy[Any]:
    """Values of the classes a field takes (most real bodies fit their route)."""
    parts: list[st.SearchStrategy[Any]] = [st.sampled_from(sorted(spec.literals))] if spec.literals else []
    for cls in spec.accepts or ():
        if cls is str:
            parts.append(st.sampled_from(["active", "created", "Epoch complete", "2024-02-01T10:00:00Z", "s3://bucket/logs/t.jsonl"]))
        elif cls is int:
            parts.append(st.integers(-1000, 10**6))
        elif cls is bool:
            parts.append(st.booleans())
        elif cls is type(None):
            parts.append(st.none())
    return st.one_of(parts) if parts else _value


def _keys(model: type[rt.Body]) -> list[str]:
    return [*model.model_fields, "extra", "runner_mode"]


@st.composite
def _object(draw: st.DrawFn, model: type[rt.Body], level: int = 0) -> _Raw:
    """An object shaped like `model`: its fields (some missing, some twice, some wrong),
    nested models as objects or lists of them, and sometimes a field it does not have."""
    keys = _keys(model)
    names = draw(st.lists(st.sampled_from(keys), max_size=len(keys) + 1))
    if draw(st.booleans()):
        names = [k for k in names if k in model.model_fields]  # most real bodies fit
    pairs: list[tuple[str, Any]] = []
    for name in names:
        nested = rt.specs(model)[name].model if name in model.model_fields else None
        if nested is not None and level < 2 and draw(st.integers(0, 3)):
            items = draw(st.lists(_object(nested, level + 1), max_size=4))
            pairs.append((name, _Raw("[" + ",".join(items) + "]")))
        elif name in ("ctx", "execution_summary") and draw(st.booleans()):
            pairs.append((name, draw(st.dictionaries(st.sampled_from(["epoch", "loss", "runner_mode", "k"]), _scalar, max_size=4))))
        elif name in model.model_fields and draw(st.integers(0, 3)):
            pairs.append((name, draw(_fitting(rt.specs(model)[name]))))
        else:
            pairs.append((name, draw(_value)))
    return _Raw(_text(pairs))


@st.composite
def _case(draw: st.DrawFn) -> tuple[str, str, bytes]:
    method, path, model = draw(st.sampled_from(TYPED_ROUTES))
    body = draw(_object(model))
    if draw(st.integers(0, 9)) == 0:
        body = _Raw("[" + body + "]")  # log routes take arrays of lines; others refuse them
    return method, path, body.encode()


_LIMITS = [None, Limits(max_structure_depth=1), Limits(max_structure_depth=2), Limits(max_structure_depth=3), Limits(max_nodes=12)]


@FUZZ
@given(case=_case(), limits=st.sampled_from(_LIMITS))
def test_typed_path_equals_the_walk(case: tuple[str, str, bytes], limits: Limits | None, unrelated_fps: ClassifyContext) -> None:
    method, path, body = case
    fast = _classify(body, method, path, limits, typed=True)
    walked = _classify(body, method, path, limits, typed=False)
    assert verdict(fast) == verdict(walked), body
    full = _classify(body, method, path, limits, typed=True, context=unrelated_fps)
    assert verdict(fast) == verdict(full), body


def _benchmark_bodies() -> list[tuple[str, str, bytes]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from classify import metadata_bodies
        from proxy_overhead import gretel_body
    finally:
        sys.path.pop(0)
    plain = [b for i, b in enumerate(metadata_bodies(10)) if i % 5 != 4]  # task errors hold escapes (newlines)
    return [*plain, ("PATCH", "/projects/models?uid=6613d6a1f0c8b2b1a9e4d0c7&type=train", gretel_body(256 * 1024))]


@pytest.mark.parametrize("method,path,body", _benchmark_bodies())
def test_plain_status_and_log_bodies_take_the_typed_path(method: str, path: str, body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the walk made to fail, these bodies still come out as metadata: no walk ran."""
    expected = _classify(body, method, path, None, typed=False)
    assert expected.labels == ["metadata"]

    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("walked")

    monkeypatch.setattr(engine._Run, "walk", no_walk)
    assert verdict(_classify(body, method, path, None, typed=True)) == verdict(expected)


def test_a_wrong_value_leaves_the_typed_path() -> None:
    """A body the mirror refuses is judged by the walk and pydantic: the schema finding stays."""
    body = json.dumps({"uid": "abc", "status": "active", "status_history": [{"status": "created", "ts": 5}]}).encode()
    info = _classify(body, "PATCH", "/projects/models?uid=abc&type=train", None, typed=True)
    assert "metadata" not in info.labels
    assert any(f.detector == "schema" for f in info.findings)
