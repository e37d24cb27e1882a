"""mitmproxy flow files (`mitmdump -w`): the same facts the live addon records."""

from __future__ import annotations

from pathlib import Path

from mitmproxy import http, io, tcp
from mitmproxy.exceptions import FlowReadException

from auditor.classify import classify
from auditor.importers.common import Parsed, Rejected
from auditor.model import Destination, EgressEvent, FlowInfo, PayloadInfo
from auditor.proxy import checks
from auditor.proxy.events import destination_of, http_info, source_of, upstream_of, when


def parse_mitm(paths: list[Path], sensor_id: str) -> Parsed:
    path = paths[0]
    read = 0
    with path.open("rb") as fh:
        reader = io.FlowReader(fh)
        try:
            for flow in reader.stream():
                read += 1
                if isinstance(flow, http.HTTPFlow):
                    yield _http(flow, sensor_id)
                elif isinstance(flow, tcp.TCPFlow):
                    yield _tcp(flow, sensor_id)
        except FlowReadException as exc:
            yield Rejected(f"{path}: flow #{read + 1}: {exc} (fix: the file is truncated or not a mitmproxy flow file)")


def _http(flow: http.HTTPFlow, sensor_id: str) -> EgressEvent:
    req = flow.request
    info = http_info(flow)
    body = req.raw_content or b""
    info.request_bytes_wire = len(body)
    decoded = req.get_content(strict=False) if body else b""
    info.request_bytes_decoded = len(decoded or b"")
    if flow.response is not None:
        info.response_bytes_wire = len(flow.response.raw_content or b"")
    payload = classify(  # bodyless too: the path, query and headers carry data out as well
        body, method=req.method, path=req.path, host=req.pretty_host,
        content_type=info.content_type, content_encoding=info.content_encoding,
        headers=tuple(req.headers.items(multi=True)),
    )
    notes = []
    if flow.error:
        notes.append(f"flow error: {flow.error.msg}")
    dest = destination_of(flow, None)
    observations = checks.fronting(None, dest.sni, dest.http_host) + checks.direct_ip([dest.sni, dest.http_host, req.host])
    return EgressEvent(
        time=when(req.timestamp_start),
        sensor_id=sensor_id,
        kind="websocket" if flow.websocket else "http",
        source=source_of(flow.client_conn),
        destination=dest,
        http=info,
        payload=payload,
        observations=sorted(set(observations)),
        notes=notes,
    )


def _tcp(flow: tcp.TCPFlow, sensor_id: str) -> EgressEvent:
    ip, port = upstream_of(flow.server_conn)
    host = flow.server_conn.address[0] if flow.server_conn.address else None
    up = sum(len(m.content) for m in flow.messages if m.from_client)
    down = sum(len(m.content) for m in flow.messages if not m.from_client)
    return EgressEvent(
        time=when(flow.client_conn.timestamp_start),
        sensor_id=sensor_id,
        kind="tcp",
        source=source_of(flow.client_conn),
        destination=Destination(host=host, sni=flow.client_conn.sni, ip=ip, port=port, app_protocol="tcp"),
        flow=FlowInfo(direction="egress", bytes_up=up, bytes_down=down),
        payload=PayloadInfo(size=up, inspected=False, not_inspected_reason="raw-tcp"),
        observations=checks.direct_ip([host, flow.client_conn.sni]),
    )
