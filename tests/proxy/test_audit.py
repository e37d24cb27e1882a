"""Audit mode through the real proxy: real clients, real TLS upstreams on loopback, one
event per request in the store, and nothing changed on the way."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from websockets.sync.client import connect as ws_connect

from auditor.model import EgressEvent
from auditor.sim.ca import ThrowawayCA

from .conftest import (
    API,
    ARTIFACTS,
    FOREIGN,
    LOGIN_PASSWORD,
    OTHER_REGISTRY,
    REGISTRY,
    UPSTREAM_IP,
    RunningProxy,
    Upstream,
    events_of,
    https_upstream,
    plain_upstream,
    proxy_config,
    running_proxy,
    tcp_echo,
    wait_for_events,
    ws_upstream,
)

CAP = 64 * 1024
WS_IP = "127.0.7.3"
ECHO = ("127.0.7.4", 7000)
METADATA = {"uid": "6613d6a1f0c8b2b1a9e4d0c7", "status": "pending"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream, wrong_cert_upstream: Upstream) -> Iterator[RunningProxy]:
    tmp = tmp_path_factory.mktemp("audit")
    config = proxy_config(
        tmp, proxy_confdir, test_ca,
        overlays=[overlay_file],
        inspect_cap=CAP,
        passthrough=["s3.amazonaws.com"],
        connect_to=[
            f"{API}:443:{UPSTREAM_IP}:443", f"{ARTIFACTS}:443:{UPSTREAM_IP}:443", f"{FOREIGN}:443:{UPSTREAM_IP}:443", f"{REGISTRY}:443:{UPSTREAM_IP}:443", f"{OTHER_REGISTRY}:443:{UPSTREAM_IP}:443",
            f"s3.amazonaws.com:443:{UPSTREAM_IP}:443", "wrong.gretel.cloud:443:127.0.7.2:443",
            f"{API}:80:{UPSTREAM_IP}:80", f"ws.gretel.cloud:443:{WS_IP}:443", f"{FOREIGN}:7000:{ECHO[0]}:{ECHO[1]}", f"{FOREIGN}:9:{ECHO[0]}:9",
        ],
    )
    with plain_upstream(UPSTREAM_IP, 80), running_proxy(config) as p:
        yield p


def _client(proxy: RunningProxy, **kw: object) -> httpx.Client:
    return httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10, **kw)  # type: ignore[arg-type]


def _wait_for(store: str, predicate, timeout: float = 10.0) -> list[EgressEvent]:  # type: ignore[no-untyped-def]
    return wait_for_events(store, predicate, 1, timeout)


def _by_path(store: str, path: str, count: int = 1) -> list[EgressEvent]:
    return wait_for_events(store, lambda e: e.http is not None and e.http.path == path, count)


def test_httpx_http11_metadata_is_recorded_allowed_and_redacted(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.patch(f"https://{API}/projects/models?uid=u-httpx&type=train&token=s3cr3t-value", content=json.dumps(METADATA), headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert "/projects/models?uid=u-httpx&type=train&token=s3cr3t-value" in upstream.paths()  # unchanged on the way
    [event] = _by_path(proxy.store, "/projects/models")
    assert event.sensor_id == "proxy-test" and event.kind == "http"
    d = event.destination
    assert (d.host, d.sni, d.http_host, d.ip, d.port, d.tls) == (API, API, API, UPSTREAM_IP, 443, True)
    assert event.source.ip == "127.0.0.1" and event.source.scope == "pod"
    assert event.http is not None and event.http.method == "PATCH" and event.http.status == 200
    assert "s3cr3t" not in (event.http.query or "") and "token=REDACTED" in (event.http.query or "")
    body = json.dumps(METADATA).encode()
    assert event.http.request_bytes_wire == len(body) and event.http.request_bytes_decoded == len(body)
    assert event.payload is not None and event.payload.sha256 == hashlib.sha256(body).hexdigest()
    assert event.payload.inspected and "metadata" in event.payload.labels
    assert event.decision is not None and event.decision.action == "allowed", event.decision


def test_curl_and_requests_one_event_per_request(proxy: RunningProxy) -> None:
    for i in range(3):
        out = subprocess.run(
            ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(proxy.ca_pem), f"https://{API}/users/me/billing?n={i}"],
            capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr
    session = requests.Session()
    session.trust_env = False
    session.verify = str(proxy.ca_pem)
    session.proxies = {"https": proxy.url}
    for i in range(4):
        assert session.get(f"https://{API}/opt/containers/get_login", params={"n": i}).status_code == 200
    session.close()
    assert len(_by_path(proxy.store, "/users/me/billing", 3)) == 3
    logins = _by_path(proxy.store, "/opt/containers/get_login", 4)
    assert len(logins) == 4
    assert all(e.decision is not None and e.decision.action == "allowed" for e in logins)


def test_a_pull_from_a_registry_get_login_did_not_name(proxy: RunningProxy) -> None:
    """Red flag 10: the registry named in a (gzip'd) get_login answer is recorded, its
    password is not, and a pull from any other registry is a violation."""
    with _client(proxy) as c:
        assert c.get(f"https://{API}/opt/containers/get_login", params={"rf": "10"}).json()["data"]["registry"] == f"https://{REGISTRY}"
        assert c.get(f"https://{REGISTRY}/v2/gretelai/models-tabular/manifests/v1").status_code == 200
        assert c.head(f"https://{FOREIGN}/v2/gretelai/models-tabular/blobs/sha256:{'a' * 64}").status_code == 200
        assert c.get(f"https://{FOREIGN}/v2-not-the-registry-api/x").status_code == 200
    [login] = _wait_for(proxy.store, lambda e: e.http is not None and e.http.query == "rf=10")
    assert login.http is not None and login.http.login_registry == REGISTRY
    assert all(LOGIN_PASSWORD not in e.model_dump_json() for e in events_of(proxy.store))
    [named] = _by_path(proxy.store, "/v2/gretelai/models-tabular/manifests/v1")
    assert "registry-not-named" not in named.observations
    [other] = _by_path(proxy.store, f"/v2/gretelai/models-tabular/blobs/sha256:{'a' * 64}")
    assert "registry-not-named" in other.observations and f"get_login named {REGISTRY}" in other.notes
    assert other.decision is not None and "obs.registry-not-named" in other.decision.rule_ids
    [not_a_pull] = _by_path(proxy.store, "/v2-not-the-registry-api/x")
    assert "registry-not-named" not in not_a_pull.observations


def test_only_the_contracts_api_names_the_registry_and_unopened_pulls_are_checked_by_name(proxy: RunningProxy, test_ca: ThrowawayCA) -> None:
    with _client(proxy) as c:
        assert c.get(f"https://{FOREIGN}/opt/containers/get_login", params={"rf": "foreign"}).status_code == 200
        assert c.get(f"https://{API}/opt/containers/get_login", params={"rf": "chunked"}).status_code == 200
    [foreign] = _wait_for(proxy.store, lambda e: e.http is not None and e.http.query == "rf=foreign")
    assert foreign.http is not None and foreign.http.login_registry is None  # a host outside the contract names nothing
    [chunked] = _wait_for(proxy.store, lambda e: e.http is not None and e.http.query == "rf=chunked")
    assert chunked.http is not None and chunked.http.login_registry == REGISTRY  # no Content-Length: streamed, its head kept
    # a node runtime that does not trust the audit CA (containerd often does not): the tunnel is judged by its name
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(test_ca.cert_path)), trust_env=False, timeout=10) as c:
        with pytest.raises(httpx.ConnectError):
            c.get(f"https://{OTHER_REGISTRY}/v2/")
    [unopened] = _wait_for(proxy.store, lambda e: e.kind == "tls" and e.destination.sni == OTHER_REGISTRY)
    assert {"tls-not-opened", "registry-not-named"} <= set(unopened.observations)
    assert unopened.decision is not None and "obs.registry-not-named" in unopened.decision.rule_ids


def test_domain_fronting_is_observed(proxy: RunningProxy) -> None:
    with _client(proxy) as c:
        r = c.get(f"https://{API}/fronted", headers={"Host": FOREIGN})
    assert r.status_code == 200  # audit mode changes nothing
    [event] = _by_path(proxy.store, "/fronted")
    assert event.destination.sni == API and event.destination.http_host == FOREIGN
    assert "sni-host-mismatch" in event.observations
    assert event.decision is not None and event.decision.action == "violation"


def test_client_rejecting_the_proxy_ca_is_unverified(proxy: RunningProxy, test_ca: ThrowawayCA) -> None:
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(test_ca.cert_path)), trust_env=False, timeout=10) as c:
        with pytest.raises(httpx.ConnectError):
            c.get(f"https://{ARTIFACTS}/pinned")
    [event] = _wait_for(proxy.store, lambda e: e.kind == "tls" and e.destination.sni == ARTIFACTS)
    assert "tls-not-opened" in event.observations
    assert event.decision is not None and event.decision.action == "unverified"
    # audit mode learns the pinned host: the same client now gets through, passed through unopened
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(test_ca.cert_path)), trust_env=False, timeout=10) as c:
        assert c.get(f"https://{ARTIFACTS}/pinned-again").status_code == 200
    passed = _wait_for(proxy.store, lambda e: e.kind == "tls" and e.destination.sni == ARTIFACTS and e.flow is not None and e.flow.bytes_up > 0)
    assert passed and passed[0].decision is not None and passed[0].decision.action == "unverified"


def test_passthrough_host_records_sni_and_bytes(proxy: RunningProxy, test_ca: ThrowawayCA, upstream: Upstream) -> None:
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(test_ca.cert_path)), trust_env=False, timeout=10) as c:
        assert c.get("https://s3.amazonaws.com/layer-bucket/passthrough").status_code == 200
    assert "/layer-bucket/passthrough" in upstream.paths()
    [event] = _wait_for(proxy.store, lambda e: e.kind == "tls" and e.destination.sni == "s3.amazonaws.com")
    assert event.flow is not None and event.flow.bytes_up > 100 and event.flow.bytes_down > 100
    assert "tls-not-opened" in event.observations and event.destination.ip == UPSTREAM_IP
    assert event.payload is not None and not event.payload.inspected
    # a pod reaching the nodes' S3 host is a violation on its own; unopened TLS is never allowed
    assert event.decision is not None and "obs.tls-not-opened" in event.decision.rule_ids


def test_upstream_certificate_not_naming_the_sni(proxy: RunningProxy, wrong_cert_upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.get("https://wrong.gretel.cloud/cert")
    assert r.status_code == 502
    assert wrong_cert_upstream.paths() == []
    events = _wait_for(proxy.store, lambda e: e.destination.sni == "wrong.gretel.cloud" or e.destination.host == "wrong.gretel.cloud")
    assert any("cert-name-mismatch" in e.observations for e in events), [e.notes for e in events]


def test_plaintext_http_to_a_tls_endpoint(proxy: RunningProxy) -> None:
    with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as c:
        assert c.get(f"http://{API}/plain").status_code == 200
    [event] = _by_path(proxy.store, "/plain")
    assert "plaintext-http" in event.observations
    assert event.decision is not None and event.decision.action == "violation"


def test_direct_ip_destination(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        assert c.get(f"https://{UPSTREAM_IP}/by-ip").status_code == 200  # the upstream's cert names its IP
    [event] = _by_path(proxy.store, "/by-ip")
    assert event.destination.host == UPSTREAM_IP and "direct-ip" in event.observations
    assert event.decision is not None and event.decision.action == "violation"


def test_large_bodies_stream_hashed_and_bounded(proxy: RunningProxy, upstream: Upstream) -> None:
    big = b"0123456789abcdef" * (3 * 1024 * 1024 // 16)
    with _client(proxy) as c:
        r = c.put(f"https://{API}/big-upload", content=big, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and r.json()["received"] == len(big)
        chunked = c.post(f"https://{API}/chunked", content=iter([b'{"uid": "x",', b' "status": "ok"}']), headers={"content-type": "application/json"})
        assert chunked.status_code == 200
        resp = c.get(f"https://{API}/big-response")
        assert len(resp.content) == 3 * 1024 * 1024
    [event] = _by_path(proxy.store, "/big-upload")
    assert event.payload is not None and event.payload.size == len(big)
    assert event.payload.sha256 == hashlib.sha256(big).hexdigest()
    assert event.http is not None and event.http.request_bytes_wire == len(big)
    [small] = _by_path(proxy.store, "/chunked")
    assert small.payload is not None and small.payload.inspected  # unknown length, under the cap: classified whole
    [down] = _by_path(proxy.store, "/big-response")
    assert down.http is not None and down.http.response_bytes_wire == 3 * 1024 * 1024


def test_websocket_client_messages_each_classified(proxy: RunningProxy, test_ca: ThrowawayCA) -> None:
    cert = test_ca.issue(["ws.gretel.cloud"], [WS_IP])
    tls = ssl.create_default_context(cafile=str(proxy.ca_pem))
    with ws_upstream(WS_IP, 443, cert) as received:
        with ws_connect("wss://ws.gretel.cloud/stream", proxy=proxy.url, ssl=tls, open_timeout=10) as ws:
            ws.send(json.dumps({"ts": "2025-02-11T10:00:00Z", "msg": "Training data loaded", "ctx": {"record_count": 302}}))
            assert ws.recv(timeout=5) == "ack"
            ws.send("name,email,ssn\nalice,alice@example.com,123-45-6789\nbob,bob@example.com,987-65-4321\ncarol,carol@example.com,555-12-3456\n")
            assert ws.recv(timeout=5) == "ack"
        assert len(received) == 2
    messages = _wait_for(proxy.store, lambda e: e.kind == "websocket")
    deadline = time.monotonic() + 5
    while len(messages) < 2 and time.monotonic() < deadline:
        messages = _wait_for(proxy.store, lambda e: e.kind == "websocket")
    assert len(messages) == 2
    assert all(m.payload is not None and m.payload.inspected for m in messages)
    assert any(m.decision is not None and m.decision.action == "violation" for m in messages)


def test_raw_tcp_in_a_tunnel_counts_bytes(proxy: RunningProxy) -> None:
    with tcp_echo(*ECHO) as received:
        with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
            s.sendall(f"CONNECT {FOREIGN}:7000 HTTP/1.1\r\nHost: {FOREIGN}:7000\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.sendall(b"\x00\x01binary-protocol\x02")
            assert s.recv(4096) == b"\x00\x01BINARY-PROTOCOL\x02"
        assert received
    [event] = _wait_for(proxy.store, lambda e: e.kind == "tcp")
    assert event.flow is not None and event.flow.bytes_up == 18 and event.flow.bytes_down == 18
    assert event.destination.host == FOREIGN and event.destination.ip == ECHO[0] and event.destination.port == ECHO[1]
    assert event.decision is not None and event.decision.action == "violation"


# --- bad input: recorded, and the proxy keeps serving -----------------------------------


def _still_serving(proxy: RunningProxy, tag: str) -> None:
    with _client(proxy) as c:
        assert c.get(f"https://{API}/alive-{tag}").status_code == 200


def _plain(proxy: RunningProxy, raw: bytes, read: bool = True) -> bytes:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(raw)
        if not read:
            return b""
        s.settimeout(1.0)
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_malformed_http_is_answered_and_others_served(proxy: RunningProxy) -> None:
    reply = _plain(proxy, b"GARBAGE \x00\xff not http at all\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") or reply == b""
    _still_serving(proxy, "malformed")


def test_client_hanging_up_mid_body(proxy: RunningProxy, upstream: Upstream) -> None:
    head = f"POST http://{API}/hangup HTTP/1.1\r\nHost: {API}\r\nContent-Length: 5000\r\ncontent-type: application/json\r\n\r\n"
    _plain(proxy, head.encode() + b'{"uid": "partial', read=False)
    [event] = _by_path(proxy.store, "/hangup")
    assert {"client-disconnect", "body-truncated"} & set(event.observations), event
    assert "/hangup" not in upstream.paths()
    _still_serving(proxy, "hangup")


def test_lying_content_length(proxy: RunningProxy) -> None:
    body = b'{"uid": "abc", "status": "pending"}'
    head = f"PATCH http://{API}/lying HTTP/1.1\r\nHost: {API}\r\nContent-Length: 10\r\ncontent-type: application/json\r\n\r\n"
    reply = _plain(proxy, head.encode() + body)
    assert reply.startswith(b"HTTP/1.1 200")
    [event] = _by_path(proxy.store, "/lying")
    assert event.http is not None and event.http.request_bytes_wire == 10, (event.notes, event.observations)
    _still_serving(proxy, "lying")


def test_broken_content_encoding(proxy: RunningProxy) -> None:
    garbage = b"\x1f\x8b\x08\x00" + b"this is not deflate data" * 4
    with _client(proxy) as c:
        r = c.patch(f"https://{API}/projects/models?uid=enc&type=train", content=garbage, headers={"content-encoding": "gzip", "content-type": "application/json"})
        assert r.status_code == 200
        ok = c.patch(f"https://{API}/projects/models?uid=gz&type=train", content=gzip.compress(json.dumps(METADATA).encode()), headers={"content-encoding": "gzip", "content-type": "application/json"})
        assert ok.status_code == 200
    events = _by_path(proxy.store, "/projects/models", 3)
    broken = [e for e in events if e.http and e.http.query and "uid=enc" in e.http.query]
    assert broken and "malformed" in broken[0].observations
    assert broken[0].decision is not None and broken[0].decision.action != "allowed"
    good = [e for e in events if e.http and e.http.query and "uid=gz" in e.http.query]
    assert good and good[0].http is not None and good[0].http.request_bytes_decoded == len(json.dumps(METADATA))


def test_websocket_flood_does_not_stop_the_proxy(proxy: RunningProxy, test_ca: ThrowawayCA) -> None:
    cert = test_ca.issue(["ws.gretel.cloud"], [WS_IP])
    tls = ssl.create_default_context(cafile=str(proxy.ca_pem))
    with ws_upstream(WS_IP, 443, cert) as received:
        with ws_connect("wss://ws.gretel.cloud/flood", proxy=proxy.url, ssl=tls, open_timeout=10, max_queue=None) as ws:
            for i in range(2000):
                ws.send(f'{{"seq": {i}}}')
            _still_serving(proxy, "flood")
            deadline = time.monotonic() + 20
            while len(received) < 2000 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(received) == 2000
    flood = _wait_for(proxy.store, lambda e: e.kind == "websocket" and e.http is not None and e.http.path == "/flood")
    deadline = time.monotonic() + 10
    while len(flood) < 2000 and time.monotonic() < deadline:
        time.sleep(0.2)
        flood = _wait_for(proxy.store, lambda e: e.kind == "websocket" and e.http is not None and e.http.path == "/flood")
    assert len(flood) == 2000


def test_connect_that_cannot_reach_upstream_is_recorded(proxy: RunningProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT {FOREIGN}:9 HTTP/1.1\r\nHost: {FOREIGN}:9\r\n\r\n".encode())  # mapped to a closed loopback port
        assert s.recv(4096).startswith(b"HTTP/1.1 502")
    [event] = _wait_for(proxy.store, lambda e: e.destination.host == FOREIGN and e.destination.port == 9)
    assert event.kind == "tcp" and event.flow is not None and event.flow.tcp_state == "attempted"
    assert event.decision is not None and event.decision.action == "violation"


def _pooled_run(tmp: Path, confdir: Path, test_ca: ThrowawayCA, overlay: Path, workers: int) -> tuple[list[EgressEvent], dict[str, int]]:
    """Big bodies of every verdict through a proxy; the proxy stops right after the last answer."""
    history = [{"status": "active", "ts": f"2025-02-11T10:{i // 60 % 60:02d}:{i % 60:02d}Z"} for i in range(1200)]
    status = json.dumps({"uid": "6613d6a1f0c8b2b1a9e4d0c7", "status": "active", "status_history": history}).encode()
    table = ("name,email,account\n" + "".join(f"person {i},p{i}@example.com,ACC-{i:08d}\n" for i in range(1500))).encode()
    assert 32 * 1024 < len(status) < CAP and 32 * 1024 < len(table) < CAP
    config = proxy_config(tmp, confdir, test_ca, overlays=[overlay], inspect_cap=CAP, classify_workers=workers)
    with running_proxy(config) as p, _client(p) as c:
        for i in range(3):
            assert c.patch(f"https://{API}/projects/models?uid=u{i}&type=train", content=status, headers={"content-type": "application/json"}).status_code == 200
        assert c.put(f"https://{ARTIFACTS}/upload/train.csv", content=table, headers={"content-type": "text/csv"}).status_code == 200
        assert c.patch(f"https://{API}/projects/models?uid=fronted", content=status, headers={"Host": FOREIGN, "content-type": "application/json"}).status_code == 200
    assert p.addon is not None
    return events_of(config.store), dict(p.addon.counts)  # type: ignore[attr-defined]


def test_big_bodies_judged_in_worker_processes_as_on_the_event_loop(
    tmp_path: Path, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream
) -> None:
    def verdicts(events: list[EgressEvent]) -> list[tuple[object, ...]]:
        http = sorted((e for e in events if e.kind == "http" and e.http is not None), key=lambda e: (e.http.path, e.http.query or ""))  # type: ignore[union-attr]
        return [
            (e.http.path, e.http.query, e.payload.sha256 if e.payload else None, tuple(e.payload.labels) if e.payload else (),  # type: ignore[union-attr]
             tuple(sorted(e.observations)), e.decision.action if e.decision else None, e.decision.rule_id if e.decision else None)
            for e in http
        ]

    pooled, pooled_counts = _pooled_run(tmp_path / "workers", proxy_confdir, test_ca, overlay_file, workers=1)
    inline, inline_counts = _pooled_run(tmp_path / "inline", proxy_confdir, test_ca, overlay_file, workers=0)
    assert pooled_counts["classified_in_workers"] == 5 and inline_counts["classified_in_workers"] == 0
    assert verdicts(pooled) == verdicts(inline)
    by_path = {(e[0], e[1]): e for e in verdicts(pooled)}
    assert len(by_path) == 5  # every event recorded, though the proxy stopped right after the last answer
    upload = by_path[("/upload/train.csv", None)]
    assert "training-data" in upload[3] and upload[5] == "violation"
    fronted = by_path[("/projects/models", "uid=fronted")]
    assert "sni-host-mismatch" in fronted[4] and fronted[5] == "violation"
    assert by_path[("/projects/models", "uid=u0&type=train")][3] == ("metadata",)


def test_connect_to_another_port_is_recorded_as_the_port_asked_for(tmp_path: Path, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path) -> None:
    """A test server on another port stands in for the endpoint: the job asked for :443, so the
    event (and the policy) says :443, and a note says where the proxy delivered it."""
    test_server = ("127.0.7.6", 18443)
    config = proxy_config(tmp_path, proxy_confdir, test_ca, overlays=[overlay_file], connect_to=[f"{API}:443:{test_server[0]}:{test_server[1]}"])
    with https_upstream(*test_server, test_ca.issue([API], [test_server[0]])) as up, running_proxy(config) as p, _client(p) as c:
        assert c.get(f"https://{API}/users/me/billing").status_code == 200
        [event] = _by_path(p.store, "/users/me/billing")
    assert up.paths() == ["/users/me/billing"]
    assert (event.destination.host, event.destination.ip, event.destination.port) == (API, test_server[0], 443)
    assert "delivered to 127.0.7.6:18443 by --connect-to" in event.notes
    assert event.decision is not None and event.decision.action == "allowed", event.decision
