"""`auditor audit -- JOB`: the proxy and the probe run while a job makes HTTPS requests
through the proxy (https_proxy and the proxy's CA come from the environment the audit
gives it) to a simulated api.gretel.cloud; the signed report's verdict is the exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from auditor.report.bundle import verify_bundle
from auditor.sim import DEFAULT_CANARY, Simulation, names

NET = "127.0.5"  # the simulated hosts, apart from the demo's 127.0.0.x
PROXY_IP = "127.0.6.1"  # the probe watches only the job's connections to the proxy

JOB = textwrap.dedent('''
    """A job that calls the Gretel API the way the hybrid agent does, through https_proxy."""
    import os, sys, urllib.request
    assert os.environ["https_proxy"].startswith("http://"), "the audit sets https_proxy"
    request = urllib.request.Request("https://api.gretel.cloud" + sys.argv[1],
                                     headers={"Authorization": "%s"})
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, len(response.read()))
''' % names.API_KEY)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    addresses = {host: f"{NET}.{11 + i}" for i, host in enumerate(names.DEFAULT_ADDRESSES)}
    simulation = Simulation.start(tmp_path_factory.mktemp("audit-sim") / "ca", addresses=addresses, https_port=443,
                                  dns_ip=f"{NET}.10", dns_port=53)
    yield simulation
    simulation.stop()


@pytest.fixture(scope="module")
def overlay(sim: Simulation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = sim.site_overlay()
    path = tmp_path_factory.mktemp("audit-site") / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def _audit(tmp_path: Path, sim: Simulation, overlay: Path, route: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    out = tmp_path / "audit"
    cmd = [sys.executable, "-m", "auditor.cli", "audit", "--out", str(out), "--overlay", str(overlay),
           "--iface", "lo", "--bpf", f"host {PROXY_IP}", "--listen", PROXY_IP, "--upstream-ca", str(sim.ca_cert_path)]
    for spec in sim.connect_to():
        cmd += ["--connect-to", spec]
    proc = subprocess.run([*cmd, "--", sys.executable, str(job), route], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return proc, out


def test_audit_of_a_clean_job_passes(tmp_path: Path, sim: Simulation, overlay: Path) -> None:
    proc, out = _audit(tmp_path, sim, overlay, "/users/me/billing")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: " in proc.stdout
    assert "command exited 0" in proc.stdout
    assert [r.path for r in sim.received_by(names.API)][-1] == "/users/me/billing"  # it really went through
    public = out / "auditor-signing.pub"
    outcome = verify_bundle(out / "report", public)
    assert outcome.ok, outcome.lines
    assert any("signed verdict PASS" in line for line in outcome.lines)


def test_audit_of_a_leaking_job_fails(tmp_path: Path, sim: Simulation, overlay: Path) -> None:
    proc, out = _audit(tmp_path, sim, overlay, f"/projects/{names.PROJECT_NAME}?trace={DEFAULT_CANARY}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: " in proc.stdout and "data.canary" in proc.stdout
    assert (out / "report" / "attestation.intoto.dsse.json").is_file()


def test_audit_needs_a_bound(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "audit", "--out", str(tmp_path / "x"), "--inventory", "snap.json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "--inventory attributes a cluster's store" in proc.stderr


def test_cluster_audit_attributes_sources_with_the_inventory(tmp_path: Path) -> None:
    """The store the sensors wrote (here: a leaky demo run's), attributed with a snapshot
    that names the pod and the node behind the simulated addresses."""
    from datetime import UTC, datetime, timedelta

    from auditor.demo import run_demo
    from auditor.k8s.inventory import Holding, InventoryConfig, InventorySnapshot, save_snapshot

    demo = run_demo("leaky", tmp_path / "demo")
    since = datetime.now(UTC) - timedelta(hours=1)
    snap = InventorySnapshot(taken_at=datetime.now(UTC), config=InventoryConfig(), holdings=[
        Holding(ip=names.POD_IP, kind="pod", name="gretel-worker-7c9f", namespace="gretel-hybrid", uid="u-pod",
                workload="Job/gretel-worker", node="node-a", start=since),
        Holding(ip=names.NODE_IP, kind="node", name="node-a", uid="u-node", start=since),
    ])
    inventory = tmp_path / "snapshot.json"
    save_snapshot(snap, inventory)
    out = tmp_path / "cluster-audit"
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "audit", "--store", str(demo.store), "--inventory", str(inventory),
                           "--overlay", str(demo.overlay), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: " in proc.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    sources = {s for f in report["findings"] for s in f["sources"]}
    assert "gretel-hybrid/gretel-worker-7c9f" in sources
    assert (out / "inventory-snapshot.json").read_bytes() == inventory.read_bytes()
    assert verify_bundle(out / "report", out / "auditor-signing.pub").ok


def test_audit_of_a_job_whose_endpoints_are_test_servers_on_another_port_passes(tmp_path: Path) -> None:
    """--connect-to test servers on port 18443, the probe on all of loopback: the proxy records
    what the job asked for (:443), and the probe leaves the proxy's legs to the targets out."""
    addresses = {host: f"127.0.8.{11 + i}" for i, host in enumerate(names.DEFAULT_ADDRESSES)}
    with Simulation.start(tmp_path / "ca", addresses=addresses, https_port=18443, dns_ip="127.0.8.10", dns_port=53) as sim:
        site = tmp_path / "site.yaml"
        site.write_text(yaml.safe_dump(sim.site_overlay()))
        job = tmp_path / "job.py"
        job.write_text(JOB)
        cmd = [sys.executable, "-m", "auditor.cli", "audit", "--out", str(tmp_path / "audit"), "--overlay", str(site),
               "--iface", "lo", "--upstream-ca", str(sim.ca_cert_path)]
        for spec in sim.connect_to():
            cmd += ["--connect-to", spec]
        proc = subprocess.run([*cmd, "--", sys.executable, str(job), "/users/me/billing"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert [r.path for r in sim.received_by(names.API)] == ["/users/me/billing"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: " in proc.stdout and "probe unavailable" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--iface", "bogus0"], "no interface 'bogus0' on this machine"),
        (["--bpf", "tcp port"], "bad BPF filter 'tcp port'"),
        (["--duration", "-1"], "--duration -1: not a time to audit for"),
        (["--connect-to", "nonsense"], "--connect-to 'nonsense' is not HOST:PORT:ADDR:PORT"),
    ],
)
def test_audit_refuses_errors_of_use_before_running_anything(tmp_path: Path, args: list[str], says: str) -> None:
    marker = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "audit", "--out", str(tmp_path / "a"), *args, "--", "touch", str(marker)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and says in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "a" / "evidence.db").exists()
