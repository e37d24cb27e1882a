"""Hypothesis against every decoder: whatever the bytes, only LimitExceeded or
Undecodable may leave a decoder, classify() never raises, and memory stays bounded."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.classify import Limits, classify
from auditor.classify.decode import Budget, LimitExceeded, Undecodable, decompress, encoded_runs, form, multipart, tar_entries, zip_entries

SMALL = Limits(max_decoded_bytes=1 << 20, time_budget_s=2.0)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENCODINGS = ["gzip", "deflate", "br", "zstd", "identity", "bogus"]
COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": lambda d: brotli.compress(d, quality=1), "zstd": zstandard.ZstdCompressor().compress}


def _bounded(fn, *args) -> None:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        try:
            fn(*args)
        except (LimitExceeded, Undecodable):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(ENCODINGS))
def test_decompress_random_bytes(data: bytes, enc: str) -> None:
    _bounded(decompress, data, enc, Budget(SMALL))


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(sorted(COMPRESS)), st.integers(0, 64))
def test_decompress_valid_then_truncated(data: bytes, enc: str, cut: int) -> None:
    packed = COMPRESS[enc](data)
    out = decompress(packed, enc, Budget(SMALL))
    assert out == data
    _bounded(decompress, packed[: max(0, len(packed) - cut)], enc, Budget(SMALL))


@FUZZ
@given(st.integers(2, 16))
def test_decompress_bombs(mib: int) -> None:
    for enc in ("gzip", "zstd"):
        _bounded(decompress, COMPRESS[enc](b"\0" * (mib << 20)), enc, Budget(SMALL))


@FUZZ
@given(st.binary(max_size=4096), st.text(min_size=1, max_size=20))
def test_multipart_random(data: bytes, boundary: str) -> None:
    _bounded(multipart, data, boundary, Budget(SMALL))


@FUZZ
@given(st.text(max_size=4096))
def test_form_and_runs_random(text: str) -> None:
    _bounded(form, text, Budget(SMALL))
    for run in encoded_runs(text, 16):
        assert run.encoding in ("base64", "hex")


@FUZZ
@given(st.binary(max_size=4096))
def test_archives_random(data: bytes) -> None:
    _bounded(lambda d: list(zip_entries(b"PK\x03\x04" + d, Budget(SMALL))), data)
    _bounded(lambda d: list(tar_entries(d, Budget(SMALL))), data)


CTYPES = st.sampled_from([None, "application/json", "application/x-ndjson", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xx", "application/yaml", "text/plain", "application/octet-stream"])
ROUTES = st.sampled_from([("PATCH", "/projects/models?uid=a&type=run"), ("POST", "/v1/workflows"), ("POST", "/v1/connections"), ("POST", "/projects/p/models"), ("GET", "/v9/x"), (None, None)])


@FUZZ
@given(st.binary(max_size=8192), CTYPES, st.sampled_from([None, "gzip", "br", "zstd", "deflate", "gzip, br"]), ROUTES)
def test_classify_never_raises(body: bytes, ctype: str | None, enc: str | None, route: tuple[str | None, str | None]) -> None:
    tracemalloc.start()
    try:
        info = classify(body, method=route[0], path=route[1], host="api.gretel.cloud", content_type=ctype, content_encoding=enc, limits=SMALL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == len(body)
    assert info.inspected or info.not_inspected_reason
    assert peak < 24 << 20


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=60), lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=12), c, max_size=5), max_leaves=40)


@FUZZ
@given(json_values, ROUTES)
def test_classify_structured_never_raises(doc: object, route: tuple[str | None, str | None]) -> None:
    import json

    info = classify(json.dumps(doc).encode(), method=route[0], path=route[1], host="api.gretel.cloud", content_type="application/json", limits=SMALL)
    assert info.inspected or info.not_inspected_reason
    if route[0] == "GET":
        assert "unrecognised-route" in info.labels


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(["gzip", "deflate", "br", "zstd", "gzip, br", "bogus"]), st.integers(1, 700))
def test_incremental_scanner_random_chunks(data: bytes, enc: str, step: int) -> None:
    from auditor.classify import IncrementalScanner

    tracemalloc.start()
    try:
        s = IncrementalScanner(method="PUT", path="/x", host="api.gretel.cloud", content_encoding=enc, limits=SMALL, whole_cap=0)
        for i in range(0, len(data), step):
            s.feed(data[i : i + step])
        info = s.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == len(data)
    if data:
        assert not info.inspected and info.not_inspected_reason
    assert peak < 24 << 20


@FUZZ
@given(st.integers(2, 8), st.sampled_from(["gzip", "br", "zstd"]))
def test_incremental_scanner_bombs(mib: int, enc: str) -> None:
    from auditor.classify import IncrementalScanner

    bomb = COMPRESS[enc](b"\0" * (mib << 20))
    tracemalloc.start()
    try:
        s = IncrementalScanner(method="PUT", path="/x", host="example.com", content_encoding=enc, limits=SMALL, whole_cap=0)
        for i in range(0, len(bomb), 4096):
            s.feed(bomb[i : i + 4096])
        info = s.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not info.inspected
    assert peak < 24 << 20
