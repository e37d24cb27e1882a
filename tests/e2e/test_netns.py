"""A "pod" in its own network namespace, joined to the host by a veth pair: the simulated
Gretel Hybrid answers on the host side, the proxy listens there too, and the probe sniffs
the host-side veth. The pod calls the API through the proxy, then connects straight to the
foreign host it resolved through the simulated DNS: that connection, and only that one, is
reported as `bypass`.

Everything (namespace, veth, addresses in 10.x) is created here and removed at the end;
nothing is routed anywhere but the veth's own subnet. CI runs as root.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from auditor.audit import free_port
from auditor.model import EgressEvent
from auditor.probe.engine import ProbeConfig
from auditor.proxy.runner import ProxyConfig
from auditor.rules import load_pack, judge
from auditor.sensors import LocalSensors
from auditor.sim import Simulation, names
from auditor.store.base import open_store


@dataclass
class PodNet:
    ns: str
    host_if: str
    subnet: str  # "10.213.N"

    def ip(self, last: int) -> str:
        return f"{self.subnet}.{last}"

    @property
    def host_ip(self) -> str:
        return self.ip(1)

    @property
    def pod_ip(self) -> str:
        return self.ip(2)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture()
def podnet() -> Iterator[PodNet]:
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    net = PodNet(ns=f"ba-pod-{tag}", host_if=f"bah{tag}", subnet=f"10.213.{random.randrange(1, 255)}")
    pod_if = f"bap{tag}"
    _ip("netns", "add", net.ns)
    try:
        _ip("link", "add", net.host_if, "type", "veth", "peer", "name", pod_if)
        _ip("link", "set", pod_if, "netns", net.ns)
        _ip("addr", "add", f"{net.host_ip}/24", "dev", net.host_if)
        for last in range(10, 11 + len(names.DEFAULT_ADDRESSES)):  # the simulated DNS (.10) and hosts (.11 on) answer on the host side
            _ip("addr", "add", f"{net.ip(last)}/32", "dev", net.host_if)
        _ip("link", "set", net.host_if, "up")
        _ip("-n", net.ns, "addr", "add", f"{net.pod_ip}/24", "dev", pod_if)
        _ip("-n", net.ns, "link", "set", pod_if, "up")
        _ip("-n", net.ns, "link", "set", "lo", "up")
        yield net
    finally:
        subprocess.run(["ip", "link", "del", net.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", net.ns], capture_output=True)


POD_JOB = textwrap.dedent('''
    """Inside the pod: one call through the proxy, one connection around it."""
    import socket, ssl, sys, urllib.request
    from auditor.sim.dns import query_a

    proxy, proxy_ca, sim_ca, dns_ip, api_key = sys.argv[1:6]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": proxy}),
                                         urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=proxy_ca)))
    request = urllib.request.Request("https://api.gretel.cloud/users/me/billing", headers={"Authorization": api_key})
    with opener.open(request, timeout=10) as response:
        print("via proxy", response.status)
    rcode, answers = query_a((dns_ip, 53), "collector.example.net")
    ctx = ssl.create_default_context(cafile=sim_ca)
    with socket.create_connection((answers[0], 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="collector.example.net") as tls:
            body = b'{"rows": 1}'
            tls.sendall(b"POST /v1/collect HTTP/1.1\\r\\nHost: collector.example.net\\r\\nContent-Type: application/json\\r\\n"
                        b"Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
            print("around the proxy", tls.recv(200).split(b"\\r\\n", 1)[0].decode())
''')


def test_pod_traffic_around_the_proxy_is_bypass(podnet: PodNet, tmp_path: Path) -> None:
    addresses = {host: podnet.ip(11 + i) for i, host in enumerate(names.DEFAULT_ADDRESSES)}
    sim = Simulation.start(tmp_path / "ca", addresses=addresses, https_port=443, dns_ip=podnet.ip(10), dns_port=53)
    try:
        port = free_port(podnet.host_ip)
        site = sim.site_overlay()
        site["cluster"] = {"pod_cidrs": [f"{podnet.pod_ip}/32"], "dns": {"servers": [podnet.ip(10)]}}
        site["proxy"] = f"http://{podnet.host_ip}:{port}"
        overlay = tmp_path / "site.yaml"
        overlay.write_text(yaml.safe_dump(site))
        pack = load_pack(None, [overlay])
        store = str(tmp_path / "evidence.db")
        sensors = LocalSensors(
            proxy_config=ProxyConfig(listen_host=podnet.host_ip, listen_port=port, store=store, overlays=[overlay],
                                     upstream_ca=sim.ca_cert_path, connect_to=sim.connect_to(), confdir=tmp_path / "proxy",
                                     sensor_id="proxy-netns"),
            iface=podnet.host_if,
            probe_config=ProbeConfig(sensor_id="probe-netns", linger_s=0),
            pack=pack,
            bpf=f"host {podnet.pod_ip}",
        ).start()
        try:
            assert sensors.probe_available, sensors.probe_reason
            assert sensors.proxy is not None
            job = tmp_path / "pod_job.py"
            job.write_text(POD_JOB)
            env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
            proc = subprocess.run(
                ["ip", "netns", "exec", podnet.ns, sys.executable, str(job), sensors.proxy.url, str(sensors.proxy.ca_cert),
                 str(sim.ca_cert_path), podnet.ip(10), names.API_KEY],
                capture_output=True, text=True, timeout=60, env=env,
            )
        finally:
            sensors.stop()
        assert proc.returncode == 0, proc.stderr
        assert "via proxy 200" in proc.stdout and "around the proxy HTTP/1.1" in proc.stdout
        assert [r.path for r in sim.received_by(names.FOREIGN)] == ["/v1/collect"]
    finally:
        sim.stop()

    st = open_store(store, create=False)
    try:
        events: list[EgressEvent] = list(judge((e for e in st.events() if e.kind != "sensor"), pack))
    finally:
        st.close()
    probe_flows = [e for e in events if e.sensor_id == "probe-netns" and e.kind == "flow"]
    assert all(e.source.ip == podnet.pod_ip for e in probe_flows)
    bypass = [e for e in probe_flows if "bypass" in e.observations]
    assert [(e.destination.ip, e.destination.port) for e in bypass] == [(podnet.ip(18), 443)]
    assert bypass[0].decision is not None and bypass[0].decision.action == "violation"
    assert "obs.bypass" in bypass[0].decision.rule_ids
    assert "direct-ip" not in bypass[0].observations  # the pod resolved the name: bypass, not an IP literal
    to_proxy = [e for e in probe_flows if "to the audit proxy" in e.notes]
    assert to_proxy and all(e.decision is not None and e.decision.action == "allowed" for e in to_proxy)
    proxied = [e for e in events if e.sensor_id == "proxy-netns" and e.kind == "http"]
    assert [(e.destination.host, e.source.ip, e.decision.action if e.decision else None) for e in proxied] == [
        (names.API, podnet.pod_ip, "allowed")
    ]
