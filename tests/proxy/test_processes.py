"""The two ways people run the sensor, as separate processes: stock `mitmdump -s` and
`auditor proxy`; both flush the store and chain `stop` on a signal."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditor.k8s.inventory import Holding, InventoryConfig, InventorySnapshot, save_snapshot
from auditor.proxy.ca import ensure_ca
from auditor.proxy.pool import default_workers
from auditor.sim.ca import ThrowawayCA

from .conftest import API, UPSTREAM_IP, Upstream, events_of

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("proxy did not start listening")


def _curl(port: int, ca: Path, path: str, body: Path | None = None) -> None:
    data = ["--data-binary", f"@{body}", "-H", "content-type: text/csv"] if body is not None else []
    out = subprocess.run(
        ["curl", "-sS", "--proxy", f"http://127.0.0.1:{port}", "--cacert", str(ca), *data, f"https://{API}{path}"],
        capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr


def _classifier_processes(pid: int) -> list[str]:
    """The command lines of the proxy's children that are multiprocessing's spawned workers."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "multiprocessing.spawn" in cmdline:
                found.append(cmdline)
    return found


def _lifecycle(store: str) -> tuple[list[str], list[str]]:
    events = events_of(store)
    return [e.sensor.lifecycle for e in events if e.sensor], [e.http.path for e in events if e.http]


def _snapshot(path: Path) -> Path:
    """An inventory in which the test client's address belongs to the Gretel agent pod."""
    snap = InventorySnapshot(
        taken_at=datetime.now(UTC),
        config=InventoryConfig(),
        holdings=[Holding(ip="127.0.0.1", kind="pod", name="gretel-agent-7d9f", namespace="gretel-hybrid", uid="u-1",
                          workload="deployment/gretel-agent", node="node-a", start=datetime.now(UTC) - timedelta(hours=1))],
    )
    save_snapshot(snap, path)
    return path


def test_stock_mitmdump_loads_the_addon(tmp_path: Path, test_ca: ThrowawayCA, upstream: Upstream) -> None:
    port = _free_port()
    confdir = tmp_path / "ca"
    ca = ensure_ca(confdir)
    store = str(tmp_path / "mitmdump.db")
    proc = subprocess.Popen(
        [
            str(BIN / "mitmdump"), "-q", "-s", str(ROOT / "auditor" / "proxy" / "addon.py"),
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={test_ca.cert_path}",
            "--set", f"auditor_store={store}", "--set", "auditor_sensor_id=proxy-mitmdump",
            "--set", f"auditor_connect_to={API}:443:{UPSTREAM_IP}:443",
            "--set", f"auditor_inventory={_snapshot(tmp_path / 'inventory.json')}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    rows = tmp_path / "rows.csv"  # over 32 KiB: classified in a worker process
    rows.write_text("id,email,amount\n" + "".join(f"{i},user{i}@example.com,{i * 7 % 1000}\n" for i in range(2000)))
    try:
        _wait_listening(port, proc)
        _curl(port, ca.cert, "/users/me/billing?via=mitmdump")
        _curl(port, ca.cert, "/v1/logs/rows", body=rows)
        workers = _classifier_processes(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert len(workers) == default_workers(), workers  # the pool is up under mitmdump too
    lifecycle, paths = _lifecycle(store)
    assert lifecycle[0] == "start" and lifecycle[-1] == "stop"
    assert paths == ["/users/me/billing", "/v1/logs/rows"]
    [leak] = [e for e in events_of(store) if e.http and e.http.path == "/v1/logs/rows"]
    assert leak.payload is not None and "training-data" in leak.payload.labels and leak.decision is not None and leak.decision.action == "violation"
    assert "/users/me/billing?via=mitmdump" in upstream.paths()
    [event] = [e for e in events_of(store) if e.http and e.http.path == "/users/me/billing"]
    assert (event.source.pod, event.source.namespace, event.source.node, event.source.scope) == ("gretel-agent-7d9f", "gretel-hybrid", "node-a", "pod")
    assert event.decision is not None and event.decision.action == "allowed"


def test_auditor_proxy_command_and_clean_sigint(tmp_path: Path, test_ca: ThrowawayCA, upstream: Upstream) -> None:
    port = _free_port()
    confdir = tmp_path / "ca"
    ca_out = subprocess.run([sys.executable, "-m", "auditor.cli", "proxy", "ca", "--confdir", str(confdir)], capture_output=True, text=True, timeout=60)
    assert ca_out.returncode == 0 and ca_out.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert (confdir / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600
    store = str(tmp_path / "auditor-proxy.db")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "auditor.cli", "proxy", "--listen", f"127.0.0.1:{port}", "--store", store,
            "--confdir", str(confdir), "--upstream-ca", str(test_ca.cert_path), "--connect-to", f"{API}:443:{UPSTREAM_IP}:443",
            "--sensor-id", "proxy-cli",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(port, proc)
        for i in range(3):
            _curl(port, confdir / "mitmproxy-ca-cert.pem", f"/opt/containers/get_login?cli={i}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    lifecycle, paths = _lifecycle(store)
    assert lifecycle[0] == "start" and lifecycle[-1] == "stop"
    assert paths == ["/opt/containers/get_login"] * 3


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "auditor.cli", "proxy", "--store", str(tmp_path / "x.db"), "--connect-to", "nonsense", "--confdir", str(tmp_path / "ca")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "HOST:PORT:ADDR:PORT" in out.stderr
    a_directory = tmp_path / "evidence"
    a_directory.mkdir()
    out = subprocess.run([sys.executable, "-m", "auditor.cli", "proxy", "--store", str(a_directory), "--confdir", str(tmp_path / "ca")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 3 and out.stderr.count("\n") == 1, out.stderr
    assert str(a_directory) in out.stderr and "not set" not in out.stderr, out.stderr
