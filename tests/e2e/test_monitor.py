"""`auditor monitor`: alerts once per rule and destination, metrics, restarts without gaps going unrecorded."""

from __future__ import annotations

import io
import json
import socket
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
    """A webhook endpoint that fails its first request, so retry is exercised."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.attempts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.attempts == 1:
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


def _start(config: MonitorConfig, out: io.StringIO) -> tuple[threading.Event, threading.Thread]:
    """The monitor on a thread; if it dies, what killed it is written to `out` for the assertion message."""
    stop = threading.Event()

    def run() -> None:
        try:
            run_monitor(config, load_pack(), stop, stream=out)
        except BaseException as exc:
            out.write(f"monitor died: {type(exc).__name__}: {exc}\n")
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread


def test_alert_once_metric_and_restart(tmp_path: Path, receiver: Receiver) -> None:
    store_url = str(tmp_path / "evidence.db")
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
