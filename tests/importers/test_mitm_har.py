"""mitmproxy flow files and HAR become events, with bodies classified."""

from __future__ import annotations

import json
from pathlib import Path

from mitmproxy import io
from mitmproxy.test import tflow, tutils

from auditor.importers import import_file
from auditor.rules import judge, load_pack
from auditor.store.base import open_store

ROWS = "name,email,ssn\n" + "".join(f"user{i},user{i}@corp.example,{100 + i}-45-67{i:02d}\n" for i in range(30))


def _flow(host: str, method: str, path: str, body: bytes, content_type: str):  # type: ignore[no-untyped-def]
    req = tutils.treq(host=host, port=443, scheme=b"https", method=method.encode(), path=path.encode(),
                      content=body, headers=((b"host", host.encode()), (b"content-type", content_type.encode())))
    flow = tflow.tflow(req=req, resp=True)
    flow.client_conn.sni = host
    return flow


def test_mitm_flow_file_imports_and_judges(tmp_path: Path) -> None:
    path = tmp_path / "flows.mitm"
    with path.open("wb") as fh:
        writer = io.FlowWriter(fh)
        writer.add(_flow("api.gretel.cloud", "PATCH", "/projects/models?uid=m_1&type=train", b'{"uid": "m_1", "status": "pending"}', "application/json"))
        writer.add(_flow("api.gretel.cloud", "POST", "/v1/logs/model", json.dumps({"ts": "2026-01-01T00:00:00Z", "msg": ROWS, "seq": 1, "stage": "train"}).encode(), "application/json"))
        writer.add(tflow.ttcpflow())
    store = str(tmp_path / "e.db")
    result = import_file([path], store)
    assert result.format == "mitm" and result.imported == 3 and result.rejected == 0
    events = list(judge([e for e in open_store(store).events() if e.kind != "sensor"], load_pack()))
    patch, log, raw = events
    assert patch.payload and patch.payload.inspected and "metadata" in patch.payload.labels
    assert log.payload and "training-data" in log.payload.labels
    assert log.decision and log.decision.action == "violation"
    assert raw.kind == "tcp" and raw.decision and raw.decision.action != "allowed"


def test_truncated_mitm_file_keeps_what_it_read(tmp_path: Path) -> None:
    path = tmp_path / "flows.mitm"
    with path.open("wb") as fh:
        writer = io.FlowWriter(fh)
        writer.add(_flow("api.gretel.cloud", "GET", "/users/me/billing", b"", "application/json"))
        writer.add(_flow("api.gretel.cloud", "GET", "/users/me/billing", b"", "application/json"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    result = import_file([path], str(tmp_path / "e.db"))
    assert result.imported == 1 and result.rejected == 1
    assert "flow #2" in result.problems[0]


def test_har_with_training_rows_in_a_log_body(tmp_path: Path) -> None:
    har = {"log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": [
        {"startedDateTime": "2026-11-26T08:00:00.000Z", "time": 12, "serverIPAddress": "203.0.113.10",
         "request": {"method": "POST", "url": "https://api.gretel.cloud/v1/logs/model", "httpVersion": "HTTP/1.1",
                     "headers": [{"name": "Content-Type", "value": "application/json"}], "queryString": [], "cookies": [],
                     "headersSize": -1, "bodySize": 900,
                     "postData": {"mimeType": "application/json", "text": json.dumps({"ts": "x", "msg": ROWS, "seq": 2, "stage": "train"})}},
         "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "headers": [], "cookies": [],
                      "content": {"size": 2, "mimeType": "application/json"}, "redirectURL": "", "headersSize": -1, "bodySize": 2},
         "cache": {}, "timings": {"send": 0, "wait": 10, "receive": 2}},
        {"startedDateTime": "2026-11-26T08:00:01.000Z", "request": {"url": "https://x"}},
    ]}}
    path = tmp_path / "session.har"
    path.write_text(json.dumps(har))
    store = str(tmp_path / "e.db")
    result = import_file([path], store)
    assert result.format == "har" and result.imported == 1 and result.rejected == 1
    assert "log.entries[1]" in result.problems[0]
    event = next(e for e in open_store(store).events() if e.kind == "http")
    assert event.destination.ip == "203.0.113.10" and event.payload and "training-data" in event.payload.labels
