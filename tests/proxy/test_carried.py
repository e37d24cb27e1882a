"""What a request carries outside its body (path, query keys, headers, cookies) is
judged like a body, bodyless requests included: in enforce mode such a request is
refused before it reaches upstream, while the agent's own headers and API key pass."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from auditor.model import EgressEvent
from auditor.sim.ca import ThrowawayCA

from .conftest import API, RunningProxy, Upstream, proxy_config, running_proxy, wait_for_events

ROWS = "alice,alice@example.com,123-45-6789\nbob,bob@example.com,987-65-4321\ncarol,carol@example.com,555-12-3456\n"
AGENT = {"Authorization": "grtu8f3a2b9c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70", "X-Gretel-Clusterid": "cl_2TQzSKdvhF9PNPqDxHXC7Zw8MFb"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, test_ca: ThrowawayCA, proxy_confdir: Path, overlay_file: Path, upstream: Upstream) -> Iterator[RunningProxy]:
    config = proxy_config(tmp_path_factory.mktemp("carried"), proxy_confdir, test_ca, overlays=[overlay_file], mode="enforce")
    with running_proxy(config) as p:
        yield p


def _event(store: str, marker: str) -> EgressEvent:
    found = wait_for_events(store, lambda e: e.http is not None and marker in (e.http.path + (e.http.query or "")))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("marker", "path", "headers"),
    [
        ("carried-path", "/projects/carried-path/" + quote(ROWS, safe=""), {}),
        ("carried-key", "/users/me/billing?carried-key&" + quote(ROWS, safe="") + "=1", {}),
        ("carried-header", "/projects/carried-header", {"X-Trace": base64.b64encode(ROWS.encode()).decode()}),
        ("carried-cookie", "/projects/carried-cookie", {"Cookie": "s=" + quote(ROWS)}),
    ],
)
def test_records_outside_the_body_are_refused(proxy: RunningProxy, upstream: Upstream, marker: str, path: str, headers: dict[str, str]) -> None:
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10) as c:
        r = c.get(f"https://{API}{path}", headers={**AGENT, **headers})
    assert r.status_code == 403
    assert not any(marker in p for p in upstream.paths())
    event = _event(proxy.store, marker)
    assert event.decision is not None and event.decision.action == "violation"
    assert event.payload is not None and "training-data" in event.payload.labels
    assert "alice@example.com" not in event.model_dump_json()


def test_the_agents_own_headers_pass(proxy: RunningProxy, upstream: Upstream) -> None:
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_pem)), trust_env=False, timeout=10) as c:
        r = c.get(f"https://{API}/users/me/billing?carried-ok=1", headers=AGENT)
    assert r.status_code == 200
    event = _event(proxy.store, "carried-ok")
    assert event.decision is not None and event.decision.action == "allowed"
    assert event.payload is not None and event.payload.labels == ["metadata"]
    assert AGENT["Authorization"] not in event.model_dump_json()
