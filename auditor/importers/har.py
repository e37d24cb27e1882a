"""HAR 1.2 (browser devtools, Charles, Fiddler, mitmproxy's HAR export)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from auditor.classify import classify
from auditor.importers.common import Parsed, Rejected
from auditor.model import Destination, EgressEvent, HttpInfo
from auditor.redact import redact_query


def _header(headers: list[dict], name: str) -> str | None:
    for h in headers:
        if str(h.get("name", "")).lower() == name:
            return str(h.get("value"))
    return None


def parse_har(paths: list[Path], sensor_id: str) -> Parsed:
    path = paths[0]
    try:
        doc = json.loads(path.read_bytes())
        entries = doc["log"]["entries"]
    except (ValueError, KeyError, TypeError) as exc:
        yield Rejected(f"{path}: not a HAR file ({exc.__class__.__name__}: {exc}) (fix: export HAR 1.2 with content)")
        return
    for index, entry in enumerate(entries):
        try:
            yield _event(entry, sensor_id)
        except (KeyError, TypeError, ValueError) as exc:
            yield Rejected(f"{path}: log.entries[{index}]: {exc.__class__.__name__}: {exc} (fix: each entry needs request.method, request.url, startedDateTime)")


def _event(entry: dict, sensor_id: str) -> EgressEvent:
    req, resp = entry["request"], entry.get("response") or {}
    url = urlsplit(req["url"])
    headers = req.get("headers") or []
    post = req.get("postData") or {}
    body = post.get("text") or ""
    raw = base64.b64decode(body) if post.get("encoding") == "base64" else body.encode()
    content_type = post.get("mimeType") or _header(headers, "content-type")
    content_encoding = _header(headers, "content-encoding")
    payload = classify(  # bodyless too: the path, query and headers carry data out as well
        raw, method=req["method"], path=(url.path or "/") + (f"?{url.query}" if url.query else ""), host=url.hostname,
        content_type=content_type, content_encoding=content_encoding,
        headers=[(str(h.get("name", "")), str(h.get("value", ""))) for h in headers],
    )
    status = resp.get("status")
    return EgressEvent(
        time=datetime.fromisoformat(entry["startedDateTime"].replace("Z", "+00:00")),
        sensor_id=sensor_id,
        kind="http",
        destination=Destination(
            host=url.hostname,
            http_host=_header(headers, "host") or url.netloc,
            ip=(entry.get("serverIPAddress") or "").strip("[]") or None,
            port=url.port or (443 if url.scheme == "https" else 80),
            app_protocol=str(req.get("httpVersion") or "").lower() or None,
            tls=url.scheme in ("https", "wss"),
        ),
        http=HttpInfo(
            method=req["method"],
            scheme=url.scheme,
            path=url.path or "/",
            query=redact_query(url.query) if url.query else None,
            status=status if isinstance(status, int) and status > 0 else None,
            request_bytes_wire=max(int(req.get("bodySize") or 0), 0) or len(raw),
            request_bytes_decoded=len(raw),
            response_bytes_wire=max(int(resp.get("bodySize") or 0), 0) or None,
            response_bytes_decoded=max(int((resp.get("content") or {}).get("size") or 0), 0) or None,
            content_type=content_type,
            content_encoding=content_encoding,
        ),
        payload=payload,
        notes=["imported from HAR: body as the exporter kept it"] if raw else [],
    )
