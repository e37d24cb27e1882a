"""The proxy's live inventory watches the namespaces the manifests give it (AUDITOR_K8S_NAMESPACES)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from k8s_fakeapi import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mitmdump_addon_watches_the_configured_namespace(tmp_path: Path, server: FakeApiServer, kubeconfig: Path) -> None:
    port = _free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "AUDITOR_K8S_INVENTORY": "in-cluster", "AUDITOR_K8S_NAMESPACES": "ml-team"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.Popen(
        [
            str(BIN / "mitmdump"), "-q", "-s", str(ROOT / "auditor" / "proxy" / "addon.py"),
            "--listen-host", "127.0.0.1", "--listen-port", str(port), "--set", f"confdir={tmp_path / 'ca'}",
            "--set", f"auditor_store={tmp_path / 'e.db'}", "--set", "auditor_kubernetes=true",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + 30
        paths: set[str] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            paths = {p for p, _ in server.cluster.requests}
            if any("/namespaces/" in p for p in paths):
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    pod_paths = {p for p in paths if p.endswith("/pods")}
    assert "/api/v1/namespaces/ml-team/pods" in pod_paths, (paths, proc.stderr.read() if proc.stderr else b"")
    assert not any("gretel-hybrid" in p for p in pod_paths)
