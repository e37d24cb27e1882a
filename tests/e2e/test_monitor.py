"""`auditor monitor`: alerts once per rule and destination, metrics, restarts without gaps going unrecorded."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditor.model import Destination, EgressEvent, HttpInfo, Source
from auditor.monitor import MonitorConfig, run_monitor
from auditor.rules import load_pack
from auditor.store.base import open_store
from auditor.store.writer import BatchWriter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A webhook endpoint that fails its first `failures` requests (503), so retry is exercised."""

    def __init__(self, failures: int = 1) -> None:
        self.alerts: list[dict] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.attempts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.attempts <= failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.alerts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _put(bucket: str) -> EgressEvent:
    return EgressEvent(
        time=datetime.now(UTC),
        sensor_id="proxy-test",
        kind="http",
        source=Source(ip="10.42.0.9", node="node-a", scope="node"),
        destination=Destination(host="s3.amazonaws.com", sni="s3.amazonaws.com", http_host="s3.amazonaws.com", port=443, tls=True),
        http=HttpInfo(method="PUT", scheme="https", path=f"/{bucket}/dump.csv", status=200),
    )


def _wait(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _start(config: MonitorConfig, out: io.StringIO, log: list[str] | None = None) -> tuple[threading.Event, threading.Thread]:
    """The monitor on a thread; if it dies, what killed it is written to `out` for the assertion message."""
    stop = threading.Event()

    def run() -> None:
        try:
            run_monitor(config, load_pack(), stop, stream=out, log=(log if log is not None else []).append)
        except BaseException as exc:
            out.write(f"monitor died: {type(exc).__name__}: {exc}\n")
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread


def test_alert_once_metric_and_restart(tmp_path: Path, receiver: Receiver) -> None:
    store_url = str(tmp_path / "evidence.db")
    open_store(store_url).close()  # a monitor that runs no sensor refuses a store that does not exist
    metrics_port = _free_port()
    config = MonitorConfig(store_url=store_url, poll_interval=0.05, metrics_listen=f"127.0.0.1:{metrics_port}", webhook=receiver.url)
    out = io.StringIO()
    stop, thread = _start(config, out)

    writer = BatchWriter(open_store(store_url), "proxy-test", flush_interval=0.05)
    writer.start(detail="test sensor")
    writer.submit(_put("someone-elses-bucket"))
    writer.submit(_put("someone-elses-bucket"))
    assert _wait(lambda: len(receiver.alerts) == 1), out.getvalue()
    alert = receiver.alerts[0]
    assert alert["rule"].endswith("foreign-bucket-write") and "someone-elses-bucket" in alert["destination"]
    assert receiver.attempts == 2  # the 503 was retried

    scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    rule = alert["rule"]
    assert f'auditor_violations_total{{rule="{rule}"}} 2.0' in scrape
    assert f'auditor_alerts_total{{rule="{rule}"}} 1.0' in scrape
    assert 'auditor_chain_head_seq{sensor="proxy-test"}' in scrape
    stop.set()
    thread.join(10)
    writer.close()  # no stop record: as if the sensor were killed

    # restart both: the sensor's gap is chained, the old alert is not raised again, a new destination is
    config2 = config.model_copy(update={"metrics_listen": None})
    out2 = io.StringIO()
    stop2, thread2 = _start(config2, out2)
    writer2 = BatchWriter(open_store(store_url), "proxy-test", flush_interval=0.05)
    writer2.start(detail="restarted")
    writer2.submit(_put("someone-elses-bucket"))
    writer2.submit(_put("another-strangers-bucket"))
    assert _wait(lambda: len(receiver.alerts) == 2)
    time.sleep(0.3)
    assert len(receiver.alerts) == 2 and "another-strangers-bucket" in receiver.alerts[1]["destination"]
    writer2.stop()
    stop2.set()
    thread2.join(10)

    store = open_store(store_url)
    lifecycle = [e.sensor.lifecycle for e in store.events() if e.sensor and e.sensor_id == "proxy-test"]
    assert lifecycle == ["start", "gap", "start", "stop"]
    assert store.verify().ok
    assert [json.loads(line)["rule"] for line in (out.getvalue() + out2.getvalue()).splitlines()] == [alert["rule"]] * 2


def test_monitor_runs_its_own_proxy_and_probe(tmp_path: Path) -> None:
    """`--proxy-listen` and `--iface`: the sensors run inside the monitor and stay up;
    a request through its proxy to a destination outside the pack is alerted."""
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    origin = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    store_url = str(tmp_path / "evidence.db")
    proxy_port = _free_port()
    config = MonitorConfig(
        store_url=store_url, poll_interval=0.05, proxy_listen=f"127.0.0.1:{proxy_port}",
        proxy_confdir=tmp_path / "ca", iface="lo",
    )
    out = io.StringIO()
    stop, thread = _start(config, out)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", proxy_port)) == 0

        assert _wait(listening, 60), out.getvalue()
        proxy = {"http": f"http://127.0.0.1:{proxy_port}"}
        handler = urllib.request.ProxyHandler(proxy)
        urllib.request.build_opener(handler).open(f"http://127.0.0.1:{origin.server_address[1]}/", timeout=10).read()
        assert _wait(lambda: "127.0.0.1" in out.getvalue(), 20), out.getvalue()
    finally:
        stop.set()
        thread.join(30)
        origin.shutdown()
    store = open_store(store_url)
    sensors = {e.sensor_id.split("-")[0] for e in store.events() if e.sensor and e.sensor.lifecycle == "stop"}
    assert sensors == {"proxy", "probe"}
    assert store.verify().ok


def _violations(store_url: str, *buckets: str) -> None:
    store = open_store(store_url)
    store.append([_put(bucket) for bucket in buckets])
    store.close()


def _monitor_findings(store_url: str) -> list[str]:
    store = open_store(store_url, create=False)
    try:
        return [f.destination for f in store.findings("monitor")]
    finally:
        store.close()


def test_undelivered_alerts_are_warned_once_and_raised_again_after_a_restart(tmp_path: Path) -> None:
    """A receiver that is down: one warning line (not one per alert) on the log, the
    alerts are not chained as sent, and the next run delivers them."""
    store_url = str(tmp_path / "evidence.db")
    _violations(store_url, "someone-elses-bucket", "another-strangers-bucket")
    down = Receiver(failures=10**6)
    config = MonitorConfig(store_url=store_url, poll_interval=0.05, webhook=down.url, webhook_retries=1,
                           webhook_backoff=0.01, webhook_retry_every=600, warn_every=600)
    out, log = io.StringIO(), []
    stop, thread = _start(config, out, log)
    try:
        assert _wait(lambda: down.attempts >= 4), out.getvalue()  # two alerts, two attempts each
        assert _wait(lambda: any("not delivered:" in line for line in log)), log
    finally:
        stop.set()
        thread.join(15)
        down.server.shutdown()
    assert log[0].startswith(f"monitor: tailing {store_url} (2 records in 1 chains so far); alerts on stdout and to http://127.0.0.1:"), log
    failures = [line for line in log if "not delivered:" in line]
    assert len(failures) == 1 and failures[0].startswith("warning: webhook http://127.0.0.1:") and "HTTP 503 after 2 attempts" in failures[0]
    assert "/hook" not in failures[0]  # a webhook's path may hold its token: never printed
    assert "2 alerts not delivered" in log[-1] and "raised again when the monitor restarts" in log[-1], log
    assert len(out.getvalue().splitlines()) == 2
    assert _monitor_findings(store_url) == []

    up = Receiver(failures=0)
    out2 = io.StringIO()
    stop2, thread2 = _start(config.model_copy(update={"webhook": up.url}), out2)
    try:
        assert _wait(lambda: len(up.alerts) == 2), out2.getvalue()
        assert _wait(lambda: len(_monitor_findings(store_url)) == 2)
    finally:
        stop2.set()
        thread2.join(15)
        up.server.shutdown()
    assert {a["destination"] for a in up.alerts} == set(_monitor_findings(store_url))
    assert len(out2.getvalue().splitlines()) == 2
    store = open_store(store_url, create=False)
    assert store.verify().ok
    store.close()


def test_a_failed_alert_is_tried_again_while_the_monitor_runs(tmp_path: Path) -> None:
    """The receiver comes back within the run: the next round delivers the alert, and
    only then is it chained."""
    store_url = str(tmp_path / "evidence.db")
    _violations(store_url, "someone-elses-bucket")
    flaky = Receiver(failures=3)  # round one: two attempts fail; round two: one fails, one lands
    config = MonitorConfig(store_url=store_url, poll_interval=0.05, webhook=flaky.url, webhook_retries=1,
                           webhook_backoff=0.01, webhook_retry_every=0.3)
    out, log = io.StringIO(), []
    stop, thread = _start(config, out, log)
    try:
        assert _wait(lambda: len(flaky.alerts) == 1), (out.getvalue(), log)
        assert _wait(lambda: len(_monitor_findings(store_url)) == 1)
    finally:
        stop.set()
        thread.join(15)
        flaky.server.shutdown()
    assert flaky.attempts == 4
    assert any("HTTP 503 after 2 attempts; tried again in 0.3 s" in line for line in log), log
    assert not any("raised again when the monitor restarts" in line for line in log), log


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditor.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "400"})


def test_monitor_errors_of_use_are_one_line_and_exit_3(tmp_path: Path) -> None:
    """Each of these used to crash with a traceback (exit 1) or start and quietly do
    nothing: a typo'd store, reports never written, a webhook URL that cannot be sent to."""
    store = tmp_path / "evidence.db"
    open_store(str(store)).close()
    typo = tmp_path / "evidnce.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        cases = [
            (("--store", str(store), "--metrics-listen", "127.0.0.1:notaport"), "--metrics-listen '127.0.0.1:notaport': the port must be a number"),
            (("--store", str(store), "--metrics-listen", busy), f"--metrics-listen {busy}: cannot listen there"),
            (("--store", str(typo)), f"{typo}: no such evidence store, and this monitor runs no sensor that would write it"),
            (("--store", str(store), "--report-every", "0"), "--report-every 0: must be a positive number of seconds"),
            (("--store", str(store), "--poll", "-1"), "--poll -1: must be a positive number of seconds"),
            (("--store", str(store), "--webhook", "alerts.example.internal/hook"), "is not an http(s) URL"),
            (("--store", "mysql://x/y"), "unsupported store URL scheme 'mysql'"),
        ]
        for args, said in cases:
            run = _cli("monitor", *args, "--duration", "5")
            assert run.returncode == 3, (args, run.stderr)
            assert run.stderr.startswith("error: ") and run.stderr.strip().count("\n") == 0 and said in run.stderr, (args, run.stderr)
    assert not typo.exists()
