"""The inventory against a Kubernetes API on 127.0.0.1 through the real `kubernetes` client:
IP reuse, node scope, selectors, 410 Gone, outages chained as gaps, snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gretel_install import NS, pod, worker_pod
from k8s_fakeapi import FakeApiServer, FakeCluster
from kubernetes import client
from typer.testing import CliRunner

from auditor.cli import app
from auditor.errors import AuditorError
from auditor.k8s.attribute import attribute, inventory_from_file
from auditor.k8s.inventory import (
    Inventory,
    InventoryConfig,
    InventoryWatcher,
    config_from_env,
    load_snapshot,
    new_inventory,
    start_inventory,
    take_snapshot,
    with_overlay_cidrs,
)
from auditor.model import EgressEvent, FlowInfo, Source
from auditor.store.base import open_store
from auditor.store.writer import BatchWriter

REUSED_IP = "10.42.1.30"


def t(hhmmss: str) -> datetime:
    return datetime.fromisoformat(f"2026-01-01T{hhmmss}+00:00")


def flow_from(ip: str, at: datetime) -> EgressEvent:
    return EgressEvent(sensor_id="probe-test", kind="flow", time=at, source=Source(ip=ip, port=40000),
                       flow=FlowInfo(direction="egress", first_seen=at))


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def fast(**kw: object) -> InventoryConfig:
    return InventoryConfig(watch_timeout=2, connect_timeout=2, backoff_initial=0.05, backoff_max=0.2, **kw)  # type: ignore[arg-type]


@pytest.fixture
def watcher_factory(api: client.ApiClient) -> Callable[..., InventoryWatcher]:
    started: list[InventoryWatcher] = []

    def make(config: InventoryConfig, writer: BatchWriter | None = None) -> InventoryWatcher:
        w = InventoryWatcher(new_inventory(config), api, config, writer)
        w.start()
        assert w.wait_synced(10)
        started.append(w)
        return w

    yield make  # type: ignore[misc]
    for w in started:
        w.stop()


def test_attribution_follows_an_ip_reused_by_two_pods_listed_together(cluster: FakeCluster, api: client.ApiClient) -> None:
    # a finished worker still listed, and the new worker that got its IP afterwards
    cluster.put("pods", worker_pod("gretel-job-a-1", REUSED_IP, phase="Succeeded", start="2026-01-01T10:00:00Z", finished="2026-01-01T10:05:00Z"))
    cluster.put("pods", worker_pod("gretel-job-b-1", REUSED_IP, start="2026-01-01T10:06:00Z"))
    config = InventoryConfig()
    w = InventoryWatcher(new_inventory(config), api, config)
    w.sync_once()
    inv = w.inventory

    early = attribute(flow_from(REUSED_IP, t("10:02:00")), inv)
    late = attribute(flow_from(REUSED_IP, t("10:07:00")), inv)
    between = attribute(flow_from(REUSED_IP, t("10:05:30")), inv)

    assert (early.source.pod, early.source.workload, early.source.namespace, early.source.node, early.source.scope) == (
        "gretel-job-a-1", "job/gretel-job-a", NS, "node-b", "pod")
    assert (late.source.pod, late.source.workload) == ("gretel-job-b-1", "job/gretel-job-b")
    assert between.source.pod is None and between.source.scope == "pod"  # in the pod CIDR, nobody held it
    assert any("no watched pod held it" in n for n in between.notes)
    assert early.source.port == 40000  # what the sensor knew is kept


def test_watch_sees_reuse_without_a_delete_and_closes_the_older_holding(cluster: FakeCluster, watcher_factory: Callable[..., InventoryWatcher]) -> None:
    w = watcher_factory(fast())
    cluster.put("pods", worker_pod("gretel-job-a-2", REUSED_IP, start="2026-01-01T11:00:00Z"))
    wait_until(lambda: w.inventory.resolve(REUSED_IP, t("11:01:00")).holding is not None)
    # the DELETED of the first pod never arrives; the second pod's start ends the first holding
    cluster.put("pods", worker_pod("gretel-job-b-2", REUSED_IP, start="2026-01-01T11:10:00Z"))
    wait_until(lambda: (h := w.inventory.resolve(REUSED_IP, t("11:11:00")).holding) is not None and h.name == "gretel-job-b-2")

    first = w.inventory.resolve(REUSED_IP, t("11:09:59"))
    assert first.holding is not None and first.holding.name == "gretel-job-a-2"
    assert first.holding.end == t("11:10:00") and first.holding.end_inferred
    assert any("end time inferred" in n for n in first.notes)

    cluster.delete("pods", "gretel-job-b-2", NS)
    wait_until(lambda: w.inventory.resolve(REUSED_IP, datetime.now(UTC)).holding is None)
    still = w.inventory.resolve(REUSED_IP, t("11:11:00"))
    assert still.holding is not None and still.holding.name == "gretel-job-b-2"  # history is kept


def test_node_ips_are_node_scope_and_host_network_pods_share_them(cluster: FakeCluster, api: client.ApiClient) -> None:
    cluster.put("pods", pod("boundary-auditor-probe-abcde", "10.0.0.11", namespace="boundary-auditor", host_network=True,
                            owner=("DaemonSet", "boundary-auditor-probe")))
    config = InventoryConfig(namespaces=[NS, "boundary-auditor"])
    w = InventoryWatcher(new_inventory(config), api, config)
    w.sync_once()
    now = datetime.now(UTC)

    node_event = attribute(flow_from("10.0.0.11", now), w.inventory)
    assert (node_event.source.scope, node_event.source.node, node_event.source.pod) == ("node", "node-a", None)
    assert any("boundary-auditor/boundary-auditor-probe-abcde" in n for n in node_event.notes)

    agent = attribute(flow_from("10.42.0.10", now), w.inventory)
    assert (agent.source.pod, agent.source.workload, agent.source.node) == ("agent-7d9f8c6b5-x2k4p", "deployment/agent", "node-a")

    outside = attribute(flow_from("203.0.113.9", now), w.inventory)
    assert outside.source.scope == "external"
    inbound = flow_from("203.0.113.9", now)
    inbound.flow.direction, inbound.destination.ip = "inbound", "10.42.0.10"  # type: ignore[union-attr]
    assert f"inbound to pod {NS}/agent-7d9f8c6b5-x2k4p" in attribute(inbound, w.inventory).notes
    service = attribute(flow_from("10.43.0.10", now), w.inventory)
    assert service.source.scope == "unknown" and any("service IP" in n for n in service.notes)
    assert w.inventory.cidr_sources == {"pod": "api", "service": "api", "node": "none"}

    lifecycle = EgressEvent(sensor_id="probe-test", kind="sensor")
    assert attribute(lifecycle, w.inventory) is lifecycle


def test_cidrs_come_from_the_overlay_when_the_api_has_none(cluster: FakeCluster, api: client.ApiClient, tmp_path: Path) -> None:
    cluster.disabled.add("servicecidrs")
    for name in ("node-a", "node-b"):
        node = cluster.objects[("nodes", "", name)]
        node["spec"] = {}
        cluster.put("nodes", node)
    overlay = tmp_path / "site.yaml"
    overlay.write_text("overlay:\n  id: site-a\ncluster:\n  pod_cidrs: [10.42.0.0/16]\n  service_cidrs: [10.43.0.0/16]\n  node_cidrs: [10.0.0.0/24]\n")
    config = with_overlay_cidrs(InventoryConfig(), overlay)
    w = InventoryWatcher(new_inventory(config), api, config)
    w.sync_once()
    assert w.inventory.cidr_sources == {"pod": "overlay", "service": "overlay", "node": "overlay"}
    assert attribute(flow_from("10.42.9.9", datetime.now(UTC)), w.inventory).source.scope == "pod"
    assert attribute(flow_from("10.0.0.99", datetime.now(UTC)), w.inventory).source.scope == "node"

    bad = tmp_path / "bad.yaml"
    bad.write_text("overlay:\n  id: site-a\ncluster:\n  pod_cidrs: [10.42.0.0/33]\n")
    with pytest.raises(AuditorError) as exc:
        with_overlay_cidrs(InventoryConfig(), bad)
    assert "bad.yaml:4" in str(exc.value)


def test_label_and_field_selectors_reach_the_api_on_list_and_watch(cluster: FakeCluster, watcher_factory: Callable[..., InventoryWatcher]) -> None:
    w = watcher_factory(fast(label_selectors=["app=gretel-jobs-worker"], node_name="node-b"))
    names = {h.name for h in w.inventory.holdings() if h.kind == "pod"}
    assert names == {"gretel-job-8f2a1c-5kq2x"}  # agent and controller do not match
    assert w.inventory.cidr_sources["service"] == "api"  # discovered before the watcher reports synced

    cluster.put("pods", worker_pod("gretel-job-on-a-1", "10.42.0.40", node_name="node-a"))  # other node
    cluster.put("pods", pod("not-a-worker", "10.42.1.41", node_name="node-b"))  # other labels
    cluster.put("pods", worker_pod("gretel-job-on-b-1", "10.42.1.42"))
    wait_until(lambda: any(h.name == "gretel-job-on-b-1" for h in w.inventory.holdings()))
    names = {h.name for h in w.inventory.holdings() if h.kind == "pod"}
    assert names == {"gretel-job-8f2a1c-5kq2x", "gretel-job-on-b-1"}

    pod_requests = [q for p, q in cluster.requests if p == f"/api/v1/namespaces/{NS}/pods"]
    assert pod_requests and all(q.get("labelSelector") == ["app=gretel-jobs-worker"] for q in pod_requests)
    assert all(q.get("fieldSelector") == ["spec.nodeName=node-b"] for q in pod_requests)
    assert any(q.get("watch") == ["true"] and q.get("resourceVersion") for q in pod_requests)


def test_watch_expiry_relists_and_reconciles_what_was_missed(cluster: FakeCluster, watcher_factory: Callable[..., InventoryWatcher]) -> None:
    w = watcher_factory(fast())
    lists_before = cluster.count(f"/namespaces/{NS}/pods", watch=False)
    # the controller pod goes while its DELETED event is compacted away, then history expires
    with cluster.cond:
        del cluster.objects[("pods", NS, "controller-5c8d7f9b4-q7wzn")]
    cluster.expire()
    wait_until(lambda: w.relists >= 1)
    cluster.put("pods", worker_pod("gretel-job-after-1", "10.42.1.50"))
    wait_until(lambda: any(h.name == "gretel-job-after-1" for h in w.inventory.holdings()))

    assert cluster.count(f"/namespaces/{NS}/pods", watch=False) > lists_before
    gone = [h for h in w.inventory.holdings() if h.name == "controller-5c8d7f9b4-q7wzn"]
    assert len(gone) == 1 and gone[0].end is not None and gone[0].end_inferred
    assert w.inventory.resolve("10.42.0.11", datetime.now(UTC)).holding is None
    assert not w.inventory.gaps  # an expired watch is not an outage


def test_api_outage_is_chained_as_a_gap_and_the_watch_reconnects(
    server: FakeApiServer, cluster: FakeCluster, api: client.ApiClient, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "evidence.db"))
    writer = BatchWriter(store, "proxy-k8s-test", flush_interval=0.05)
    writer.start(detail="test")
    config = fast()
    w = start_inventory(api, config, writer, sync_timeout=10)
    try:
        server.stop()
        wait_until(lambda: bool(w.inventory.gaps))
        blind = attribute(flow_from("10.42.0.10", datetime.now(UTC)), w.inventory)
        assert blind.source.pod == "agent-7d9f8c6b5-x2k4p"  # last known state still attributes
        assert any("inventory blind" in n for n in blind.notes)
        cluster.put("pods", worker_pod("gretel-job-during-1", "10.42.1.60"))
        server.start()
        wait_until(lambda: any(h.name == "gretel-job-during-1" for h in w.inventory.holdings()))
        wait_until(lambda: all(g.end is not None for g in w.inventory.gaps))
    finally:
        w.stop()
        writer.stop()
    lifecycle = [(e.sensor.lifecycle, e.sensor.detail or "") for e in store.events() if e.sensor]
    store_ok = store.verify().ok
    store.close()
    kinds = [k for k, _ in lifecycle]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert "error" in kinds and "gap" in kinds
    gap = next(d for k, d in lifecycle if k == "gap")
    assert "kubernetes API unavailable" in gap and " to " in gap and "failed attempts" in gap
    assert w.reconnects >= 1 and store_ok


def test_snapshot_round_trip_attributes_after_the_fact(cluster: FakeCluster, api: client.ApiClient, kubeconfig: Path, tmp_path: Path) -> None:
    cluster.put("pods", worker_pod("gretel-job-a-3", REUSED_IP, phase="Failed", start="2026-01-01T12:00:00Z", finished="2026-01-01T12:03:00Z"))
    out = tmp_path / "inventory.json"
    summary = take_snapshot(api, InventoryConfig(), out)
    assert summary.pods == 4 and summary.nodes == 2

    inv: Inventory = inventory_from_file(out)
    event = attribute(flow_from(REUSED_IP, t("12:01:00")), inv)
    assert (event.source.pod, event.source.scope) == ("gretel-job-a-3", "pod")
    assert load_snapshot(out).cidr_sources["pod"] == "api"

    result = CliRunner().invoke(app, ["k8s", "snapshot", "-o", str(tmp_path / "cli.json"), "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 0, result.output
    assert "4 pods, 2 nodes" in " ".join(result.output.split())
    assert load_snapshot(tmp_path / "cli.json").holdings

    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "something-else"}')
    with pytest.raises(AuditorError) as exc:
        load_snapshot(broken)
    assert "broken.json" in str(exc.value) and "auditor k8s snapshot" in str(exc.value)


def test_snapshot_of_an_unreachable_api_is_one_line(tmp_path: Path) -> None:
    kc = FakeApiServer(FakeCluster()).kubeconfig(tmp_path / "kc")  # never started: port 0 refuses
    result = CliRunner().invoke(app, ["k8s", "snapshot", "-o", str(tmp_path / "x.json"), "--kubeconfig", str(kc)])
    assert isinstance(result.exception, AuditorError)
    assert "unreachable" in str(result.exception)


def test_attribute_command_fills_sources_of_an_events_file(cluster: FakeCluster, api: client.ApiClient, tmp_path: Path) -> None:
    snap = tmp_path / "inventory.json"
    take_snapshot(api, InventoryConfig(), snap)
    events = tmp_path / "events.jsonl"
    now = datetime.now(UTC)
    events.write_text(
        flow_from("10.42.1.20", now).model_dump_json() + "\n"
        + "{not json\n"
        + flow_from("10.0.0.12", now).model_dump_json() + "\n"
    )
    out = tmp_path / "attributed.jsonl"
    result = CliRunner().invoke(app, ["k8s", "attribute", str(events), "--inventory", str(snap), "-o", str(out)])
    assert result.exit_code == 3  # one bad line: reported, the others still written
    assert "events.jsonl:2" in " ".join(result.output.split())
    got = [EgressEvent.model_validate_json(line) for line in out.read_text().splitlines()]
    assert [(e.source.pod, e.source.node, e.source.scope) for e in got] == [
        ("gretel-job-8f2a1c-5kq2x", "node-b", "pod"), (None, "node-b", "node")]


def test_a_live_inventory_forgets_old_history_but_keeps_open_holdings() -> None:
    inv = Inventory()
    for name, start, end in (("old-1", "08:00:00", "08:30:00"), ("new-1", "09:00:00", None)):
        obj = client.V1Pod.from_dict(worker_pod(name, "10.42.1.99", start=f"2026-01-01T{start}Z",
                                                phase="Running" if end is None else "Succeeded",
                                                finished=f"2026-01-01T{end}Z" if end else None))
        inv.observe_pod(obj, "s", t("09:00:00"))
    assert inv.prune(t("08:45:00")) == 1
    assert [h.name for h in inv.holdings()] == ["new-1"]
    assert inv.resolve("10.42.1.99", t("08:10:00")).holding is None


def test_sensor_settings_from_the_manifests_env() -> None:
    assert config_from_env({}) is None
    config = config_from_env({"AUDITOR_K8S_INVENTORY": "in-cluster", "AUDITOR_K8S_NAMESPACES": "gretel-hybrid, team-b",
                              "AUDITOR_K8S_NODE": "node-b"})
    assert config is not None
    assert (config.namespaces, config.node_name) == (["gretel-hybrid", "team-b"], "node-b")
