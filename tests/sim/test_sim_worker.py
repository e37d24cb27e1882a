"""The simulated worker runs the real call sequence, clean and leaky, and says what it sent."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from auditor.errors import AuditorError
from auditor.sim import SCENARIOS, Simulation, expectations, names, payloads, run_scenario
from auditor.sim.worker import DEFAULT_CANARY, ScenarioResult

VOCABULARY_OBSERVATIONS = {"direct-ip", "bypass", "sni-host-mismatch", "dns-tunnel", "registry-not-named"}
VOCABULARY_LABELS = {"training-data", "fingerprint-match", "canary", "model-artifact", "plaintext-credentials"}


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


@pytest.fixture(scope="module")
def clean(sim: Simulation) -> tuple[ScenarioResult, list, list]:  # type: ignore[type-arg]
    before, dns_before = len(sim.received), len(sim.dns_queries)
    result = run_scenario("clean", None, sim)
    return result, sim.received[before:], sim.dns_queries[dns_before:]


@pytest.fixture(scope="module")
def leaky(sim: Simulation) -> tuple[ScenarioResult, list, list]:  # type: ignore[type-arg]
    before, dns_before = len(sim.received), len(sim.dns_queries)
    result = run_scenario("leaky", None, sim, canary="ba-canary-0123456789abcdef01234567")
    return result, sim.received[before:], sim.dns_queries[dns_before:]


def test_clean_runs_the_real_sequence(clean: tuple[ScenarioResult, list, list]) -> None:  # type: ignore[type-arg]
    result, received, _ = clean
    assert result.ok, [(s.id, s.error) for s in result.steps if not s.ok]
    assert result.injected == []
    calls = [(r.method, r.path) for r in received if r.server == names.API]
    # Agent start, in the real agent's order.
    assert calls[:7] == [
        ("GET", "/users/me/billing"), ("GET", "/opt/containers/get_login"), ("GET", f"/projects/{names.PROJECT_NAME}"),
        ("GET", "/users/me/invites"), ("PATCH", calls[4][1]), ("GET", "/users/me/invites"), ("POST", "/jobs/receive_one"),
    ]
    assert calls[4][1].startswith("/users/me/invites/")
    polls = [r for r in received if r.path == "/jobs/receive_one"]
    assert all("runner_modes=hybrid" in r.query and f"cluster_guid={names.CLUSTER_GUID}" in r.query for r in polls)
    step = {s.id: s for s in result.steps}
    assert step["agent-receive-one-job"].status == 200 and step["agent-status-pending"].status == 200
    pending = next(r for r in received if r.method == "PATCH" and r.path == "/projects/models")
    assert json.loads(pending.body) == {"uid": pending.query.split("uid=")[1].split("&")[0], "status": "pending"}
    # Every agent request carries the key and the cluster headers.
    agent = [r for r in received if dict(r.headers).get("X-Gretel-Clusterid")]
    assert len(agent) >= 10
    assert all(dict(r.headers)["Authorization"].startswith("grt") for r in agent)


def test_clean_stays_inside_the_contract(clean: tuple[ScenarioResult, list, list]) -> None:  # type: ignore[type-arg]
    _, received, dns = clean
    allowed_servers = {names.API, names.ARTIFACTS, names.REGISTRY, names.LAYER_BUCKET_HOST, names.CUSTOMER_BUCKET_HOST}
    assert {r.server for r in received} <= allowed_servers
    assert {r.server for r in received} == allowed_servers
    assert all(r.http_host == r.server for r in received)  # no fronting
    writes = [r for r in received if r.method == "PUT"]
    assert {r.server for r in writes} == {names.CUSTOMER_BUCKET_HOST}
    assert {r.path.rsplit("/", 1)[1] for r in writes} == {"model.tar.gz", "report_json.json.gz"}
    artifacts = [r for r in received if r.server == names.ARTIFACTS]
    assert {r.method for r in artifacts} == {"GET"}
    # Log lines are metadata: no training value reaches the control plane.
    values = {v for row in payloads.TRAINING_ROWS for v in row if len(v) > 3}
    to_gretel = b"".join(r.body for r in received if r.server == names.API).decode()
    assert not [v for v in values if v in to_gretel]
    assert "credentials" not in json.loads(next(r.body for r in received if r.path == "/v1/connections"))
    # Scope by source address: image pulls from the node, everything else from the pod.
    by_client = {(r.server, r.client_ip) for r in received}
    assert {s for s, ip in by_client if ip == names.NODE_IP} == {names.REGISTRY, names.LAYER_BUCKET_HOST}
    assert {ip for _, ip in by_client} == {names.POD_IP, names.NODE_IP}
    # Direct mode resolved each name once per scope through the simulated DNS, and nothing else.
    assert sorted((q.qname, q.client_ip) for q in dns) == sorted([
        (names.API, names.POD_IP), (names.ARTIFACTS, names.POD_IP), (names.CUSTOMER_BUCKET_HOST, names.POD_IP),
        (names.REGISTRY, names.NODE_IP), (names.LAYER_BUCKET_HOST, names.NODE_IP)])


def test_clean_pulls_the_image_get_login_named(clean: tuple[ScenarioResult, list, list]) -> None:  # type: ignore[type-arg]
    result, received, _ = clean
    blobs = [s for s in result.steps if s.id in ("node-config-blob", "node-layer-blob")]
    assert all(s.ok and [h.status for h in s.hops] == [307] for s in blobs)
    layer_gets = [r for r in received if r.server == names.LAYER_BUCKET_HOST]
    assert len(layer_gets) == 2 and all("X-Amz-Signature=" in r.query and r.method == "GET" for r in layer_gets)
    assert payloads.sha256_digest(layer_gets[1].body or b"") != ""  # GETs carry no body
    assert all(r.body == b"" for r in layer_gets)


def test_leaky_declares_each_violation_once_in_the_shared_vocabulary() -> None:
    found = expectations("leaky")
    assert len(found) == 9
    assert len({e.violation for e in found}) == 9
    for e in found:
        assert set(e.observations) <= VOCABULARY_OBSERVATIONS and set(e.labels) <= VOCABULARY_LABELS
        assert e.observations or e.labels or e.destination
    assert expectations("clean") == []
    clean_ids = [s.id for s in SCENARIOS["clean"]]
    assert [s.id for s in SCENARIOS["leaky"] if s.expect is None] == clean_ids  # leaky = clean + injections


def test_leaky_sends_every_violation(leaky: tuple[ScenarioResult, list, list], sim: Simulation) -> None:  # type: ignore[type-arg]
    result, received, dns = leaky
    assert result.ok, [(s.id, s.error) for s in result.steps if not s.ok]
    sent = {s.id: s for s in result.injected}
    assert len(sent) == 9 and all(s.error is None for s in sent.values())

    canary = [r for r in received if "ba-canary-0123456789abcdef01234567" in r.query]
    assert [(r.server, r.method) for r in canary] == [(names.API, "GET")]

    logs = [r for r in received if r.path == "/projects/models/logs"]
    leaked_log = json.loads(logs[1].body)["logs"][0]["msg"]
    assert ",".join(payloads.TRAINING_ROWS[0]) in leaked_log and ",".join(payloads.TRAINING_ROWS[5]) in leaked_log

    archive = [r for r in received if r.server == names.ARTIFACTS and r.method == "PUT"]
    assert len(archive) == 1 and archive[0].body == payloads.model_archive()
    assert archive[0].path.endswith("/model.tar.gz") and archive[0].body[:2] == b"\x1f\x8b"

    plaintext = [json.loads(r.body) for r in received if r.path == "/v1/connections"]
    assert ["credentials" in p for p in plaintext] == [False, True]
    assert plaintext[1]["credentials"]["secret_access_key"] == payloads.plaintext_credentials()["secret_access_key"]

    foreign_ip = sim.hosts[names.FOREIGN][0]
    direct = [r for r in received if r.server == names.FOREIGN]
    assert [(r.http_host, r.sni, r.client_ip, sent["leak-direct-ip"].via) for r in direct] == [
        (foreign_ip, None, names.POD_IP, "direct")]  # an IP literal: no SNI, no lookup
    assert not [d for d in sent["leak-direct-ip"].dns]

    bucket_put = [r for r in received if r.server == names.S3_GLOBAL]
    assert [(r.method, r.path.split("/")[1], r.client_ip) for r in bucket_put] == [("PUT", names.FOREIGN_BUCKET, names.NODE_IP)]

    fronted = [r for r in received if r.http_host == names.FOREIGN]
    assert [(r.server, r.sni, r.answered_as, r.status) for r in fronted] == [(names.API, names.API, names.FOREIGN, 202)]

    tunnel = [q for q in dns if q.qname.endswith(f".t.{names.FOREIGN}")]
    assert len(tunnel) == 40 and len({q.qname for q in tunnel}) == 40
    labels = [q.qname.split(".")[0] for q in tunnel]
    assert all(len(label) >= 50 for label in labels) and min(_entropy(label) for label in labels) > 4.0
    assert all(q.rcode == "NXDOMAIN" and q.client_ip == names.POD_IP for q in tunnel)


def test_runs_are_deterministic(sim: Simulation) -> None:
    def shape(result: ScenarioResult) -> list[tuple[str, str | None, str | None, int | None]]:
        deterministic = {"model-archive", "report-json", "training-csv", "model-config", "connection-plaintext"}
        step_bodies = {s.id: s.body for s in SCENARIOS["leaky"]}
        # Presigned URLs carry their signing time; everything else is identical run to run.
        return [(s.id, (s.url or "").split("X-Amz-")[0], s.request_sha256 if step_bodies[s.id] in deterministic else None,
                 s.status) for s in result.steps]

    first = run_scenario("leaky", None, sim)
    second = run_scenario("leaky", None, sim)
    assert shape(first) == shape(second)
    assert first.injected[0].url is not None and DEFAULT_CANARY in first.injected[0].url


def test_unknown_scenario_is_a_clear_error(sim: Simulation) -> None:
    with pytest.raises(AuditorError, match="unknown scenario 'noisy'.*clean, leaky"):
        run_scenario("noisy", None, sim)


class TunnelProxy:
    """A plain CONNECT proxy (what a passthrough egress proxy does) that maps names with curl's
    --connect-to values, records who asked for what, and pipes bytes."""

    def __init__(self, connect_to: list[str]) -> None:
        self.map = {}
        for item in connect_to:
            host, port, addr, aport = item.split(":")
            self.map[f"{host}:{port}"] = (addr, int(aport))
        self.requests: list[tuple[str, str]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, client = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, client[0]), daemon=True).start()

    def _serve(self, conn: socket.socket, client_ip: str) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        method, target = head.split(b" ", 2)[:2]
        self.requests.append((client_ip, target.decode()))
        if method != b"CONNECT" or target.decode() not in self.map:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        upstream = socket.create_connection(self.map[target.decode()])
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def tunnel(sim: Simulation) -> Iterator[TunnelProxy]:
    proxy = TunnelProxy(sim.connect_to())
    yield proxy
    proxy.close()


def test_through_a_proxy_only_the_bypass_and_dns_skip_it(sim: Simulation, tunnel: TunnelProxy) -> None:
    before, dns_before = len(sim.received), len(sim.dns_queries)
    result = run_scenario("leaky", tunnel.url, sim, proxy_ca=sim.ca_cert_path)
    assert result.ok, [(s.id, s.error) for s in result.steps if not s.ok]
    received = sim.received[before:]
    direct = [r for r in received if r.client_ip != "127.0.0.1"]
    assert [(r.server, r.client_ip) for r in direct] == [(names.FOREIGN, names.POD_IP)]
    assert {s.via for s in result.steps if s.kind == "http"} == {"proxy", "direct"}
    # CONNECT names the host on 443, from the pod's or the node's address.
    targets = {(ip, target) for ip, target in tunnel.requests}
    assert (names.NODE_IP, f"{names.REGISTRY}:443") in targets
    assert (names.POD_IP, f"{names.API}:443") in targets
    assert {ip for ip, _ in targets} == {names.POD_IP, names.NODE_IP}
    assert not any(t.startswith(names.FOREIGN) for _, t in targets)  # the fronted request CONNECTs to the API
    # The worker resolves nothing itself behind a proxy, except the tunnel's queries.
    assert all(q.qname.endswith(f".t.{names.FOREIGN}") for q in sim.dns_queries[dns_before:])


def test_a_refusing_proxy_fails_clean_steps_but_not_injected_ones(sim: Simulation) -> None:
    proxy = TunnelProxy([])  # refuses every CONNECT, like an enforcing proxy with an empty allow-list
    try:
        result = run_scenario("leaky", proxy.url, sim, proxy_ca=sim.ca_cert_path)
    finally:
        proxy.close()
    assert not result.ok
    step = {s.id: s for s in result.steps}
    assert not step["agent-billing"].ok and "ProxyError" in (step["agent-billing"].error or "")
    # A refused violation is the auditor working: recorded, with the error, but not a failed run step.
    assert step["leak-canary-in-query"].ok and "ProxyError" in (step["leak-canary-in-query"].error or "")
    assert step["leak-direct-ip"].ok and step["leak-direct-ip"].status == 202  # around the proxy
    # Steps that need ids from refused calls say which id they lacked.
    assert step["agent-accept-invite"].error == "needs {invite_id}, which no earlier step captured"
