"""Requests the proxy once let pass without a word in the store (red-team findings).

An HTTP/1 chunked request ending in trailer fields crashed mitmproxy's connection layer:
no hook ran after `requestheaders`, the client waited on a silent connection, nothing was
recorded. And in enforce mode, with --connect-to, every request on a keep-alive client
connection opened one more upstream connection until mitmproxy's limit of five per
address: the sixth waited forever, unanswered and unrecorded.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from auditor.model import REFUSED_NOTE, EgressEvent
from auditor.sim.ca import ThrowawayCA

from .conftest import API, RunningProxy, Upstream, proxy_config, running_proxy, wait_for_events

CAP = 64 * 1024
JSON = {"content-type": "application/json"}
LEAK_ROW = b"alice,alice@example.com,123-45-6789"
LEAK_LOG = {"ts": "2025-02-11T10:00:00Z", "msg": "Training failed on rows: name,email,ssn\nalice,alice@example.com,123-45-6789\nbob,bob@example.com,987-65-4321", "seq": 3}


@pytest.fixture(scope="module")
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream) -> Iterator[RunningProxy]:
    """One proxy per mode (tests pick it with indirect parametrization); one runs at a time."""
    mode = request.param
    config = proxy_config(tmp_path_factory.mktemp(f"silent-{mode}"), proxy_confdir, test_ca, overlays=[overlay_file], mode=mode, inspect_cap=CAP)
    with running_proxy(config) as p:
        yield p


def _until(cond: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 10
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _tunnel(proxy: RunningProxy) -> ssl.SSLSocket:
    """CONNECT to the API through the proxy and open TLS with the proxy's CA, as a client would."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.sendall(f"CONNECT {API}:443 HTTP/1.1\r\nHost: {API}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, "proxy closed the CONNECT"
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    return ssl.create_default_context(cafile=str(proxy.ca_pem)).wrap_socket(sock, server_hostname=API)


def _read_to_close(tls: ssl.SSLSocket) -> bytes:
    """Everything until the proxy closes; a proxy that leaves the connection open fails here (socket timeout)."""
    chunks = []
    while True:
        try:
            data = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _chunked_with_trailer(path: str, body: bytes) -> tuple[bytes, bytes]:
    """A chunked request up to its last data chunk, and its end: the zero chunk with an X-Data trailer."""
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {API}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ntrailer: X-Data\r\n\r\n".encode()
        + b"%x\r\n%b\r\n" % (len(body), body)
    )
    return head, b"0\r\nX-Data: " + LEAK_ROW + b"\r\n\r\n"


def _trailer_event(proxy: RunningProxy, tag: str) -> EgressEvent:
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and tag in e.http.query)
    assert any("trailer fields" in n for n in event.notes), event.notes
    assert event.payload is not None and not event.payload.inspected and event.payload.not_inspected_reason, event.payload
    assert event.decision is not None and event.decision.action != "allowed", event.decision
    assert "body-truncated" in event.observations
    return event


@pytest.mark.parametrize("proxy", ["enforce"], indirect=True)
def test_trailers_in_enforce_mode_are_refused_recorded_and_never_sent(proxy: RunningProxy, upstream: Upstream) -> None:
    path = "/projects/models?uid=trailer-enforce&type=train"
    head, end = _chunked_with_trailer(path, json.dumps({"uid": "trailer-enforce", "status": "pending"}).encode())
    with _tunnel(proxy) as tls:
        tls.sendall(head + end)
        reply = _read_to_close(tls)
    assert b"200 OK" not in reply
    event = _trailer_event(proxy, "trailer-enforce")
    assert any(n.startswith("not forwarded") for n in event.notes) and REFUSED_NOTE in event.notes, event.notes
    assert event.decision is not None and event.decision.rule_id == "payload.not-inspected"
    assert path not in upstream.paths() and path not in upstream.started


@pytest.mark.parametrize("proxy", ["audit"], indirect=True)
def test_trailers_in_audit_mode_after_the_head_went_upstream_are_recorded_as_sent_in_part(proxy: RunningProxy, upstream: Upstream) -> None:
    path = "/projects/models?uid=trailer-audit&type=train"
    head, end = _chunked_with_trailer(path, json.dumps({"uid": "trailer-audit", "status": "pending"}).encode())
    with _tunnel(proxy) as tls:
        tls.sendall(head)  # a body of unknown length streams in audit mode: its head goes upstream at once
        assert _until(lambda: path in upstream.started), "the request head never reached the upstream"
        tls.sendall(end)
        _read_to_close(tls)
    event = _trailer_event(proxy, "trailer-audit")
    assert any(n.startswith("forwarded in part: the request head") for n in event.notes), event.notes
    assert REFUSED_NOTE not in event.notes


@pytest.mark.parametrize("proxy", ["enforce"], indirect=True)
def test_keep_alive_connection_serves_and_records_every_request_around_a_refusal(proxy: RunningProxy, upstream: Upstream) -> None:
    tags = [f"keepalive-{i}" for i in range(8)]  # more than mitmproxy's five upstream connections per address
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10) as c:
        for i, tag in enumerate(tags):
            if i == 2:
                refused = c.post(f"https://{API}/v1/logs/keepalive-refused", content=json.dumps(LEAK_LOG), headers=JSON)
                assert refused.status_code == 403
            r = c.patch(f"https://{API}/projects/models?uid={tag}&type=train", content=json.dumps({"uid": tag, "status": "pending"}), headers=JSON)
            assert r.status_code == 200, tag
    assert all(f"/projects/models?uid={tag}&type=train" in upstream.paths() for tag in tags)
    found = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and "keepalive-" in e.http.query, count=len(tags))
    assert sorted(e.http.query for e in found if e.http and e.http.query) == sorted(f"uid={tag}&type=train" for tag in tags)
    assert all(e.decision is not None and e.decision.action == "allowed" for e in found)
    [refusal] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.path == "/v1/logs/keepalive-refused")
    assert refusal.decision is not None and refusal.decision.action == "violation"


@pytest.mark.parametrize("proxy", ["audit", "enforce"], indirect=True)
def test_a_response_with_trailers_leaves_its_request_recorded(proxy: RunningProxy, upstream: Upstream) -> None:
    """An upstream that ends its answer with trailer fields crashed mitmproxy's reader,
    and the request it had received was never recorded: a destination could hide them.
    Now the answer is cut where the trailers begin and the request is recorded."""
    mode = "enforce" if "enforce" in str(proxy.store) else "audit"
    tag = f"chunked-trailers-{mode}"
    path = f"/projects/models?uid={tag}&type=train"
    with _tunnel(proxy) as tls:
        tls.sendall(f"PATCH {path} HTTP/1.1\r\nHost: {API}\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n".encode() + json.dumps({"uid": tag[:21], "status": "active"}).encode().ljust(40))
        reply = _read_to_close(tls)
    assert not reply.endswith(b"0\r\n\r\n"), reply[-200:]  # cut: the answer had started streaming back
    assert path in upstream.paths()
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and tag in e.http.query)
    assert any("response trailers are not supported" in n for n in event.notes), event.notes
