"""The leak corpus: every way the issue lists for data to slip out, each caught with
the right label, the evidence redacted, and the limits turning bombs into
`uninspectable` rather than exceptions or memory."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import struct
import tarfile
import textwrap
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from urllib.parse import quote

import brotli
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auditor.classify import ClassifyContext, IncrementalScanner, Limits, classify, load_context
from auditor.classify.canary import make as make_canaries
from auditor.classify.fingerprint import build
from auditor.model import PayloadInfo

HOST = "api.gretel.cloud"
UID = "64f1c0ffee0ddba11c0ffee1"
GRETEL_KEY = "grtu" + "8f3a2b9c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70"
ROWS = [
    {"name": "Alice Smith", "email": "alice.smith@example.com", "city": "Springfield", "account": "ACC-99812345"},
    {"name": "Bob Jones", "email": "bob.jones@example.org", "city": "Shelbyville", "account": "ACC-77712345"},
    {"name": "Carol White", "email": "carol.w@example.net", "city": "Ogdenville", "account": "ACC-55512345"},
    {"name": "Dan Brown", "email": "dan.b@example.net", "city": "North Haverbrook", "account": "ACC-33312345"},
]


def _status(**extra: object) -> bytes:
    return json.dumps({"uid": UID, "status": "error", **extra}).encode()


def _labels(info: PayloadInfo) -> set[str]:
    return set(info.labels)


def _clean_json(info: PayloadInfo, *secrets: str) -> None:
    dumped = info.model_dump_json()
    for s in secrets:
        assert s not in dumped


def test_csv_rows_in_a_log_msg() -> None:
    csv_text = "name,email,city\n" + "".join(f"{r['name']},{r['email']},{r['city']}\n" for r in ROWS)
    line = {"ts": "2024-01-01T00:00:00Z", "msg": f"could not parse batch:\n{csv_text}", "seq": 9, "stage": "train"}
    info = classify(json.dumps(line).encode(), method="POST", path=f"/projects/models/logs?uid={UID}&type=train", host=HOST, content_type="application/json")
    assert "training-data" in _labels(info)
    f = next(f for f in info.findings if f.detector == "tabular:csv")
    assert f.field_path == "body.logs[0].msg" if f.field_path.startswith("body.logs") else f.field_path == "body.msg"
    assert "metadata" not in info.labels
    _clean_json(info, "alice.smith@example.com", "Alice Smith")


def test_gzipped_json_records_in_a_status_update() -> None:
    blob = base64.b64encode(gzip.compress(json.dumps(ROWS).encode())).decode()
    info = classify(_status(error_msg=f"failed batch {blob}"), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST)
    assert "training-data" in _labels(info)
    assert any("|gzip" in (f.field_path or "") for f in info.findings)
    # and the same records as the gzip-encoded body itself
    info = classify(gzip.compress(json.dumps(ROWS).encode()), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, content_encoding="gzip")
    assert {"training-data", "extra-field"} <= _labels(info)


def _parquet() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), buf)
    return buf.getvalue()


def test_base64_parquet_in_ctx() -> None:
    line = {"ts": "2024-01-01T00:00:00Z", "msg": "sample", "ctx": {"preview": base64.b64encode(_parquet()).decode()}, "stage": "train"}
    info = classify(json.dumps(line).encode(), method="POST", path=f"/projects/models/logs?uid={UID}", host=HOST)
    f = next(f for f in info.findings if f.detector == "magic")
    assert f.label == "training-data" and "Parquet" in (f.excerpt or "")
    assert f.field_path and f.field_path.startswith("body.logs[0].ctx.preview<base64")


def _model_tar_gz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("model/config.json", b'{"epochs": 10}'), ("model/model.pt", os.urandom(2048))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def test_model_tar_gz_in_a_put() -> None:
    info = classify(_model_tar_gz(), method="PUT", path="/projects/proj_1/models/m_1/model.tar.gz", host=HOST, content_type="application/octet-stream")
    assert {"model-artifact", "unrecognised-route"} <= _labels(info)
    assert any(f.detector == "artifact-name" for f in info.findings)
    assert any(f.detector == "magic" and "model.pt" in (f.excerpt or "") for f in info.findings)
    # the bytes alone, without the telling name, are still an artifact
    info = classify(_model_tar_gz(), method="PUT", path="/upload/blob", host="storage.example.com")
    assert "model-artifact" in _labels(info)


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [16, 16], "data_offsets": [0, 1024]}, "__metadata__": {"format": "pt"}}).encode()
    return struct.pack("<Q", len(header)) + header + os.urandom(1024)


def test_safetensors_blob() -> None:
    info = classify(_safetensors(), method="POST", path="/projects/proj_1/models", host=HOST, content_type="application/octet-stream")
    assert "model-artifact" in _labels(info)
    info = classify(_status(error_msg=base64.b64encode(_safetensors()).decode()), method="PATCH", path="/projects/models", host=HOST)
    assert "model-artifact" in _labels(info)


def test_plaintext_credentials_and_secrets_are_redacted() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Lw3kPq9"
    body = {"project_id": "p", "name": "crm", "type": "s3", "credentials": {"access_key_id": "AKIAQ3EGUSR7NXYZT2KF", "secret_access_key": secret}}
    info = classify(json.dumps(body).encode(), method="POST", path="/v1/connections", host=HOST)
    assert {"plaintext-credentials", "credential"} <= _labels(info)
    _clean_json(info, secret, "AKIAQ3EGUSR7NXYZT2KF")
    info = classify(_status(traceback=f"requests.exceptions.HTTPError: 401 for key {GRETEL_KEY}"), method="PATCH", path="/projects/models", host=HOST)
    assert "credential" in _labels(info)
    _clean_json(info, GRETEL_KEY, GRETEL_KEY[4:20])
    info = classify(b"", method="GET", path=f"/v2/secret/{GRETEL_KEY}", host=HOST)
    _clean_json(info, GRETEL_KEY)


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAr9x2fQ7h1k3x0lmTq0\n-----END RSA PRIVATE KEY-----",
        "auth eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PpPRcsUQnGWo failed",
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8=;EndpointSuffix=core.windows.net",
        'connect to postgresql://etl:S3cr3t-p4ssw0rd@db.internal:5432/crm failed',
        '{"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n"}',
    ],
)
def test_credential_shapes(text: str) -> None:
    info = classify(_status(error_msg=text), method="PATCH", path="/projects/models", host=HOST)
    assert "credential" in _labels(info), info.findings


def test_canary_in_a_url_encoded_query(tmp_path: Path) -> None:
    made = make_canaries(3, "csv", tmp_path / "c.csv", None)
    token = made.tokens.read_text().splitlines()[2]
    ctx = load_context(canaries=made.tokens)
    path = "/v1/workflows?note=" + quote(f"record {token.upper()} seen", safe="")
    info = classify(json.dumps({"name": "w", "project_id": "p", "runner_mode": "hybrid"}).encode(), method="POST", path=path, host=HOST, context=ctx)
    f = next(f for f in info.findings if f.label == "canary")
    assert f.likelihood == "VERY_LIKELY" and f.field_path == "query.note"
    # a form body too, and without the list the shape still counts
    info = classify(f"a=1&b={quote(token)}".encode(), method="POST", path="/v1/other", host=HOST, content_type="application/x-www-form-urlencoded")
    assert "canary" in _labels(info)


def test_fingerprinted_rows_with_changed_case_and_whitespace(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("name,email,city,account\n" + "".join(f"{r['name']},{r['email']},{r['city']},{r['account']}\n" for r in ROWS))
    key = tmp_path / "K"
    key.write_bytes(os.urandom(32))
    build(data, tmp_path / "d.fp", key)
    raw = (tmp_path / "d.fp").read_bytes()
    for r in ROWS:
        for v in r.values():
            assert v.encode() not in raw and v.lower().encode() not in raw
    ctx = load_context(fingerprints=tmp_path / "d.fp", key_file=key)
    msg = "rejected:  CAROL   WHITE |  ogdenville \n  dan.B@EXAMPLE.net ; ACC-33312345"
    info = classify(_status(error_msg=msg), method="PATCH", path="/projects/models", host=HOST, context=ctx)
    f = next(f for f in info.findings if f.label == "fingerprint-match")
    assert f.count == 2 and f.field_path == "body.error_msg"
    assert "training-data" in _labels(info)
    # inside base64 and JSON escaping as well
    blob = base64.b64encode(json.dumps({"n": "bob JONES", "c": "SHELBYVILLE"}).encode()).decode()
    info = classify(_status(error_msg=blob), method="PATCH", path="/projects/models", host=HOST, context=ctx)
    assert "fingerprint-match" in _labels(info)
    # one cell alone is not a row
    info = classify(_status(error_msg="city was Springfield"), method="PATCH", path="/projects/models", host=HOST, context=ctx)
    assert "fingerprint-match" not in _labels(info)


def test_zip_bomb_is_uninspectable_with_bounded_memory() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.csv", b"0" * (64 << 20))
    bomb = buf.getvalue()
    tracemalloc.start()
    try:
        info = classify(bomb, method="PUT", path="/projects/p/artifacts/x", host=HOST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "uninspectable" in info.labels and not info.inspected
    assert info.not_inspected_reason and info.not_inspected_reason.startswith(("inflation-ratio", "decoded-size"))
    assert peak < 48 << 20


def test_gzip_bomb_as_content_encoding() -> None:
    info = classify(gzip.compress(b"\0" * (40 << 20)), method="PATCH", path="/projects/models", host=HOST, content_encoding="gzip")
    assert not info.inspected and info.not_inspected_reason.startswith("inflation-ratio")


def test_deep_nesting_bombs() -> None:
    info = classify(b"[" * 200_000 + b"]" * 200_000, method="PATCH", path="/projects/models", host=HOST)
    assert "uninspectable" in info.labels and info.not_inspected_reason.startswith("structure-depth")
    inner = b'{"a": 1, "msg": "x"}'
    for _ in range(6):
        inner = json.dumps({"msg": base64.b64encode(inner).decode()}).encode()
    info = classify(inner, method="PATCH", path="/projects/models", host=HOST)
    assert not info.inspected and info.not_inspected_reason.startswith("nesting-depth")
    body = b'{"uid": "x", "status": "ok"}'
    for _ in range(5):
        body = gzip.compress(body)
    info = classify(body, method="PATCH", path="/projects/models", host=HOST, content_encoding=", ".join(["gzip"] * 5))
    assert not info.inspected and info.not_inspected_reason.startswith("nesting-depth")
    yaml_bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    info = classify(json.dumps({"name": "w", "config_text": yaml_bomb}).encode(), method="POST", path="/v1/workflows", host=HOST)
    assert not info.inspected and info.not_inspected_reason.startswith("node-count")


def test_archive_entry_cap() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(1_001):
            zf.writestr(f"f{i}.txt", b"x")
    info = classify(buf.getvalue(), method="PUT", path="/x", host="storage.example.com")
    assert not info.inspected and info.not_inspected_reason.startswith("archive-entries")


def test_time_budget() -> None:
    body = json.dumps({"uid": "x", "status": "s", "error_msg": "a,b,c\n" * 50_000}).encode()
    info = classify(body, method="PATCH", path="/projects/models", host=HOST, limits=Limits(time_budget_s=0.000_001))
    assert not info.inspected and info.not_inspected_reason.startswith("time-budget")


@pytest.mark.parametrize(
    "body,path,label",
    [
        (b"", "/projects/p_1/artifacts", "forbidden-route"),
        (json.dumps({"name": "p", "runner_mode": "cloud"}).encode(), "/projects", "runner-mode"),
        (b"", "/jobs/receive_one?project_ids=a&runner_modes=hybrid,cloud", "runner-mode"),
        (json.dumps({"models": [{"actgan": {"data_source": [{"name": "Alice", "ssn": "123-45-6789"}, {"name": "Bob", "ssn": "234-56-7890"}]}}]}).encode(), "/projects/p/models?runner_mode=hybrid", "inline-data-source"),
        (json.dumps({"models": [{"actgan": {"data_source": "name,ssn\nAlice,123-45-6789\nBob,234-56-7890\n"}}]}).encode(), "/projects/p/models?runner_mode=cloud", "inline-data-source"),
        (json.dumps({"name": "p", "owner_notes": "x"}).encode(), "/projects", "extra-field"),
        (b"", "/v2/telemetry", "unrecognised-route"),
    ],
)
def test_route_violations(body: bytes, path: str, label: str) -> None:
    method = "GET" if path == "/v2/telemetry" else "POST"
    info = classify(body, method=method, path=path, host=HOST)
    assert label in _labels(info)
    assert "metadata" not in info.labels
    if label == "unrecognised-route":
        assert info.inspected


def test_report_pii_table_and_entropy() -> None:
    report = {"synthetic_data_quality_score": {"score": 88}, "field_correlation_stability": {"score": 90}, "deep_structure_stability": {"score": 85}, "privacy_protection_level": 4}
    info = classify(gzip.compress(json.dumps(report).encode()), method="PUT", path="/upload/report_json.json.gz", host="storage.example.com")
    assert "report-artifact" in _labels(info)
    people = "; ".join(f"{r['email']} 555-201-{i:04d}" for i, r in enumerate(ROWS))
    info = classify(_status(error_msg=f"cannot dedupe {people}"), method="PATCH", path="/projects/models", host=HOST)
    assert {"pii", "training-data"} <= _labels(info)
    _clean_json(info, "alice.smith@example.com")
    info = classify(_status(error_msg="card 4111 1111 1111 1111 declined"), method="PATCH", path="/projects/models", host=HOST)
    assert "pii" in _labels(info)
    info = classify(_status(error_msg="card 4111 1111 1111 1112 declined"), method="PATCH", path="/projects/models", host=HOST)
    assert "pii" not in _labels(info)
    info = classify(os.urandom(8192), method="POST", path="/v2/blob", host=HOST, content_type="application/octet-stream")
    f = next(f for f in info.findings if f.label == "high-entropy")
    assert "encrypted or random" in (f.excerpt or "")


def test_incremental_scanner_streams_with_bounded_memory() -> None:
    token = "ba-canary-" + "ab" * 12
    scanner = IncrementalScanner(method="PATCH", path="/projects/models", host=HOST, content_type="application/json", whole_cap=1024)
    tracemalloc.start()
    try:
        line = b'{"ts":"t","msg":"ok","seq":1}\n'
        for i in range(20_000):
            scanner.feed(line if i != 12_345 else f'{{"msg":"{token} {GRETEL_KEY}"}}\n'.encode())
        info = scanner.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {"canary", "credential", "uninspectable"} <= set(info.labels)
    assert not info.inspected and info.not_inspected_reason.startswith("over-inspect-cap")
    assert info.size == 20_000 * len(line) - len(line) + len(f'{{"msg":"{token} {GRETEL_KEY}"}}\n')
    assert peak < 8 << 20
    _clean_json(info, GRETEL_KEY)
    small = IncrementalScanner(method="PATCH", path="/projects/models", host=HOST)
    small.feed(b'{"uid": "x", ')
    small.feed(b'"status": "active"}')
    assert small.finish().labels == ["metadata"]


def test_incremental_scanner_gzip_stream_and_bomb() -> None:
    body = gzip.compress(b"name,email,city\n" + b"".join(f"{r['name']},{r['email']},{r['city']}\n".encode() for r in ROWS) * 200)
    s = IncrementalScanner(method="PUT", path="/x", host="storage.example.com", content_encoding="gzip", whole_cap=0)
    for i in range(0, len(body), 100):
        s.feed(body[i : i + 100])
    info = s.finish()
    assert "training-data" in info.labels
    bomb = gzip.compress(b"\0" * (30 << 20))
    s = IncrementalScanner(method="PUT", path="/x", host="storage.example.com", content_encoding="gzip", whole_cap=0)
    for i in range(0, len(bomb), 4096):
        s.feed(bomb[i : i + 4096])
    info = s.finish()
    assert info.not_inspected_reason and info.not_inspected_reason.startswith("inflation-ratio")


def test_context_defaults_are_empty() -> None:
    assert ClassifyContext().fingerprints is None


@pytest.mark.parametrize(
    "text,kind",
    [
        ("call +1 (555) 201-3344", "phone"),
        ("555 201-3344", "phone"),
        ("555.201 3344", "phone"),
        ("+447911123456", "phone"),
        ("ssn 123-45-6789", "ssn"),
        ("amex 3782 822463 10005", "card"),
        ("4111-1111-1111-1111", "card"),
        ("4111111111111111", "card"),
        ("AB123456C", "nino"),
        ("AB 12 34 56 C", "nino"),
        ("GB82 WEST 1234 5698 7654 32", "iban"),
        ("a.person@example.co.uk", "email"),
    ],
)
def test_pii_shapes(text: str, kind: str) -> None:
    from auditor.classify.detectors import pii_hits

    assert kind in {h.kind for h in pii_hits(text)}


@pytest.mark.parametrize("text", ["2024-02-01T10:00:05.123456Z", "epoch 12 of 100, loss 0.4213", "4111 1111 1111 1112", "000-00-0000", "uid 64f1c0ffee0ddba11c0ffee1"])
def test_pii_non_matches(text: str) -> None:
    from auditor.classify.detectors import pii_hits

    assert pii_hits(text) == []


def test_escaped_json_cannot_hide_from_the_quiet_path() -> None:
    # \u0040 is "@": the raw text has no "@", the parsed strings do
    people = ", ".join(f"p{i}\\u0040example.com" for i in range(4))
    body = ('{"uid": "x", "status": "error", "error_msg": "' + people + '"}').encode()
    info = classify(body, method="PATCH", path="/projects/models", host=HOST)
    assert {"pii", "training-data"} <= set(info.labels)
    token = "ba-canary-" + "cd" * 12
    escaped = "".join(f"\\u{ord(c):04x}" for c in token)
    info = classify(('{"uid": "x", "status": "' + escaped + '"}').encode(), method="PATCH", path="/projects/models", host=HOST)
    assert "canary" in info.labels


def test_secrets_in_keys_and_names_are_redacted_too() -> None:
    body = json.dumps({"uid": "x", "status": "s", GRETEL_KEY: "v"}).encode()
    info = classify(body, method="PATCH", path="/projects/models", host=HOST)
    assert "extra-field" in info.labels and "credential" in info.labels
    _clean_json(info, GRETEL_KEY)
    info = classify(b"x", method="PUT", path=f"/upload/{GRETEL_KEY}/model.tar.gz", host=HOST)
    _clean_json(info, GRETEL_KEY)


_ROW_TEXT = "".join(f"{r['name']},{r['email']},{r['city']},{r['account']}\n" for r in ROWS)
_AGENT_HEADERS = [
    ("Authorization", GRETEL_KEY),
    ("X-Gretel-Clusterid", "cl_2TQzSKdvhF9PNPqDxHXC7Zw8MFb"),
    ("X-Gretel-AppVersion", "0.18.3"),
    ("X-Gretel-ImageVersion", "0.18.3"),
    ("User-Agent", "python-requests/2.31.0"),
    ("Accept-Encoding", "gzip, deflate"),
]


@pytest.mark.parametrize(
    ("path", "headers", "where"),
    [
        ("/projects/" + quote(_ROW_TEXT, safe=""), [], "url.path[1]"),
        ("/projects/" + base64.urlsafe_b64encode(_ROW_TEXT.encode()).decode(), [], "url.path[1]<base64@0>"),
        ("/users/me/billing?" + quote(_ROW_TEXT, safe="") + "=1", [], "query[0]<name>"),
        ("/users/me/billing", [("X-Trace", base64.b64encode(_ROW_TEXT.encode()).decode())], "header.x-trace<base64@0>"),
        ("/users/me/billing", [("Cookie", "theme=dark; s=" + quote(_ROW_TEXT))], "header.cookie.s<url>"),
        ("/users/me/billing", [("Authorization", "Bearer " + base64.b64encode(_ROW_TEXT.encode()).decode())], "header.authorization<base64@7>"),
    ],
    ids=["path-escaped", "path-base64", "query-key", "header-base64", "cookie", "authorization"],
)
def test_records_a_bodyless_request_carries_outside_its_body(path: str, headers: list[tuple[str, str]], where: str) -> None:
    info = classify(b"", method="GET", path=path, host=HOST, headers=[*_AGENT_HEADERS[1:], *headers])
    assert "training-data" in info.labels and "metadata" not in info.labels, info.findings
    assert where in {f.field_path for f in info.findings}
    _clean_json(info, "alice.smith@example.com", "ACC-99812345")


def test_the_agents_own_headers_and_api_key_are_metadata_but_another_credential_is_not() -> None:
    info = classify(b"", method="GET", path="/users/me/billing", host=HOST, headers=_AGENT_HEADERS)
    assert info.labels == ["metadata"] and not info.findings
    cookie = "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PpPRcsUQnGWo"
    assert classify(b"", method="GET", path="/users/me/billing", host=HOST, headers=[*_AGENT_HEADERS, ("Cookie", cookie)]).labels == ["metadata"]
    leak = [*_AGENT_HEADERS, ("X-Debug", "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]
    info = classify(b"", method="GET", path="/users/me/billing", host=HOST, headers=leak)
    assert "credential" in info.labels and {f.field_path for f in info.findings} == {"header.x-debug"}
    _clean_json(info, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", GRETEL_KEY)


def test_a_streamed_body_still_judges_its_query_and_headers() -> None:
    scan = IncrementalScanner(
        method="POST", path="/v1/workflows?x=1", host=HOST, whole_cap=0,
        headers=[("X-Trace", base64.b64encode(_ROW_TEXT.encode()).decode())],
    )
    scan.feed(b'{"name": "w"}' + b" " * 4096)
    info = scan.finish()
    assert not info.inspected and "training-data" in info.labels


def test_a_presigned_urls_signature_is_its_own_credential_but_a_key_in_another_parameter_leaks() -> None:
    presigned = (
        "/acme/model/m1/model.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261126%2Fus-west-2%2Fs3%2Faws4_request"
        "&X-Amz-Date=20261126T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=" + "0f" * 32
    )
    info = classify(b"", method="GET", path=presigned, host="artifacts.gretel.cloud")
    assert "credential" not in info.labels, info.findings
    info = classify(b"", method="GET", path=presigned + "&note=aws_secret_access_key%3DwJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY", host="artifacts.gretel.cloud")
    assert "credential" in info.labels and {f.field_path for f in info.findings if f.label == "credential"} <= {"query.note", "query.note<url>"}


@pytest.mark.parametrize(
    ("value", "leaks"),
    [
        (base64.b64encode(b"\x01\x02\x02\x00" + os.urandom(180)).decode(), False),  # a KMS ciphertext blob
        ({"ciphertext": base64.b64encode(os.urandom(180)).decode(), "key_id": "arn:aws:kms:us-west-2:111122223333:key/1234abcd"}, False),
        (_ROW_TEXT, True),
        (base64.b64encode(b"aws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").decode(), True),
        (base64.b64encode(gzip.compress(_ROW_TEXT.encode() * 20)).decode(), True),
        ({"ciphertext": base64.b64encode(_ROW_TEXT.encode()).decode()}, True),
    ],
    ids=["kms-blob", "kms-dict", "csv", "b64-text", "b64-gzip", "dict-b64-text"],
)
def test_encrypted_credentials_must_look_like_ciphertext(value: object, leaks: bool) -> None:
    body = json.dumps({"project_id": "p1", "name": "pg", "type": "postgres", "encrypted_credentials": value}).encode()
    info = classify(body, method="POST", path="/v1/connections", host=HOST, content_type="application/json")
    assert ("plaintext-credentials" in info.labels) is leaks, info.findings
    assert ("metadata" in info.labels) is not leaks


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/projects/models/logs?uid={UID}&type=train", {"logs": [{"ts": "2024-01-01T00:00:00Z", "msg": "ok", "ctx": {row: i for i, row in enumerate(_ROW_TEXT.splitlines())}}]}),
        ("/projects/p1/models", {"schema_version": "1.0", "name": "m", "models": [{"actgan": {"data_source": "s3://b/train.csv", "params": {row: 1 for row in _ROW_TEXT.splitlines()}}}]}),
        (f"/projects/models?uid={UID}&type=train", {"uid": UID, "status": "active", **{row: 1 for row in _ROW_TEXT.splitlines()}}),
    ],
    ids=["log-ctx", "model-config", "top-level"],
)
def test_records_as_field_names_are_judged_and_kept_out_of_field_paths(path: str, body: dict[str, object]) -> None:
    info = classify(json.dumps(body).encode(), method="PATCH" if "uid" in path and "logs" not in path else "POST", path=path, host=HOST, content_type="application/json")
    assert "training-data" in info.labels and "metadata" not in info.labels, info.findings
    assert all("<key " in (f.field_path or "") for f in info.findings if f.label in ("pii", "training-data"))
    _clean_json(info, "alice.smith@example.com", "Alice Smith", "Springfield")


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"host": "db", "username": "u", "pass": "Tr0ub4dor&3xyzQ"}, "body.config.pass"),
        ({"host": "db.internal", "credentials": {"username": "svc", "pw": "Pg-Prod-2024-Xy7q"}}, "body.config.credentials"),
        ({"replicas": [{"host": "r1", "db_password": "x1-not-a-placeholder"}]}, "body.config.replicas[0].db_password"),
        ({"bucket": "customer-bucket", "key_prefix": "sources/", "password": "${DB_PASSWORD}"}, None),
    ],
)
def test_a_secret_named_in_a_connection_config_is_a_plaintext_credential(config: dict[str, object], where: str | None) -> None:
    body = json.dumps({"project_id": "p1", "name": "pg", "type": "postgres", "config": config}).encode()
    info = classify(body, method="POST", path="/v1/connections", host=HOST, content_type="application/json")
    found = {f.field_path for f in info.findings if f.label == "plaintext-credentials"}
    assert found == ({where} if where else set()), info.findings
    _clean_json(info, "Tr0ub4dor", "Pg-Prod-2024", "x1-not-a-placeholder")


@pytest.mark.parametrize("dress", [str.upper, lambda t: t.replace("-", ""), lambda t: t.replace("-", "\uff0d"), lambda t: t.replace("-", " ")], ids=["upper", "no-dash", "fullwidth-dash", "spaces"])
def test_a_known_canary_is_caught_in_another_dress(tmp_path: Path, dress) -> None:  # type: ignore[no-untyped-def]
    made = make_canaries(2, "csv", tmp_path / "c.csv", None)
    token = made.tokens.read_text().splitlines()[1]
    ctx = load_context(canaries=made.tokens)
    info = classify(_status(error_msg=f"bad row {dress(token)}"), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, context=ctx)
    [f] = [f for f in info.findings if f.label == "canary"]
    assert f.likelihood == "VERY_LIKELY" and f.excerpt.startswith("known canary")


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("wrap", "where"),
    [
        (lambda b: base64.b32encode(b).decode(), "<base32@"),
        (lambda b: base64.b64encode(_raw_deflate(b)).decode(), ">|raw deflate"),
        (lambda b: base64.b64encode(brotli.compress(b)).decode(), ">|br"),
        (lambda b: "\n".join(textwrap.wrap(base64.b64encode(b).decode(), 12)), "<base64-lines@"),
        (lambda b: "\r\n".join(textwrap.wrap(b.hex(), 76)), "<hex-lines@"),
    ],
    ids=["base32", "raw-deflate-b64", "brotli-b64", "b64-lines-12", "hex-lines-76"],
)
def test_rows_in_encodings_without_a_marker(wrap, where: str) -> None:  # type: ignore[no-untyped-def]
    """No magic, no base64 look, no line long enough alone: still decoded, still the rows."""
    info = classify(_status(error_msg=wrap((_ROW_TEXT * 3).encode())), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST)
    assert "training-data" in info.labels and "metadata" not in info.labels, info.findings
    assert any(where in (f.field_path or "") for f in info.findings if f.label in ("pii", "training-data")), info.findings
    _clean_json(info, "alice.smith@example.com", "Alice Smith")


@pytest.mark.parametrize("pack", [_raw_deflate, brotli.compress], ids=["raw-deflate", "brotli"])
def test_a_compressed_body_without_its_content_encoding_is_opened(pack) -> None:  # type: ignore[no-untyped-def]
    info = classify(pack((_ROW_TEXT * 20).encode()), method="POST", path="/upload/blob", host="storage.example.com", content_type="application/octet-stream")
    assert "training-data" in info.labels, info.findings


def test_a_model_in_wrapped_base64_lines_is_an_artifact() -> None:
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(_model_tar_gz()).decode(), 900))
    info = classify(json.dumps({"uid": UID, "status": "error", "error_msg": wrapped}).encode(), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST)
    assert "model-artifact" in info.labels, info.findings


def test_random_bytes_and_ordinary_base32_ids_stay_quiet() -> None:
    """The unmarked decoders open nothing that is not there: noise is noise, and an id in
    base32 (upper case and digits) that decodes to no text is metadata."""
    info = classify(_status(error_msg="job " + base64.b32encode(os.urandom(20)).decode().rstrip("=")), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST)
    assert "metadata" in info.labels and not [f for f in info.findings if f.label in ("pii", "training-data")], info.findings
    info = classify(os.urandom(8192), method="POST", path="/upload/blob", host="storage.example.com", content_type="application/octet-stream")
    assert "training-data" not in info.labels, info.findings


def _log_ctx(**ctx: object) -> bytes:
    return json.dumps({"logs": [{"ts": "2024-01-01T00:00:00Z", "msg": "epoch done", "ctx": ctx, "stage": "train"}]}).encode()


@pytest.mark.parametrize(
    ("ctx", "label"),
    [
        ({"w": [round((i * 7919 % 2000) / 1000 - 1, 6) for i in range(4000)]}, "model-artifact"),
        ({"b": list(_model_tar_gz())}, "model-artifact"),
        ({"b": list(_ROW_TEXT.encode() * 4)}, "pii"),
        ({"ids": list(range(100_000, 100_300))}, "training-data"),
    ],
    ids=["weights", "model-bytes", "row-bytes", "integer-column"],
)
def test_numbers_in_an_array_are_data(ctx: dict[str, object], label: str) -> None:
    info = classify(_log_ctx(**ctx), method="POST", path=f"/projects/models/logs?uid={UID}&type=train", host=HOST, content_type="application/json")
    assert label in info.labels and "metadata" not in info.labels, info.findings
    assert any(f.detector == "tabular:numbers" for f in info.findings)


def test_short_number_lists_stay_metadata() -> None:
    body = _log_ctx(epoch=3, losses=[round(1 / (i + 1), 4) for i in range(100)], dims=[1024, 1024])
    info = classify(body, method="POST", path=f"/projects/models/logs?uid={UID}&type=train", host=HOST, content_type="application/json")
    assert info.labels == ["metadata"], info.findings


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "raw-utf8"])
def test_invisible_characters_hide_nothing(ascii_only: bool) -> None:
    path = f"/projects/models?uid={UID}&type=train"
    split_key = GRETEL_KEY[:1] + "\u200b" + GRETEL_KEY[1:]
    for msg, label in ((f"key {split_key}", "credential"), ("row Alice Smith, ali\u00adce.smith@exa\u2060mple.com, 4111 1111\u200c 1111 1111", "pii")):
        body = json.dumps({"uid": UID, "status": "error", "error_msg": msg}, ensure_ascii=ascii_only).encode()
        info = classify(body, method="PATCH", path=path, host=HOST, content_type="application/json")
        assert label in info.labels, (msg, info.findings)
        assert any((f.field_path or "").endswith("<visible>") for f in info.findings if f.label == label)
        _clean_json(info, GRETEL_KEY[5:], "smith@exa")
    body = json.dumps({"uid": UID, "status": "error", "error_msg": "échec de l'entraînement \u200b"}, ensure_ascii=ascii_only).encode()
    assert classify(body, method="PATCH", path=path, host=HOST, content_type="application/json").labels == ["metadata"]


@pytest.mark.parametrize("body", [os.urandom(300), b"\x01\x02\x03" * 50, "{\"uid\": \"x\"}\x00\x01\x02\x03\x04\x05".encode()], ids=["random", "controls", "json-then-binary"])
def test_bytes_on_a_json_route_are_never_metadata(body: bytes) -> None:
    info = classify(body, method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, content_type="application/json")
    assert "metadata" not in info.labels and "extra-field" in info.labels, info.findings


@pytest.mark.parametrize(
    ("msg", "found"),
    [
        ("auth failed with wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),
        ("creds: AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),
        ("path /a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t1", False),
        ("sha da39a3ee5e6b4b0d3255bfef95601890afd80709", False),
        ("etag Zm9vYmFyYmF6cXV4cXV1eHh4eHh4eHh4eHh4eHh4", False),
        ("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYX", False),
    ],
)
def test_an_aws_secret_without_its_keyword(msg: str, found: bool) -> None:
    info = classify(_status(error_msg=msg), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, content_type="application/json")
    secrets = [f for f in info.findings if f.detector == "credential:aws-secret-key"]
    assert len(secrets) == (1 if found else 0), info.findings
    _clean_json(info, "bPxRfiCYEXAMPLEKEY")


def test_rows_in_base85() -> None:
    info = classify(_status(error_msg="dump " + base64.b85encode(_ROW_TEXT.encode()).decode()), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, content_type="application/json")
    assert "training-data" in info.labels and "metadata" not in info.labels, info.findings
    assert any("<base85@5>" in (f.field_path or "") for f in info.findings if f.label in ("pii", "training-data")), info.findings
    noise = base64.b85encode(os.urandom(60)).decode()
    info = classify(_status(error_msg=f"job {noise}"), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, content_type="application/json")
    assert info.labels == ["metadata"], info.findings


@pytest.mark.parametrize(
    ("piece", "where"),
    [
        (lambda t: f"ref {t[:17]}", "body.error_msg"),
        (lambda t: f"ref {t[17:]}", "body"),
        (lambda t: f"ref {t[20:].upper()}", "body"),
        (lambda t: f"ids {t[10:22]}-{t[22:]}", "body"),
    ],
    ids=["first-half", "second-half", "tail-upper", "hex-split"],
)
def test_pieces_of_a_known_canary_split_across_requests(tmp_path: Path, piece, where: str) -> None:  # type: ignore[no-untyped-def]
    made = make_canaries(3, "csv", tmp_path / "c.csv", None)
    token = made.tokens.read_text().splitlines()[2]
    ctx = load_context(canaries=made.tokens)
    info = classify(_status(error_msg=piece(token)), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, context=ctx)
    [f] = [f for f in info.findings if f.label == "canary"]
    assert f.field_path == where and "known canary" in f.excerpt, f
    assert token[18:] not in info.model_dump_json()


def test_a_canary_piece_in_the_url_and_unrelated_hex_stay_apart(tmp_path: Path) -> None:
    made = make_canaries(3, "csv", tmp_path / "c.csv", None)
    token = made.tokens.read_text().splitlines()[1]
    ctx = load_context(canaries=made.tokens)
    info = classify(b"", method="GET", path=f"/users/me/billing?ref={token[14:]}", host=HOST, context=ctx)
    assert [f.field_path for f in info.findings if f.label == "canary"] == ["url"]
    info = classify(_status(error_msg="trace 0123456789abcdef0123456789abcdef"), method="PATCH", path=f"/projects/models?uid={UID}&type=train", host=HOST, context=ctx)
    assert info.labels == ["metadata"], info.findings
