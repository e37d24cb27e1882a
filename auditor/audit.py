"""`auditor audit`: the certification run, and the report step `demo` shares with it.

Locally: the proxy and the probe run on this machine for `--duration` seconds, or while a
command runs with `https_proxy` pointing at the proxy; then the store is reported, signed,
and the verdict is the exit code. Against a cluster: the store the in-cluster sensors wrote
is reported, its sources attributed with a Kubernetes inventory snapshot when one is given.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml
from mitmproxy.exceptions import OptionsError
from pydantic import BaseModel, ConfigDict, Field

from auditor.errors import AuditorError
from auditor.model import EgressEvent, Finding
from auditor.probe.capture import DEFAULT_BPF, check_capture
from auditor.probe.engine import ProbeConfig
from auditor.proxy.routing import ConnectTo
from auditor.proxy.runner import ProxyConfig
from auditor.report.bundle import FORMATS, make_report
from auditor.report.intoto import PUBLIC_KEY_NAME, generate_keys
from auditor.rules import Pack, group_findings, judge, load_pack
from auditor.sensors import LocalSensors
from auditor.store.base import Store, open_store
from auditor.store.chain import canonical_model

Progress = Callable[[str], None]
_SIOCGIFADDR = 0x8915


class RunReport(BaseModel):
    """What a run's report step produced: verdict, findings, files, and how to verify them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    status: str
    reason: str
    exit_code: int
    findings: list[Finding] = Field(default_factory=list)
    report_dir: Path
    files: dict[str, Path] = Field(default_factory=dict)
    public_key: Path | None = None
    key_id: str | None = None


class AuditResult(BaseModel):
    """A finished certification run."""

    report: RunReport
    store: str
    probe_available: bool | None = None  # None: no local probe (the cluster's sensors wrote the store)
    probe_reason: str | None = None
    command_exit: int | None = None
    seconds: float = 0.0
    events: int = 0
    notes: list[str] = Field(default_factory=list)


def free_port(host: str) -> int:
    """A port nothing listens on at `host` now, so the probe can be told the proxy's address before it starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def judged_findings(store_url: str, pack: Pack, view: Callable[[EgressEvent], EgressEvent] | None = None) -> list[Finding]:
    """The findings the report lists, for the terminal table."""
    store = open_store(store_url, create=False)
    try:
        events: Iterator[EgressEvent] = store.events()
        if view is not None:
            events = (view(e) for e in events)
        return group_findings(judge(events, pack), pack)
    finally:
        store.close()


def report_run(store_url: str, report_dir: Path, pack: Pack, *, sign_key: Path | None = None,
               overlays: Sequence[Path] = (), pack_path: Path | None = None,
               view: Callable[[Store], Store] | None = None,
               event_view: Callable[[EgressEvent], EgressEvent] | None = None) -> RunReport:
    """Every format plus a signed in-toto attestation. Without `sign_key` a throwaway key signs
    it: its private half is deleted, its public half is kept beside the bundle for `auditor verify`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="auditor-key-") as tmp:
        public: Path | None = None
        if sign_key is None:
            sign_key, tmp_public, _ = generate_keys(Path(tmp))
            public = report_dir.parent / PUBLIC_KEY_NAME
            shutil.copyfile(tmp_public, public)
        outcome = make_report(store_url, report_dir, pack, formats=list(FORMATS), sign_key=sign_key,
                              pack_path=str(pack_path) if pack_path else None, overlays=[str(o) for o in overlays],
                              store_view=view)
    return RunReport(status=outcome.status, reason=outcome.reason, exit_code=outcome.exit_code,
                     findings=judged_findings(store_url, pack, event_view), report_dir=report_dir, files=outcome.files,
                     public_key=public, key_id=outcome.signing_key_id)


def job_environment(proxy_url: str, proxy_ca: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """What the audited command sees: lowercase proxy variables (as Gretel's clients read them)
    and the proxy's CA as the trust store of OpenSSL, requests and curl."""
    env = dict(os.environ if base is None else base)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        env.pop(name, None)
    env.update(https_proxy=proxy_url, http_proxy=proxy_url, SSL_CERT_FILE=str(proxy_ca),
               REQUESTS_CA_BUNDLE=str(proxy_ca), CURL_CA_BUNDLE=str(proxy_ca), NODE_EXTRA_CA_CERTS=str(proxy_ca))
    return env


class LocalAudit(BaseModel):
    """What `auditor audit` (local) was asked to do."""

    out: Path
    command: list[str] = Field(default_factory=list)
    duration: float | None = None
    pack: Path | None = None
    overlays: list[Path] = Field(default_factory=list)
    sign_key: Path | None = None
    iface: str = "any"
    bpf: str | None = None
    listen_host: str = "127.0.0.1"
    connect_to: list[str] = Field(default_factory=list)
    upstream_ca: Path | None = None


def run_local_audit(req: LocalAudit, progress: Progress | None = None,
                    stop: threading.Event | None = None) -> AuditResult:
    """Sensors up, then the command (or the duration, or until `stop`), sensors down, report."""
    say = progress or (lambda _msg: None)
    if not req.command and req.duration is None and stop is None:
        raise AuditorError("nothing bounds the audit", fix="give --duration SECONDS or a command after --")
    if req.duration is not None and req.duration <= 0:
        raise AuditorError(f"--duration {req.duration:g}: not a time to audit for", fix="give a number of seconds above 0")
    reroutes = [_connect_to(spec) for spec in req.connect_to]
    bpf = probe_filter(req.bpf, reroutes)
    check_capture(req.iface, bpf)  # a typo is an error of use, not a run without a probe
    req.out.mkdir(parents=True, exist_ok=True)
    store = str(req.out / "evidence.db")
    if Path(store).exists():
        raise AuditorError("the output directory already holds an audit's evidence", file=store,
                           fix="pass a new --out directory")
    port = free_port(req.listen_host)
    proxy_address = f"{req.listen_host}:{port}"
    overlays = [*req.overlays, _proxy_overlay(req.out / "audit-proxy.yaml", proxy_address)]
    pack = load_pack(req.pack, overlays)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="auditor-audit-") as tmp:
        sensors = LocalSensors(
            proxy_config=ProxyConfig(listen_host=req.listen_host, listen_port=port, store=store, pack=req.pack,
                                     overlays=overlays, confdir=Path(tmp) / "proxy", sensor_id="proxy-audit",
                                     connect_to=req.connect_to, upstream_ca=req.upstream_ca),
            iface=req.iface,
            probe_config=ProbeConfig(sensor_id="probe-audit", proxies=[proxy_address]),
            pack=pack,
            bpf=bpf,
        )
        say("starting the proxy and the probe")
        sensors.start()
        command_exit: int | None = None
        try:
            assert sensors.proxy is not None
            ca = Path(tmp) / "proxy-ca.pem"
            shutil.copyfile(sensors.proxy.ca_cert, ca)
            if req.command:
                say(f"running {' '.join(req.command)}")
                command_exit = _run_command(req.command, job_environment(sensors.proxy.url, ca), req.duration, stop)
            else:
                say(f"auditing for {req.duration:g} s" if req.duration else "auditing until stopped")
                _wait(req.duration, stop)
        finally:
            say("stopping the sensors")
            sensors.stop()
    say("writing the signed report")
    report = report_run(store, req.out / "report", pack, sign_key=req.sign_key, overlays=overlays, pack_path=req.pack)
    notes = [] if sensors.probe_available else [f"probe unavailable: {sensors.probe_reason}"]
    return AuditResult(report=report, store=store, probe_available=sensors.probe_available, probe_reason=sensors.probe_reason,
                       command_exit=command_exit, seconds=time.monotonic() - started, events=_count(store), notes=notes)


def _connect_to(spec: str) -> ConnectTo:
    try:
        return ConnectTo.parse(spec)
    except OptionsError as exc:
        raise AuditorError(str(exc)) from None


def probe_filter(bpf: str | None, reroutes: Sequence[ConnectTo]) -> str:
    """What the probe captures: `bpf` (default all IP), less the proxy's connections to
    --connect-to targets. Those are test servers standing in for endpoints; the proxy
    records that traffic itself, under the names and ports the job asked for, while a
    flow to the target's address would read as an unexplained direct-IP connection on
    the wrong port. A default filter loses its VLAN clause: after `vlan`, every later
    primitive in a filter reads the tagged offsets, untagged packets' addresses included."""
    if not reroutes:
        return bpf or DEFAULT_BPF
    targets = " or ".join(f"(host {r.addr} and tcp port {r.to_port})" for r in reroutes)
    return f"({bpf or 'ip or ip6'}) and not ({targets})"


def _proxy_overlay(path: Path, address: str) -> Path:
    """This run's facts, composed last: the job runs on this machine, so its addresses stand
    for the hybrid pods; connections to the proxy this run started are internal (any proxy an
    earlier overlay names is not the one this run's traffic went through)."""
    doc = {
        "overlay": {"id": "local-audit", "description": "auditor audit: the job on this machine stands for the hybrid pods"},
        "cluster": {"pod_cidrs": local_addresses()},
        "proxy": f"http://{address}",
    }
    path.write_text("# Written by auditor audit for this run.\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def local_addresses() -> list[str]:
    """This machine's own addresses (loopback's first, each interface's IPv4 and IPv6) as host CIDRs."""
    found = ["127.0.0.1/32", "::1/128"]
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
        found.append(f"{socket.inet_ntoa(raw[20:24])}/32")
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hexaddr = line.split()[0]
        found.append(f"{ipaddress.IPv6Address(bytes.fromhex(hexaddr))}/128")
    return list(dict.fromkeys(found))


def _wait(duration: float | None, stop: threading.Event | None) -> None:
    deadline = time.monotonic() + duration if duration else None
    while stop is None or not stop.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        if stop is None:
            time.sleep(min(left or 0.2, 0.2))
        else:
            stop.wait(min(left, 0.2) if left is not None else 0.2)


def _run_command(command: list[str], env: dict[str, str], duration: float | None, stop: threading.Event | None) -> int:
    """Run the audited job; past `duration` (or on `stop`) it gets SIGTERM, then SIGKILL."""
    try:
        proc = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        raise AuditorError(f"cannot run {command[0]}: {exc.strerror}", fix="check the command after --") from None
    deadline = time.monotonic() + duration if duration else None
    while proc.poll() is None:
        if (deadline is not None and time.monotonic() >= deadline) or (stop is not None and stop.is_set()):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            break
        time.sleep(0.05)
    return int(proc.returncode)


def _count(store_url: str) -> int:
    store = open_store(store_url, create=False)
    try:
        return store.count()
    finally:
        store.close()


class AttributedStore:
    """The store as the report reads it, each event's source attributed with an inventory
    snapshot. The records and their chains are untouched: attribution is a reading of them,
    like the judgement the report applies at the same time."""

    def __init__(self, inner: Store, attribute: Callable[[EgressEvent], EgressEvent]) -> None:
        self._inner = inner
        self._attribute = attribute

    def events(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[EgressEvent]:
        return (self._attribute(e) for e in self._inner.events(since, until))

    def event_bodies(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[bytes]:
        """The attributed events as canonical JSON, for the report's bulk reader."""
        return (canonical_model(e) for e in self.events(since, until))

    def __getattr__(self, name: str) -> object:
        """Only what does not read events passes through: a new way of reading events must
        attribute them too, so it fails here instead of bypassing the inventory."""
        if name in _PASS_THROUGH:
            return getattr(self._inner, name)
        raise AttributeError(f"AttributedStore does not offer {name!r}")


_PASS_THROUGH = frozenset({"url", "count", "verify", "chain_heads", "close", "findings", "last_event"})


def run_cluster_audit(store_url: str, out: Path, *, pack: Path | None = None, overlays: Sequence[Path] = (),
                      inventory: Path | None = None, sign_key: Path | None = None,
                      progress: Progress | None = None) -> AuditResult:
    """Report the store the in-cluster sensors wrote, attributing sources with `inventory`."""
    from auditor.k8s.attribute import attribute, inventory_from_file

    say = progress or (lambda _msg: None)
    loaded = load_pack(pack, list(overlays))
    started = time.monotonic()
    view: Callable[[Store], Store] | None = None
    event_view: Callable[[EgressEvent], EgressEvent] | None = None
    notes: list[str] = []
    if inventory is not None:
        if not inventory.is_file():
            raise AuditorError("no such inventory snapshot", file=str(inventory), fix="write one with `auditor k8s snapshot --out FILE`")
        say(f"loading the inventory {inventory}")
        inv = inventory_from_file(inventory)
        attributed: Callable[[EgressEvent], EgressEvent] = lambda e: attribute(e, inv)  # noqa: E731
        event_view = attributed
        view = lambda s: AttributedStore(s, attributed)  # type: ignore[return-value,arg-type]  # noqa: E731
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inventory, out / "inventory-snapshot.json")
        notes.append(f"sources attributed with {inventory} (copied to {out / 'inventory-snapshot.json'})")
    say("writing the signed report")
    report = report_run(store_url, out / "report", loaded, sign_key=sign_key, overlays=overlays, pack_path=pack,
                        view=view, event_view=event_view)
    return AuditResult(report=report, store=store_url, seconds=time.monotonic() - started, events=_count(store_url), notes=notes,
                       probe_available=None)


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
