"""Zeek and Hubble evidence becomes the same events the live sensors write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.errors import AuditorError
from auditor.importers import import_file
from auditor.store.base import open_store

CONN = [
    {"ts": 1764145200.123456, "uid": "CAbc1", "id.orig_h": "10.42.0.17", "id.orig_p": 40112, "id.resp_h": "203.0.113.10",
     "id.resp_p": 443, "proto": "tcp", "service": "ssl", "duration": 2.5, "orig_bytes": 1200, "resp_bytes": 5400,
     "conn_state": "SF", "local_orig": True, "local_resp": False, "orig_pkts": 10, "resp_pkts": 9},
    {"ts": 1764145201.0, "uid": "CAbc2", "id.orig_h": "198.51.100.9", "id.orig_p": 51000, "id.resp_h": "10.42.0.17",
     "id.resp_p": 22, "proto": "tcp", "conn_state": "S0", "local_orig": False, "local_resp": True},
]
SSL = [{"ts": 1764145200.2, "uid": "CAbc1", "id.orig_h": "10.42.0.17", "id.orig_p": 40112, "id.resp_h": "203.0.113.10",
        "id.resp_p": 443, "version": "TLSv13", "server_name": "api.gretel.cloud", "established": True}]
DNS = [{"ts": 1764145199.9, "uid": "Dx1", "id.orig_h": "10.42.0.17", "id.orig_p": 5353, "id.resp_h": "10.96.0.10",
        "id.resp_p": 53, "proto": "udp", "query": "api.gretel.cloud", "qtype_name": "A", "rcode_name": "NOERROR",
        "answers": ["203.0.113.10"], "TTLs": [60.0]}]


def _write(path: Path, records: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + extra)
    return path


def test_zeek_conn_ssl_dns_are_joined_by_uid(tmp_path: Path) -> None:
    files = [_write(tmp_path / "conn.log", CONN), _write(tmp_path / "ssl.log", SSL), _write(tmp_path / "dns.log", DNS)]
    store = str(tmp_path / "e.db")
    result = import_file(files, store, "zeek")
    assert (result.imported, result.rejected) == (3, 0)
    events = [e for e in open_store(store).events() if e.kind != "sensor"]
    flow = next(e for e in events if e.kind == "flow" and e.destination.port == 443)
    assert flow.destination.sni == "api.gretel.cloud" and flow.flow and flow.flow.bytes_up == 1200
    assert flow.flow.direction == "egress" and flow.flow.tcp_state == "closed"
    inbound = next(e for e in events if e.kind == "flow" and e.destination.port == 22)
    assert inbound.flow and inbound.flow.direction == "inbound" and "inbound" in inbound.observations
    dns = next(e for e in events if e.kind == "dns")
    assert dns.dns and dns.dns.answers == ["203.0.113.10"] and dns.dns.ttl == 60


def test_zeek_bad_lines_are_counted_and_the_rest_imported(tmp_path: Path) -> None:
    conn = _write(tmp_path / "conn.log", CONN, extra="{not json\n")
    store = str(tmp_path / "e.db")
    result = import_file([conn], store, "auto")
    assert result.format == "zeek" and result.imported == 2 and result.rejected == 1
    assert result.problems[0].startswith(f"{conn}:3:")
    assert open_store(store).verify().ok


HUBBLE = [
    {"flow": {"time": "2026-11-26T08:00:00.123456789Z", "verdict": "FORWARDED",
              "IP": {"source": "10.42.1.33", "destination": "198.51.100.7", "ipVersion": "IPv4"},
              "l4": {"TCP": {"source_port": 51220, "destination_port": 443, "flags": {"SYN": True}}},
              "source": {"namespace": "gretel-hybrid", "pod_name": "gretel-jobs-worker-5f7kd",
                         "workloads": [{"name": "gretel-jobs-worker", "kind": "Job"}]},
              "destination": {"labels": ["reserved:world"]}, "destination_names": ["collector.example.net"],
              "traffic_direction": "EGRESS", "node_name": "node-b", "is_reply": False}},
    {"flow": {"time": "2026-11-26T08:00:01Z", "verdict": "FORWARDED",
              "IP": {"source": "10.42.1.33", "destination": "10.96.0.10"},
              "l4": {"UDP": {"source_port": 5353, "destination_port": 53}},
              "source": {"namespace": "gretel-hybrid", "pod_name": "gretel-jobs-worker-5f7kd"},
              "destination": {"namespace": "kube-system", "pod_name": "coredns-1"},
              "l7": {"type": "RESPONSE", "dns": {"query": "api.gretel.cloud.", "ips": ["203.0.113.10"], "ttl": 30, "qtypes": ["A"], "rcode": 0}},
              "is_reply": False}},
    {"flow": {"time": "2026-11-26T08:00:02Z", "IP": {"source": "198.51.100.7", "destination": "10.42.1.33"},
              "l4": {"TCP": {"source_port": 443, "destination_port": 51220}}, "is_reply": True}},
]


def test_hubble_flows_carry_pod_identity_and_dns(tmp_path: Path) -> None:
    path = _write(tmp_path / "hubble.json", HUBBLE, extra='{"flow": {"time": "x"}}\n')
    store = str(tmp_path / "e.db")
    result = import_file([path], store)
    assert result.format == "hubble" and result.imported == 2 and result.rejected == 1
    events = [e for e in open_store(store).events() if e.kind != "sensor"]
    flow = next(e for e in events if e.kind == "flow")
    assert flow.source.pod == "gretel-jobs-worker-5f7kd" and flow.source.scope == "pod"
    assert flow.destination.host == "collector.example.net" and flow.flow and flow.flow.tcp_state == "attempted"
    dns = next(e for e in events if e.kind == "dns")
    assert dns.dns and dns.dns.qname == "api.gretel.cloud" and dns.dns.answers == ["203.0.113.10"]


def test_unknown_format_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "what.txt"
    path.write_text("hello\n")
    with pytest.raises(AuditorError, match=r"what.txt: cannot tell the format of this file \(fix: pass --format"):
        import_file([path], str(tmp_path / "e.db"))


def test_import_attributes_sources_with_an_inventory_snapshot(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from auditor.k8s.inventory import Holding, InventoryConfig, InventorySnapshot, save_snapshot

    snap = InventorySnapshot(
        taken_at=datetime(2025, 12, 1, tzinfo=UTC),
        config=InventoryConfig(),
        pod_cidrs=["10.42.0.0/16"],
        holdings=[
            Holding(ip="10.42.0.17", kind="pod", name="agent-7c9d6b5f4-x2kqv", namespace="gretel-hybrid", uid="u1",
                    workload="agent", node="node-a", start=datetime(2025, 11, 1, tzinfo=UTC)),
        ],
    )
    snapshot = tmp_path / "inventory.json"
    save_snapshot(snap, snapshot)
    files = [_write(tmp_path / "conn.log", CONN), _write(tmp_path / "ssl.log", SSL)]
    store = str(tmp_path / "e.db")
    result = import_file(files, store, "zeek", inventory=snapshot)
    assert result.rejected == 0
    flow = next(e for e in open_store(store).events() if e.kind == "flow" and e.destination.port == 443)
    assert flow.source.pod == "agent-7c9d6b5f4-x2kqv" and flow.source.scope == "pod" and flow.source.workload == "agent"
