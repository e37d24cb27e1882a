"""Continuous monitoring: tail the store, judge what arrives, alert once per rule
and destination, expose Prometheus metrics.

The watcher reads only the store, so it sees the same evidence whether the
sensors run in this process, on other nodes, or were restarted in between. Alerts
are chained into the store as findings of the `monitor` judge once delivered (to the
webhook, when there is one); after a restart they are read back, so nothing
delivered is alerted twice and nothing undelivered is forgotten.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TextIO
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydantic import BaseModel, Field

from auditor.errors import AuditorError
from auditor.model import EgressEvent, Finding
from auditor.rules import Pack, group_findings, judge
from auditor.probe.engine import ProbeConfig
from auditor.probe.runner import config_from_pack
from auditor.proxy.runner import ProxyConfig
from auditor.sensors import ProbeThread, ProxyThread
from auditor.store.base import Store, open_store, redact_url, sqlite_path

MONITOR_SENSOR = "monitor"


class Metrics:
    """What an operator graphs: traffic, violations by rule, coverage, drops, chain heads."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("auditor_events", "Events seen in the store", ["sensor", "kind"], registry=r)
        self.decisions = Counter("auditor_decisions", "Judged events by decision", ["action"], registry=r)
        self.violations = Counter("auditor_violations", "Violating events by rule", ["rule"], registry=r)
        self.alerts = Counter("auditor_alerts", "Alerts raised (once per rule and destination)", ["rule"], registry=r)
        self.drops = Counter("auditor_dropped_events", "Events sensors could not record", ["sensor"], registry=r)
        self.gaps = Counter("auditor_sensor_gaps", "Monitoring gaps recorded", ["sensor"], registry=r)
        self.coverage = Gauge("auditor_coverage_ratio", "Share of judged events that were allowed or violations (not unverified)", registry=r)
        self.chain_head = Gauge("auditor_chain_head_seq", "Last sequence number of each sensor's chain", ["sensor"], registry=r)
        self.webhook_failures = Counter("auditor_webhook_failures", "Alert deliveries that failed after retries", registry=r)
        self._judged = 0
        self._verified = 0

    def observe(self, event: EgressEvent) -> None:
        self.events.labels(event.sensor_id, event.kind).inc()
        if event.sensor is not None:
            if event.sensor.dropped:
                self.drops.labels(event.sensor_id).inc(event.sensor.dropped)
            if event.sensor.lifecycle == "gap":
                self.gaps.labels(event.sensor_id).inc()
        d = event.decision
        if d is None:
            return
        self.decisions.labels(d.action).inc()
        self._judged += 1
        if d.action == "violation":
            self.violations.labels(d.rule_id).inc()
        if d.action != "unverified":
            self._verified += 1
        self.coverage.set(self._verified / self._judged)


class WarningThrottle:
    """At most one warning line per `interval` seconds: a receiver that is down fails
    every alert, and one line a minute says so without burying everything else; the
    lines held back are counted into the next one."""

    def __init__(self, say: Callable[[str], None], interval: float = 60.0) -> None:
        self.say = say
        self.interval = interval
        self._last: float | None = None
        self._held = 0
        self._lock = threading.Lock()

    def warn(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < self.interval:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        self.say(message + (f" ({held} more like it since the last warning)" if held else ""))


def webhook_label(url: str) -> str:
    """The receiver as it may be printed: scheme, host and port only, since a webhook's
    path or query often carries its secret token."""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


class AlertSink:
    """JSON lines on a stream, and optionally a webhook POST with retry and backoff,
    sent from its own thread so a slow receiver never stalls the watcher.

    An alert the receiver did not take after `retries` is tried again every
    `retry_every` seconds while the sink runs (unless the receiver refused it with a
    4xx); `on_delivered` hears of each one it took, `on_failure` of each round that
    failed, so the caller can record only what was delivered."""

    def __init__(
        self,
        stream: TextIO | None = None,
        webhook: str | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        retry_every: float = 60.0,
        on_failure: Callable[[dict, str], None] | None = None,
        on_delivered: Callable[[dict], None] | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.webhook = webhook
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retry_every = retry_every
        self.on_failure = on_failure
        self.on_delivered = on_delivered
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=10_000)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if webhook:
            self._thread = threading.Thread(target=self._deliver_loop, name="alert-webhook", daemon=True)
            self._thread.start()

    def send(self, alert: dict) -> None:
        self.stream.write(json.dumps(alert, sort_keys=True) + "\n")
        self.stream.flush()
        if self.webhook:
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                if self.on_failure:
                    self.on_failure(alert, "not sent: the webhook queue is full")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, one attempt each (no more backoff), within `timeout`."""
        if self._thread:
            self._closing.set()
            self._queue.put(None)
            self._thread.join(timeout)

    def _deliver_loop(self) -> None:
        held: list[dict] = []  # failed alerts, tried again when `due`
        due = 0.0
        while True:
            try:
                alert = self._queue.get(timeout=max(0.0, due - time.monotonic()) if held else None)
            except queue.Empty:
                batch, held = held, []
                for old in batch:
                    self._attempt(old, held)
                due = time.monotonic() + self.retry_every
                continue
            if alert is None:
                return
            if not held:
                due = time.monotonic() + self.retry_every
            self._attempt(alert, held)

    def _attempt(self, alert: dict, held: list[dict]) -> None:
        delivered, retry, why = self._deliver(alert)
        if delivered:
            if self.on_delivered:
                self.on_delivered(alert)
            return
        if retry and not self._closing.is_set():
            held.append(alert)
            why += f"; tried again in {self.retry_every:g} s"
        if self.on_failure:
            self.on_failure(alert, why)

    def _deliver(self, alert: dict) -> tuple[bool, bool, str]:
        """(delivered, worth another round, why not)."""
        body = json.dumps(alert, sort_keys=True).encode()
        delay = self.backoff
        last = ""
        attempts = 0
        for _ in range(self.retries + 1):
            attempts += 1
            req = urllib.request.Request(
                self.webhook or "", data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - operator-configured URL
                    if 200 <= resp.status < 300:
                        return True, False, ""
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    return False, False, f"refused with {last}"  # retrying will not change the receiver's mind
            except urllib.error.URLError as exc:
                last = str(exc.reason)
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            if self._closing.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff)
        return False, True, f"{last} after {attempts} attempt{'s' if attempts > 1 else ''}"


def alert_of(finding: Finding) -> dict:
    return {
        "type": "boundary-auditor.alert",
        "rule": finding.rule_id,
        "action": finding.action,
        "severity": finding.severity,
        "destination": finding.destination,
        "sources": finding.sources,
        "first_seen": finding.first_seen.isoformat(),
        "event_ids": finding.event_ids,
        "message": finding.message,
        "remediation": finding.remediation,
        "excerpts": finding.excerpts,
    }


class Watcher:
    """One pass at a time over what is new in the store.

    An alert is chained (a finding of the `monitor` judge) once every channel took it:
    at once when it only goes to the stream, on delivery when there is a webhook. One
    the webhook never took is therefore raised again after a restart, not forgotten."""

    def __init__(self, store: Store, pack: Pack, sink: AlertSink, metrics: Metrics) -> None:
        self.store = store
        self.pack = pack
        self.sink = sink
        self.metrics = metrics
        self.cursor: dict[str, int] = {}
        self.alerted: set[tuple[str, str]] = {
            (f.rule_id, f.destination) for f in store.findings(MONITOR_SENSOR)
        }
        self.undelivered: dict[tuple[str, str], Finding] = {}
        self._delivered: queue.SimpleQueue[dict] = queue.SimpleQueue()

    def delivered(self, alert: dict) -> None:
        """The sink's callback (its own thread): chained by the watcher's next pass."""
        self._delivered.put(alert)

    def record_deliveries(self) -> None:
        """Chain the alerts the webhook took since the last pass."""
        done: list[Finding] = []
        while True:
            try:
                alert = self._delivered.get_nowait()
            except queue.Empty:
                break
            finding = self.undelivered.pop((alert["rule"], alert["destination"]), None)
            if finding is not None:
                done.append(finding)
        if done:
            self.store.append_findings(MONITOR_SENSOR, done)

    def poll(self) -> int:
        """Judge new events; alert on new (rule, destination) pairs. Returns how many were read."""
        self.record_deliveries()
        batch = self.store.events_after(self.cursor)
        if not batch:
            return 0
        events = []
        for sensor_id, seq, event in batch:
            self.cursor[sensor_id] = max(self.cursor.get(sensor_id, 0), seq)
            events.append(event)
        judged = list(judge(events, self.pack))
        for event in judged:
            self.metrics.observe(event)
        fresh: list[Finding] = []
        for finding in group_findings([e for e in judged if e.decision and e.decision.action == "violation"], self.pack):
            key = (finding.rule_id, finding.destination)
            if key in self.alerted:
                continue
            self.alerted.add(key)
            fresh.append(finding)
        if fresh:
            if self.sink.webhook:
                self.undelivered.update({(f.rule_id, f.destination): f for f in fresh})
            else:
                self.store.append_findings(MONITOR_SENSOR, fresh)
            for finding in fresh:
                self.metrics.alerts.labels(finding.rule_id).inc()
                self.sink.send(alert_of(finding))
        for head in self.store.chain_heads():
            self.metrics.chain_head.labels(head.sensor_id).set(head.head_seq)
        return len(batch)


def parse_listen(listen: str, option: str = "--metrics-listen") -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, `[::1]:PORT`) as (host, port); anything else is an error of use."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise AuditorError(f"{option} {listen!r}: the port must be a number from 1 to 65535", fix=f"{option} 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve_metrics(metrics: Metrics, listen: str) -> WSGIServer:
    """`HOST:PORT` for the Prometheus scrape endpoint (`/metrics`); the caller shuts it down."""
    host, port = parse_listen(listen)
    try:
        server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise AuditorError(f"--metrics-listen {listen}: cannot listen there ({exc.strerror or exc})", fix="pick a free port on an address of this host") from None
    return server


class MonitorConfig(BaseModel):
    store_url: str
    poll_interval: float = 1.0
    metrics_listen: str | None = None
    webhook: str | None = None
    report_every: float | None = None  # seconds; None: no rolling report
    report_dir: Path | None = None
    report_window: float | None = None  # seconds of history per rolling report; None: everything
    sign_key: Path | None = None
    duration: float | None = None
    # Sensors this process runs itself; without them it watches what other processes write.
    proxy_listen: str | None = None
    proxy_mode: Literal["audit", "enforce"] = "audit"
    proxy_confdir: Path | None = None
    iface: str | None = None
    pack_path: Path | None = None
    overlays: list[Path] = Field(default_factory=list)
    # webhook delivery: attempts with backoff, then another round every `webhook_retry_every` s
    webhook_retries: int = 5
    webhook_backoff: float = 0.5
    webhook_retry_every: float = 60.0
    warn_every: float = 60.0  # seconds between two warnings of failed deliveries


_SECONDS = {"poll_interval": "--poll", "report_every": "--report-every", "report_window": "--window", "duration": "--duration"}


def check_config(config: MonitorConfig) -> None:
    """Errors of use, found before anything starts: a monitor that comes up and then
    quietly does nothing (no reports, no metrics, no deliveries) is the worst outcome."""
    for field, option in _SECONDS.items():
        value = getattr(config, field)
        if value is not None and not value > 0:
            raise AuditorError(f"{option} {value:g}: must be a positive number of seconds", fix=f"give {option} more than 0, or leave it out")
    if config.metrics_listen:
        parse_listen(config.metrics_listen)
    if config.webhook:
        parts = urllib.parse.urlsplit(config.webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuditorError(f"--webhook {config.webhook!r} is not an http(s) URL", fix="--webhook https://alerts.example.internal/hook")
    path = sqlite_path(config.store_url)
    if path is not None and not path.exists() and not (config.proxy_listen or config.iface):
        raise AuditorError(
            "no such evidence store, and this monitor runs no sensor that would write it", file=str(path),
            fix=f"check the path; to start the monitor before its sensors, create the store first with `auditor store migrate --store {path}`",
        )


def start_sensors(config: MonitorConfig, pack: Pack) -> list[ProxyThread | ProbeThread]:
    """The proxy and/or probe the monitor was asked to run, writing the store it tails.
    A probe that cannot capture is an error here: a monitor that silently watches
    nothing is worse than one that refuses to start."""
    started: list[ProxyThread | ProbeThread] = []
    try:
        if config.iface:
            probe_config, _ = config_from_pack(pack, ProbeConfig(sensor_id=f"probe-{socket.gethostname()}"))
            if config.proxy_listen and not probe_config.proxies:
                probe_config.proxies = [config.proxy_listen]
            started.append(ProbeThread(config.iface, config.store_url, config=probe_config, pack=pack, bpf=None).start())
        if config.proxy_listen:
            extra = {"confdir": config.proxy_confdir} if config.proxy_confdir else {}
            proxy = ProxyConfig.from_cli(
                config.proxy_listen, mode=config.proxy_mode, store=config.store_url,
                pack=config.pack_path, overlays=config.overlays, **extra,
            )
            started.append(ProxyThread(proxy).start())
    except BaseException:
        stop_sensors(started)
        raise
    return started


def stop_sensors(sensors: list[ProxyThread | ProbeThread]) -> None:
    """Proxy first: the probe decides bypass against the proxy records in the store."""
    for sensor in sorted(sensors, key=lambda s: isinstance(s, ProbeThread)):
        sensor.stop()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _started_line(config: MonitorConfig, store: Store) -> str:
    """What the monitor is doing, once, on stderr: it otherwise says nothing until an alert."""
    heads = store.chain_heads()
    held = f"{sum(h.count for h in heads)} records in {len(heads)} chains so far" if heads else "empty so far: waiting for sensors to write"
    parts = [f"monitor: tailing {redact_url(config.store_url)} ({held})"]
    if config.proxy_listen:
        parts.append(f"proxy on {config.proxy_listen}")
    if config.iface:
        parts.append(f"probe on {config.iface}")
    parts.append("alerts on stdout" + (f" and to {webhook_label(config.webhook)}" if config.webhook else ""))
    if config.metrics_listen:
        host, port = parse_listen(config.metrics_listen)
        parts.append(f"metrics on http://{host}:{port}/metrics")
    if config.report_every and config.report_dir is not None:
        parts.append(f"a report every {config.report_every:g} s in {config.report_dir}")
    return "; ".join(parts)


def run_monitor(
    config: MonitorConfig,
    pack: Pack,
    stop: threading.Event,
    *,
    stream: TextIO | None = None,
    on_report: Callable[[Path, str], None] | None = None,
    log: Callable[[str], None] = _say,
) -> Metrics:
    """Tail, judge, alert and report until `stop` is set (or `duration` passes).
    Sensors write the store on their own; this loop only reads it and chains alerts.
    `log` hears what a person watching should know: the start, failed deliveries."""
    from auditor.report.bundle import make_report  # noqa: PLC0415 - the report pulls in jinja2 only when asked

    check_config(config)
    metrics = Metrics()
    store = open_store(config.store_url)
    metrics_server: WSGIServer | None = None
    try:
        if config.metrics_listen:
            metrics_server = serve_metrics(metrics, config.metrics_listen)
        sensors = start_sensors(config, pack)
    except BaseException:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        store.close()
        raise
    throttle = WarningThrottle(log, config.warn_every)
    target = webhook_label(config.webhook) if config.webhook else ""

    def failed(alert: dict, why: str) -> None:
        metrics.webhook_failures.inc()
        throttle.warn(f"warning: webhook {target}: alert {alert['rule']} to {alert['destination']} not delivered: {why}")

    sink = AlertSink(
        stream, config.webhook, retries=config.webhook_retries, backoff=config.webhook_backoff,
        retry_every=config.webhook_retry_every, on_failure=failed,
    )
    watcher = Watcher(store, pack, sink, metrics)
    sink.on_delivered = watcher.delivered
    log(_started_line(config, store))
    started = time.monotonic()
    next_report = started + config.report_every if config.report_every else None
    try:
        while not stop.is_set():
            while watcher.poll():
                pass
            now = time.monotonic()
            if next_report is not None and now >= next_report and config.report_dir is not None:
                since = datetime.now(UTC) - timedelta(seconds=config.report_window) if config.report_window else None
                outcome = make_report(
                    config.store_url, config.report_dir, pack,
                    formats=["html", "json", "sarif", "junit"] + (["intoto"] if config.sign_key else []),
                    since=since, sign_key=config.sign_key,
                )
                if on_report:
                    on_report(outcome.out_dir, outcome.status)
                next_report = now + (config.report_every or 0)
            if config.duration is not None and now - started >= config.duration:
                break
            stop.wait(config.poll_interval)
    finally:
        stop_sensors(sensors)
        watcher.poll()
        sink.close()
        watcher.record_deliveries()
        if watcher.undelivered:
            log(f"warning: webhook {target}: {len(watcher.undelivered)} alerts not delivered; "
                "not recorded as sent, so they are raised again when the monitor restarts")
        store.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    return metrics
