"""`auditor demo`: the whole auditor on a simulated Gretel Hybrid, on loopback, in seconds.

The simulation (control plane, artifacts, registry, S3, a foreign host, DNS) starts on
127.0.0.x, the proxy and the probe start in this process, the simulated worker runs a
scenario through the proxy, and the run is reported in every format and signed. Nothing
leaves the machine and no cluster is needed.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from auditor.audit import RunReport, free_port, report_run, utc_stamp
from auditor.errors import AuditorError
from auditor.probe.engine import ProbeConfig
from auditor.proxy.runner import ProxyConfig
from auditor.rules import load_pack
from auditor.sensors import LocalSensors
from auditor.sim import SCENARIOS, ScenarioResult, Simulation, names, run_scenario

Progress = Callable[[str], None]
STAGES: dict[str, str] = {
    "simulation": "starting the simulated Gretel Hybrid (control plane, registry, S3, DNS)",
    "sensors": "starting the proxy and the probe",
    "scenario": "running the hybrid worker's call sequence",
    "stop": "stopping the sensors (flushing the evidence store)",
    "report": "judging the evidence and writing the signed report",
}
PROXY_HOST = "127.0.0.1"
PROBE_IFACE = "lo"


class DemoResult(BaseModel):
    scenario: str
    run_dir: Path
    report: RunReport
    store: Path
    overlay: Path
    probe_available: bool
    probe_reason: str | None = None
    steps: int = 0
    run: ScenarioResult | None = None  # what the simulated worker sent, step by step (times, digests)
    step_problems: list[str] = Field(default_factory=list)  # steps of the real call sequence that failed
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return self.report.exit_code


def _start_simulation(ca_dir: Path) -> tuple[Simulation, list[str]]:
    """On the real ports (443, 53) when this process may bind them, so the policy sees the
    contract's ports; else on free ports, which the report then shows as port violations."""
    try:
        return Simulation.start(ca_dir, https_port=443, dns_port=53), []
    except AuditorError as exc:
        sim = Simulation.start(ca_dir.with_name("sim-ca-free-ports"))
        return sim, [f"simulated hosts on free ports, not 443 ({exc.reason}): every request is reported on a "
                     "port the contract does not allow; run as root (or with CAP_NET_BIND_SERVICE) for the real ports"]


def capture_filter(sim: Simulation, proxy_port: int, clients: tuple[str, ...] = (names.POD_IP, names.NODE_IP)) -> str:
    """What the probe watches: the simulated pods' and nodes' own traffic (as a probe on their
    nodes would), on the simulation's and the proxy's ports; other loopback traffic is not the demo's.
    The proxy's upstream connections are left out: the proxy records those itself, at L7."""
    ports = sorted({port for _, port in sim.hosts.values()} | {sim.dns_address[1], proxy_port})
    return f"({' or '.join(f'host {h}' for h in clients)}) and ({' or '.join(f'port {p}' for p in ports)})"


def run_demo(scenario: str, out_dir: Path, progress: Progress | None = None, *, iface: str = PROBE_IFACE) -> DemoResult:
    """Simulation, sensors, scenario, report; `progress` is told each stage as it starts.
    `iface` is where the probe captures (the simulation's traffic is on loopback)."""
    if scenario not in SCENARIOS:
        raise AuditorError(f"unknown scenario {scenario!r}", fix=f"use one of {', '.join(SCENARIOS)}")
    say = progress or (lambda _stage: None)
    started = time.monotonic()
    run_dir = out_dir / f"{scenario}-{utc_stamp()}"
    if run_dir.exists():
        run_dir = out_dir / f"{scenario}-{utc_stamp()}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=False)
    store = run_dir / "evidence.db"
    with tempfile.TemporaryDirectory(prefix="auditor-demo-") as tmp:
        say("simulation")
        sim, notes = _start_simulation(Path(tmp) / "sim-ca")
        try:
            port = free_port(PROXY_HOST)
            site = sim.site_overlay()
            site["proxy"] = f"http://{PROXY_HOST}:{port}"
            overlay = run_dir / "site-overlay.yaml"
            overlay.write_text("# The simulated cluster's site facts (auditor demo).\n" + yaml.safe_dump(site, sort_keys=False))
            pack = load_pack(None, [overlay])
            say("sensors")
            sensors = LocalSensors(
                proxy_config=ProxyConfig(listen_host=PROXY_HOST, listen_port=port, store=str(store), overlays=[overlay],
                                         upstream_ca=sim.ca_cert_path, connect_to=sim.connect_to(),
                                         confdir=Path(tmp) / "proxy", sensor_id="proxy-demo"),
                iface=iface,
                probe_config=ProbeConfig(sensor_id="probe-demo", linger_s=0),
                pack=pack,
                bpf=capture_filter(sim, port),
            ).start()
            try:
                assert sensors.proxy is not None
                say("scenario")
                result = run_scenario(scenario, sensors.proxy.url, sim, proxy_ca=sensors.proxy.ca_cert)
            finally:
                say("stop")
                sensors.stop()
        finally:
            sim.stop()
    if not sensors.probe_available:
        notes.append(f"probe unavailable ({sensors.probe_reason}): bypass, DNS tunnelling and inbound connections "
                     "were not observed, and the report says so")
    say("report")
    report = report_run(str(store), run_dir / "report", pack, overlays=[overlay])
    problems = [f"{s.id}: {s.error}" for s in result.steps if not s.ok]
    return DemoResult(scenario=scenario, run_dir=run_dir, report=report, store=store, overlay=overlay,
                      probe_available=sensors.probe_available, probe_reason=sensors.probe_reason, steps=len(result.steps), run=result,
                      step_problems=problems, notes=notes, seconds=time.monotonic() - started)


# --- without root: the same demo in a private user and network namespace -------------------------

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def has_rights() -> bool:
    """Whether this process may put the simulated hosts on 443 and capture packets."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((names.DEFAULT_ADDRESSES[names.API], 443))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW):
            pass
    except (OSError, AttributeError):
        return False
    return True


def _enter_private_network() -> str | None:
    """Become root of a new user namespace owning a new network namespace (no privilege needed
    where the system allows unprivileged user namespaces): there 443, 53 and capture on the
    namespace's own loopback are ours. Returns why not, or None."""
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unprivileged user namespaces are not available ({os.strerror(ctypes.get_errno())})"
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))[:18])[1]
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))
    except OSError as exc:
        return f"the private network namespace could not be set up ({exc.strerror})"
    return None if has_rights() else "the system withholds capabilities inside user namespaces"


def run_demo_anywhere(scenario: str, out_dir: Path, progress: Progress | None = None) -> DemoResult:
    """`run_demo` here when this process has the rights; otherwise in a forked child that first
    enters a private user and network namespace (nothing leaves it, and this process's own
    network is untouched). When that is not possible either, here on free ports without the probe."""
    if has_rights() or not hasattr(os, "fork"):
        return run_demo(scenario, out_dir, progress)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        out = os.fdopen(write_fd, "w", buffering=1)
        try:
            why_not = _enter_private_network()
            if why_not is not None:
                out.write(json.dumps({"unavailable": why_not}) + "\n")
            else:
                result = run_demo(scenario, out_dir, lambda stage: out.write(json.dumps({"stage": stage}) + "\n"))
                result.notes.insert(0, "not root: ran in a private user and network namespace, where the simulated hosts "
                                       "listen on 443 and the probe captures that namespace's loopback")
                out.write(json.dumps({"result": result.model_dump(mode="json")}) + "\n")
        except AuditorError as exc:
            out.write(json.dumps({"error": str(exc)}) + "\n")
        except BaseException as exc:  # handed to the parent, which raises it as one line
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        finally:
            out.flush()
            os._exit(0)
    os.close(write_fd)
    message: dict[str, object] = {}
    with os.fdopen(read_fd) as inbox:
        for line in inbox:
            message = json.loads(line)
            if "stage" in message and progress is not None:
                progress(str(message["stage"]))
    os.waitpid(pid, 0)
    if "result" in message:
        return DemoResult.model_validate(message["result"])
    if "error" in message:
        raise AuditorError(f"the demo failed: {message['error']}")
    result = run_demo(scenario, out_dir, progress)
    result.notes.insert(0, f"not root, and no private network namespace: {message.get('unavailable', 'the child gave no answer')}")
    return result
