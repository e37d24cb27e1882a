"""The demo's cost: the simulated hybrid worker's scenario straight to the simulation, against
the same scenario through the auditor (proxy classifying every body, probe capturing on lo),
interleaved in one run; then whole `run_demo` runs (sensors, scenario, signed report).

Run (as root, like the demo's probe): python benchmarks/demo.py [--rounds 5] [--scenario leaky]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from auditor.audit import free_port
from auditor.demo import PROXY_HOST, capture_filter, run_demo
from auditor.probe.engine import ProbeConfig
from auditor.proxy.runner import ProxyConfig
from auditor.rules import load_pack
from auditor.sensors import LocalSensors
from auditor.sim import Simulation, run_scenario


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scenario", default="leaky")
    args = ap.parse_args()
    direct: list[float] = []
    audited: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sim = Simulation.start(root / "ca", https_port=443, dns_port=53)
        try:
            port = free_port(PROXY_HOST)
            site = root / "site.yaml"
            sim.write_site_overlay(site)
            sensors = LocalSensors(
                proxy_config=ProxyConfig(listen_host=PROXY_HOST, listen_port=port, store=str(root / "ev.db"), overlays=[site],
                                         upstream_ca=sim.ca_cert_path, connect_to=sim.connect_to(), confdir=root / "proxy",
                                         sensor_id="proxy-bench"),
                iface="lo", probe_config=ProbeConfig(sensor_id="probe-bench", proxies=[f"{PROXY_HOST}:{port}"]),
                pack=load_pack(None, [site]), bpf=capture_filter(sim, port),
            ).start()
            try:
                assert sensors.proxy is not None
                run_scenario(args.scenario, sensors.proxy.url, sim, proxy_ca=sensors.proxy.ca_cert)  # warm-up
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    run_scenario(args.scenario, None, sim)
                    direct.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    run_scenario(args.scenario, sensors.proxy.url, sim, proxy_ca=sensors.proxy.ca_cert)
                    audited.append(time.perf_counter() - t)
            finally:
                sensors.stop()
        finally:
            sim.stop()
        whole = []
        for i in range(max(1, args.rounds // 2)):
            t = time.perf_counter()
            run_demo(args.scenario, root / f"demo-{i}")
            whole.append(time.perf_counter() - t)
    d, a = statistics.median(direct), statistics.median(audited)
    print(f"scenario {args.scenario}, {args.rounds} rounds, medians")
    print(f"  straight to the simulation (reference): {d * 1000:8.1f} ms")
    print(f"  through proxy + probe (auditor)       : {a * 1000:8.1f} ms")
    print(f"  ratio auditor / reference             : {a / d:8.2f}x")
    print(f"  whole `auditor demo` run (sensors, scenario, signed report in every format): {statistics.median(whole):.2f} s")


if __name__ == "__main__":
    main()
