"""Enforce mode: a refused request never reaches the upstream server, and the store
says why, with the same decision the client's 403 names."""

from __future__ import annotations

import json
import subprocess
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditor.model import EgressEvent
from auditor.sim.ca import ThrowawayCA

from .conftest import API, FOREIGN, RunningProxy, Upstream, events_of, proxy_config, running_proxy

CAP = 64 * 1024
LEAK_LOG = {
    "ts": "2025-02-11T10:00:00Z",
    "msg": "Training failed on rows: name,email,ssn\nalice,alice@example.com,123-45-6789\nbob,bob@example.com,987-65-4321\ncarol,carol@example.com,555-12-3456",
    "seq": 3,
    "stage": "train",
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream) -> Iterator[RunningProxy]:
    config = proxy_config(tmp_path_factory.mktemp("enforce"), proxy_confdir, test_ca, overlays=[overlay_file], mode="enforce", inspect_cap=CAP)
    with running_proxy(config) as p:
        yield p


def _client(proxy: RunningProxy, **kw: object) -> httpx.Client:
    return httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10, **kw)  # type: ignore[arg-type]


def _events(store: str, pred, count: int = 1) -> list[EgressEvent]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in events_of(store) if pred(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_allowed_metadata_passes(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.patch(f"https://{API}/projects/models?uid=enf-ok&type=train", content=json.dumps({"uid": "enf-ok", "status": "pending"}), headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert "/projects/models?uid=enf-ok&type=train" in upstream.paths()
    [event] = _events(proxy.store, lambda e: e.http is not None and e.http.query is not None and "enf-ok" in e.http.query)
    assert event.decision is not None and event.decision.action == "allowed"


def test_payload_violation_gets_403_naming_the_rule_and_never_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.post(f"https://{API}/v1/logs/leak-marker", content=json.dumps(LEAK_LOG), headers={"content-type": "application/json"})
    assert r.status_code == 403
    body = r.json()
    assert body["rule"] and body["error"] == "blocked by Boundary Auditor"
    assert not any("leak-marker" in p for p in upstream.paths())
    [event] = _events(proxy.store, lambda e: e.http is not None and e.http.path == "/v1/logs/leak-marker")
    assert event.http is not None and event.http.status == 403
    assert event.decision is not None and event.decision.action == "violation" and event.decision.rule_id == body["rule"]
    assert body["event"] == event.id
    assert any("refused by the proxy" in r for r in event.decision.reasons)


def test_destination_violation_refused_before_connecting(proxy: RunningProxy, upstream: Upstream) -> None:
    before = len(upstream.paths())
    with _client(proxy) as c:
        with pytest.raises(httpx.ProxyError) as info:
            c.get(f"https://{FOREIGN}/exfil-marker")
    assert "403" in str(info.value)
    assert len(upstream.paths()) == before and not any("exfil-marker" in p for p in upstream.paths())
    [event] = _events(proxy.store, lambda e: e.destination.host == FOREIGN)
    assert event.http is not None and event.http.method == "CONNECT" and event.http.status == 403
    assert event.destination.ip is None  # no upstream connection was ever made
    assert event.decision is not None and event.decision.action == "violation"


def test_fronting_refused_before_the_request_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.get(f"https://{API}/fronting-marker", headers={"Host": FOREIGN})
    assert r.status_code == 403
    assert not any("fronting-marker" in p for p in upstream.paths())
    [event] = _events(proxy.store, lambda e: e.http is not None and e.http.path == "/fronting-marker")
    assert "sni-host-mismatch" in event.observations and event.decision is not None and event.decision.action == "violation"


def test_http2_client(proxy: RunningProxy) -> None:
    # curl offers h2 first; httpx through a proxy tunnel prefers http/1.1, so curl is the HTTP/2 client here
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}", "--proxy", proxy.url, "--cacert", str(proxy.ca_pem), f"https://{API}/users/me/billing?h2=1"],
        capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and out.stdout == "2", (out.stdout, out.stderr)
    [event] = _events(proxy.store, lambda e: e.http is not None and e.http.query == "h2=1")
    assert event.destination.app_protocol == "h2" and event.http is not None and event.http.alpn == "h2"
    assert event.destination.http_host == API


def test_streamed_violation_is_withheld_from_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    rows = "".join(f"user{i},user{i}@example.com,{i:03d}-45-{i:04d}\n" for i in range(4000))
    body = ("name,email,ssn\n" + rows).encode()
    assert len(body) > CAP
    with _client(proxy) as c:
        r = c.post(f"https://{API}/v1/logs/stream-leak-marker", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 502  # the proxy cut the upstream request short
    seen = [s for s in upstream.seen if "stream-leak-marker" in s.path]
    assert all(len(s.body) < len(body) for s in seen)  # never the whole request
    [event] = _events(proxy.store, lambda e: e.http is not None and e.http.path == "/v1/logs/stream-leak-marker")
    assert event.decision is not None and event.decision.action == "violation"
    assert event.payload is not None and event.payload.size == len(body)
