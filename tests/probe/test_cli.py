"""`auditor probe` as a person runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from auditor.store.base import open_store

from .traffic import Trace, client_hello

AUDITOR = [sys.executable, "-m", "auditor.cli"]


def _pcap(tmp_path: Path) -> Path:
    t = Trace()
    t.dns("10.42.0.5", "10.43.0.10", "api.gretel.cloud", [("api.gretel.cloud", "A", "34.1.2.3")])
    t.tcp("10.42.0.5", "34.1.2.3", 443, [client_hello("api.gretel.cloud")])
    t.tcp("10.42.0.5", "198.51.100.4", 443, [client_hello("api.gretel.cloud")])
    return t.write(tmp_path / "cli.pcap")


def test_probe_pcap_writes_judged_events_and_prints_a_summary(tmp_path: Path) -> None:
    store = tmp_path / "ev.db"
    proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(_pcap(tmp_path)), "--store", str(store), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stats"]["packets"] == 16 and summary["stats"]["observations"] == {"direct-ip": 2}
    assert summary["events_written"] == summary["events_submitted"] == 8
    st = open_store(str(store), create=False)
    judged = [e for e in st.events() if e.kind != "sensor"]
    st.close()
    assert judged and all(e.decision is not None for e in judged)
    check = subprocess.run([*AUDITOR, "check", "--store", str(store)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "obs.direct-ip" in check.stdout


def test_probe_rejects_a_file_that_is_not_a_capture_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(bad), "--store", str(tmp_path / "x.db")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "not a pcap or pcapng file" in proc.stderr


def test_probe_refuses_a_filter_it_would_not_apply_to_a_file(tmp_path: Path) -> None:
    proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(_pcap(tmp_path)), "--store", str(tmp_path / "x.db"), "--bpf", "tcp port 443"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 3 and proc.stderr.startswith("error: --bpf filters a live capture"), proc.stderr
    assert not (tmp_path / "x.db").exists()


def test_probe_live_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    store = tmp_path / "live.db"
    proc = subprocess.Popen([*AUDITOR, "probe", "--iface", "lo", "--bpf", "udp port 9", "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=30)
    assert proc.returncode == 0, errs
    st = open_store(str(store), create=False)
    lifecycle = [e.sensor.lifecycle for e in st.events() if e.kind == "sensor"]
    assert st.verify().ok
    st.close()
    assert lifecycle[0] == "start" and lifecycle[-1] == "stop"


def test_readme_example_capture(tmp_path: Path) -> None:
    """The README's probe commands, on the sample capture shipped in examples/."""
    root = Path(__file__).resolve().parents[2]
    store = tmp_path / "probe-example.db"
    proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(root / "examples" / "probe-sample.pcap"), "--store", str(store), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)["stats"]["observations"]
    assert {"direct-ip", "dns-tunnel", "quic", "inbound"} <= set(seen)
    check = subprocess.run([*AUDITOR, "check", "--store", str(store)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1


def test_probe_live_on_any_with_the_default_filter(tmp_path: Path) -> None:
    proc = subprocess.run([*AUDITOR, "probe", "--duration", "1", "--store", str(tmp_path / "any.db"), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["source"] == "live any bpf='ip or ip6'" and summary["capture"]["dropped"] == 0


def test_probe_names_pods_from_an_inventory_snapshot(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from auditor.k8s.inventory import Holding, InventoryConfig, InventorySnapshot, save_snapshot

    from .traffic import T0

    snap = tmp_path / "inventory.json"
    held = Holding(ip="10.42.0.5", kind="pod", name="agent-7d9f", namespace="gretel-hybrid", uid="u1", workload="agent",
                   node="node-a", start=datetime.fromtimestamp(T0 - 3600, UTC))  # fmt: skip
    save_snapshot(InventorySnapshot(taken_at=datetime.fromtimestamp(T0 + 60, UTC), config=InventoryConfig(), pod_cidrs=["10.42.0.0/16"], holdings=[held]), snap)
    store = tmp_path / "inv.db"
    proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(_pcap(tmp_path)), "--store", str(store), "--inventory", str(snap)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    st = open_store(str(store), create=False)
    traffic = [e for e in st.events() if e.kind != "sensor"]
    st.close()
    assert traffic and all((e.source.pod, e.source.namespace, e.source.scope) == ("agent-7d9f", "gretel-hybrid", "pod") for e in traffic)


def test_probe_rejects_bad_site_values_in_one_line(tmp_path: Path) -> None:
    for flag, value in (("--proxy", "nonsense"), ("--cluster-cidr", "10.0.0.0/33"), ("--cluster-dns", "resolver")):
        proc = subprocess.run([*AUDITOR, "probe", "--pcap", str(_pcap(tmp_path)), "--store", str(tmp_path / "x.db"), flag, value],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 3, (flag, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_the_judging_process_is_forked_before_the_live_display_starts_its_thread(tmp_path: Path, monkeypatch) -> None:
    """A fork while another thread runs can leave the child a lock that thread held."""
    import os
    import threading

    from rich.live import _RefreshThread
    from typer.testing import CliRunner

    from auditor.cli import app

    seen: list[list[str]] = []
    fork = os.fork

    def watched_fork() -> int:
        seen.append([t.name for t in threading.enumerate() if isinstance(t, _RefreshThread)])
        return fork()

    monkeypatch.setattr(os, "fork", watched_fork)
    result = CliRunner().invoke(app, ["probe", "--pcap", str(_pcap(tmp_path)), "--store", str(tmp_path / "ev.db"), "--json"])
    assert result.exit_code == 0, result.output
    assert seen == [[]]  # one fork, and no display thread alive at it
    assert json.loads(result.stdout)["judge_peak_memory_mb"] > 0
