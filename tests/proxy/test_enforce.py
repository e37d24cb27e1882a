"""Enforce mode: a refused request never reaches the upstream server, and the store
says why, with the same decision the client's 403 names. Bodies are held whole up to
the enforce cap and judged before a byte goes upstream; past the cap they are refused (413)."""

from __future__ import annotations

import json
import subprocess
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditor.model import REFUSED_NOTE
from auditor.sim.ca import ThrowawayCA

from .conftest import API, FOREIGN, RunningProxy, Upstream, proxy_config, running_proxy, wait_for_events

CAP = 64 * 1024
ENFORCE_CAP = 256 * 1024
LEAK_LOG = {
    "ts": "2025-02-11T10:00:00Z",
    "msg": "Training failed on rows: name,email,ssn\nalice,alice@example.com,123-45-6789\nbob,bob@example.com,987-65-4321\ncarol,carol@example.com,555-12-3456",
    "seq": 3,
    "stage": "train",
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream) -> Iterator[RunningProxy]:
    config = proxy_config(tmp_path_factory.mktemp("enforce"), proxy_confdir, test_ca, overlays=[overlay_file], mode="enforce", inspect_cap=CAP, enforce_cap=ENFORCE_CAP)
    with running_proxy(config) as p:
        yield p


def _client(proxy: RunningProxy, **kw: object) -> httpx.Client:
    return httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10, **kw)  # type: ignore[arg-type]


def test_allowed_metadata_passes(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.patch(f"https://{API}/projects/models?uid=enf-ok&type=train", content=json.dumps({"uid": "enf-ok", "status": "pending"}), headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert "/projects/models?uid=enf-ok&type=train" in upstream.paths()
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and "enf-ok" in e.http.query)
    assert event.decision is not None and event.decision.action == "allowed"


def test_payload_violation_gets_403_naming_the_rule_and_never_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.post(f"https://{API}/v1/logs/leak-marker", content=json.dumps(LEAK_LOG), headers={"content-type": "application/json"})
    assert r.status_code == 403
    body = r.json()
    assert body["rule"] and body["error"] == "blocked by Boundary Auditor"
    assert not any("leak-marker" in p for p in upstream.paths())
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.path == "/v1/logs/leak-marker")
    assert event.http is not None and event.http.status == 403
    assert event.decision is not None and event.decision.action == "violation" and event.decision.rule_id == body["rule"]
    assert body["event"] == event.id
    assert any("refused by the proxy" in r for r in event.decision.reasons) and REFUSED_NOTE in event.notes


def test_destination_violation_refused_before_connecting(proxy: RunningProxy, upstream: Upstream) -> None:
    before = len(upstream.paths())
    with _client(proxy) as c:
        with pytest.raises(httpx.ProxyError) as info:
            c.get(f"https://{FOREIGN}/exfil-marker")
    assert "403" in str(info.value)
    assert len(upstream.paths()) == before and not any("exfil-marker" in p for p in upstream.paths())
    [event] = wait_for_events(proxy.store, lambda e: e.destination.host == FOREIGN)
    assert event.http is not None and event.http.method == "CONNECT" and event.http.status == 403
    assert event.destination.ip is None  # no upstream connection was ever made
    assert event.decision is not None and event.decision.action == "violation"


def test_fronting_refused_before_the_request_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    with _client(proxy) as c:
        r = c.get(f"https://{API}/fronting-marker", headers={"Host": FOREIGN})
    assert r.status_code == 403
    assert not any("fronting-marker" in p for p in upstream.paths())
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.path == "/fronting-marker")
    assert "sni-host-mismatch" in event.observations and event.decision is not None and event.decision.action == "violation"


def test_http2_client(proxy: RunningProxy) -> None:
    # curl offers h2 first; httpx through a proxy tunnel prefers http/1.1, so curl is the HTTP/2 client here
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}", "--proxy", proxy.url, "--cacert", str(proxy.ca_pem), f"https://{API}/users/me/billing?h2=1"],
        capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0 and out.stdout == "2", (out.stdout, out.stderr)
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query == "h2=1")
    assert event.destination.app_protocol == "h2" and event.http is not None and event.http.alpn == "h2"
    assert event.destination.http_host == API


def _csv_leak(rows: int) -> bytes:
    return ("name,email,ssn\n" + "".join(f"user{i},user{i}@example.com,{i % 900 + 100:03d}-45-{i:04d}\n" for i in range(rows))).encode()


def test_violation_past_the_inspect_cap_is_held_and_never_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    body = _csv_leak(4000)
    assert CAP < len(body) <= ENFORCE_CAP
    with _client(proxy) as c:
        r = c.post(f"https://{API}/v1/logs/held-leak-marker", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 403 and r.json()["error"] == "blocked by Boundary Auditor"
    assert not any("held-leak-marker" in p for p in upstream.started)  # not even the request line went upstream
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.path == "/v1/logs/held-leak-marker")
    assert event.decision is not None and event.decision.action == "violation" and event.decision.rule_id == r.json()["rule"]
    assert event.payload is not None and event.payload.size == len(body)


def test_violation_judged_in_a_worker_process_never_reaches_upstream(proxy: RunningProxy, upstream: Upstream) -> None:
    body = _csv_leak(1500)
    assert 32 * 1024 <= len(body) <= CAP  # held whole and handed to a classifier process
    with _client(proxy) as c:
        r = c.post(f"https://{API}/v1/logs/pooled-leak-marker", content=body, headers={"content-type": "text/csv"})
        ok = c.patch(f"https://{API}/projects/models?uid=after-pooled&type=train", content=json.dumps({"uid": "after-pooled", "status": "active"}), headers={"content-type": "application/json"})
    assert r.status_code == 403 and ok.status_code == 200
    assert not any("pooled-leak-marker" in p for p in upstream.started)
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.path == "/v1/logs/pooled-leak-marker")
    assert event.decision is not None and event.decision.action == "violation" and event.decision.rule_id == r.json()["rule"]
    assert event.payload is not None and event.payload.inspected and "training-data" in event.payload.labels


def test_clean_body_past_the_inspect_cap_is_forwarded_whole(proxy: RunningProxy, upstream: Upstream) -> None:
    body = json.dumps({"uid": "held-ok", "status": "pending", "config": {"params": ["x" * 64] * 2000}}).encode()
    assert CAP < len(body) <= ENFORCE_CAP
    with _client(proxy) as c:
        r = c.patch(f"https://{API}/projects/models?uid=held-ok-marker", content=body, headers={"content-type": "application/json"})
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and "held-ok-marker" in e.http.query)
    assert event.decision is not None and event.decision.action != "violation", event.decision
    assert r.status_code == 200 and r.json()["received"] == len(body)
    [seen] = [s for s in upstream.seen if "held-ok-marker" in s.path]
    assert seen.body == body


def _refused_over_cap(r: httpx.Response, upstream: Upstream, marker: str) -> dict[str, object]:
    assert r.status_code == 413
    body = r.json()
    assert body["error"] == "blocked by Boundary Auditor" and body["rule"] == "payload.not-inspected"
    assert any("enforce cap" in reason for reason in body["reasons"])
    assert not any(marker in p for p in upstream.started)  # not a byte: not even the request line
    assert not any(marker in s.path for s in upstream.seen)
    return body


def test_body_over_the_enforce_cap_is_refused_before_connecting(proxy: RunningProxy, upstream: Upstream) -> None:
    body = b'{"uid": "big", "pad": "' + b"a" * ENFORCE_CAP + b'"}'
    with _client(proxy) as c:
        r = c.post(f"https://{API}/projects/models?uid=over-cap-marker", content=body, headers={"content-type": "application/json"})
    answer = _refused_over_cap(r, upstream, "over-cap-marker")
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and "over-cap-marker" in e.http.query)
    assert event.id == answer["event"] and event.http is not None and event.http.status == 413
    assert event.destination.ip is None  # no upstream connection was made for it
    assert event.payload is not None and not event.payload.inspected and event.payload.size == len(body)
    assert event.payload.not_inspected_reason and "enforce cap" in event.payload.not_inspected_reason
    assert event.decision is not None and event.decision.action != "allowed" and event.decision.rule_id == "payload.not-inspected"
    assert any("refused by the proxy" in reason for reason in event.decision.reasons)


def test_chunked_body_crossing_the_enforce_cap_is_refused_unsent(proxy: RunningProxy, upstream: Upstream) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(2 * ENFORCE_CAP // 16384 + 1):
            sent.append(16384)
            yield b"b" * 16384

    with _client(proxy) as c:
        r = c.post(f"https://{API}/projects/models?uid=chunked-cap-marker", content=chunks(), headers={"content-type": "application/octet-stream"})
    _refused_over_cap(r, upstream, "chunked-cap-marker")
    assert sum(sent) > ENFORCE_CAP
    [event] = wait_for_events(proxy.store, lambda e: e.http is not None and e.http.query is not None and "chunked-cap-marker" in e.http.query)
    assert event.payload is not None and not event.payload.inspected and ENFORCE_CAP < event.payload.size <= sum(sent)
    assert event.destination.ip is None
    assert event.decision is not None and event.decision.action != "allowed"
    # the connection was refused cleanly: the proxy still serves the next request
    with _client(proxy) as c:
        assert c.get(f"https://{API}/users/me/billing?after=chunked-cap").status_code == 200
