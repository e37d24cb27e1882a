"""Continuous monitoring: tail the store, judge what arrives, alert once per rule
and destination, expose Prometheus metrics.

The watcher reads only the store, so it sees the same evidence whether the
sensors run in this process, on other nodes, or were restarted in between. Alerts
are chained into the store as findings of the `monitor` judge; after a restart
they are read back, so nothing is alerted twice and nothing is forgotten.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydantic import BaseModel, Field

from auditor.model import EgressEvent, Finding
from auditor.rules import Pack, group_findings, judge
from auditor.probe.engine import ProbeConfig
from auditor.probe.runner import config_from_pack
from auditor.proxy.runner import ProxyConfig
from auditor.sensors import ProbeThread, ProxyThread
from auditor.store.base import Store, open_store

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


class AlertSink:
    """JSON lines on a stream, and optionally a webhook POST with retry and backoff,
    sent from its own thread so a slow receiver never stalls the watcher."""

    def __init__(
        self,
        stream: TextIO | None = None,
        webhook: str | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        on_failure: Callable[[dict, str], None] | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.webhook = webhook
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_failure = on_failure
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=10_000)
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
                    self.on_failure(alert, "webhook queue full")

    def close(self, timeout: float = 10.0) -> None:
        if self._thread:
            self._queue.put(None)
            self._thread.join(timeout)

    def _deliver_loop(self) -> None:
        while (alert := self._queue.get()) is not None:
            self._deliver(alert)

    def _deliver(self, alert: dict) -> None:
        body = json.dumps(alert, sort_keys=True).encode()
        delay = self.backoff
        last = ""
        for _ in range(self.retries + 1):
            req = urllib.request.Request(
                self.webhook or "", data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - operator-configured URL
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this alert; retrying will not change its mind
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        if self.on_failure:
            self.on_failure(alert, last)


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
    """One pass at a time over what is new in the store."""

    def __init__(self, store: Store, pack: Pack, sink: AlertSink, metrics: Metrics) -> None:
        self.store = store
        self.pack = pack
        self.sink = sink
        self.metrics = metrics
        self.cursor: dict[str, int] = {}
        self.alerted: set[tuple[str, str]] = {
            (f.rule_id, f.destination) for f in store.findings(MONITOR_SENSOR)
        }

    def poll(self) -> int:
        """Judge new events; alert on new (rule, destination) pairs. Returns how many were read."""
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
            self.store.append_findings(MONITOR_SENSOR, fresh)
            for finding in fresh:
                self.metrics.alerts.labels(finding.rule_id).inc()
                self.sink.send(alert_of(finding))
        for head in self.store.chain_heads():
            self.metrics.chain_head.labels(head.sensor_id).set(head.head_seq)
        return len(batch)


def serve_metrics(metrics: Metrics, listen: str) -> None:
    """`HOST:PORT` for the Prometheus scrape endpoint (`/metrics`)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=metrics.registry)


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


def run_monitor(
    config: MonitorConfig,
    pack: Pack,
    stop: threading.Event,
    *,
    stream: TextIO | None = None,
    on_report: Callable[[Path, str], None] | None = None,
) -> Metrics:
    """Tail, judge, alert and report until `stop` is set (or `duration` passes).
    Sensors write the store on their own; this loop only reads it and chains alerts."""
    from auditor.report.bundle import make_report  # noqa: PLC0415 - the report pulls in jinja2 only when asked

    metrics = Metrics()
    if config.metrics_listen:
        serve_metrics(metrics, config.metrics_listen)
    sensors = start_sensors(config, pack)
    sink = AlertSink(stream, config.webhook, on_failure=lambda _a, _why: metrics.webhook_failures.inc())
    store = open_store(config.store_url)
    watcher = Watcher(store, pack, sink, metrics)
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
        store.close()
    return metrics
