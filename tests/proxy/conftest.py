"""Real TLS on loopback: a test CA, HTTPS upstreams that record what reached them, and
the auditor proxy running in-process (one at a time: mitmproxy's context is global)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from auditor.model import EgressEvent
from auditor.proxy.runner import ProxyConfig, serve
from auditor.sim.ca import IssuedCert, ThrowawayCA

API = "api.gretel.cloud"
ARTIFACTS = "artifacts.gretel.cloud"
FOREIGN = "collector.example.net"
REGISTRY = "074762682575.dkr.ecr.us-west-2.amazonaws.com"
OTHER_REGISTRY = "123456789012.dkr.ecr.us-west-2.amazonaws.com"  # an ECR registry no get_login answer names
UPSTREAM_IP = "127.0.7.1"  # port 443 like the real endpoints, so the pack's port rules hold
WRONG_CERT_IP = "127.0.7.2"
NAMES = [API, ARTIFACTS, FOREIGN, REGISTRY, OTHER_REGISTRY, "s3.amazonaws.com"]
LOGIN_PASSWORD = "ecr-password-never-recorded"  # what the get_login answer carries beside the registry


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    ip: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # request targets, recorded when the head arrives
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            with upstream.lock:
                upstream.started.append(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                body = b"".join(parts)
            with upstream.lock:
                upstream.seen.append(Seen(self.command, self.path, dict(self.headers), body))
            encoding = None
            if self.path.startswith("/big-response"):
                payload = b"x" * (3 * 1024 * 1024)
            elif self.path.startswith("/opt/containers/get_login"):  # as api.gretel.cloud answers it, compressed
                login = {"data": {"auth": {"username": "AWS", "password": LOGIN_PASSWORD}, "registry": f"https://{REGISTRY}"}}
                payload, encoding = gzip.compress(json.dumps(login).encode()), "gzip"
            else:
                payload = json.dumps({"ok": True, "path": self.path, "received": len(body)}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            if encoding:
                self.send_header("content-encoding", encoding)
            if "chunked" in self.path:  # no length up front, as many API servers answer
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                if self.command != "HEAD":
                    for piece in (payload[: len(payload) // 2], payload[len(payload) // 2 :]):
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    # "trailers" in the path: the end carries a trailer field, as gRPC-style servers send
                    self.wfile.write(b"0\r\nX-Checksum: 1\r\n\r\n" if "trailers" in self.path else b"0\r\n\r\n")
                return
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler


class _NoDelayServer(ThreadingHTTPServer):
    """http.server writes headers and body separately: without TCP_NODELAY every
    response waits out the client's delayed ACK (~40 ms), which is not what we test."""

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


@contextmanager
def https_upstream(ip: str, port: int, cert: IssuedCert) -> Iterator[Upstream]:
    upstream = Upstream(ip, port)
    server = _NoDelayServer((ip, port), _handler(upstream))
    server.daemon_threads = True
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert.cert_path, cert.key_path)
    server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class RunningProxy:
    host: str
    port: int
    store: str
    confdir: Path
    ca_pem: Path
    addon: object = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def running_proxy(config: ProxyConfig) -> Iterator[RunningProxy]:
    ready = threading.Event()
    where: dict[str, object] = {}
    result: dict[str, object] = {}

    def on_ready(host: str, port: int) -> None:
        where["addr"] = (host, port)
        ready.set()

    def run() -> None:
        try:
            result["addon"] = asyncio.run(
                serve(config, on_ready=on_ready, on_master=lambda m: where.__setitem__("master", m), install_signals=False)
            )
        except BaseException as exc:  # surfaced to the test below
            result["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "proxy did not start"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    host, port = where["addr"]  # type: ignore[misc]
    proxy = RunningProxy(str(host), int(port), config.store, config.confdir.expanduser(), config.confdir.expanduser() / "mitmproxy-ca-cert.pem")
    try:
        yield proxy
    finally:
        where["master"].shutdown()  # type: ignore[attr-defined]
        thread.join(30)
        proxy.addon = result.get("addon")
        if "error" in result:
            raise result["error"]  # type: ignore[misc]


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA(tmp_path_factory.mktemp("upstream-ca"), "Boundary Auditor proxy-test upstream CA")


@pytest.fixture(scope="session")
def upstream(test_ca: ThrowawayCA) -> Iterator[Upstream]:
    cert = test_ca.issue(NAMES, [UPSTREAM_IP])
    with https_upstream(UPSTREAM_IP, 443, cert) as up:
        yield up


@pytest.fixture(scope="session")
def wrong_cert_upstream(test_ca: ThrowawayCA) -> Iterator[Upstream]:
    cert = test_ca.issue(["unrelated.example.org"], [])
    with https_upstream(WRONG_CERT_IP, 443, cert) as up:
        yield up


@pytest.fixture(scope="session")
def proxy_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-ca")


def proxy_config(tmp: Path, confdir: Path, test_ca: ThrowawayCA, **overrides: object) -> ProxyConfig:
    fields: dict[str, object] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "store": str(tmp / "evidence.db"),
        "upstream_ca": test_ca.cert_path,
        "confdir": confdir,
        "connect_to": [f"{n}:443:{UPSTREAM_IP}:443" for n in NAMES] + [f"wrong.gretel.cloud:443:{WRONG_CERT_IP}:443"],
        "sensor_id": "proxy-test",
    }
    fields.update(overrides)
    return ProxyConfig(**fields)  # type: ignore[arg-type]


@contextmanager
def plain_upstream(ip: str, port: int) -> Iterator[Upstream]:
    upstream = Upstream(ip, port)
    server = _NoDelayServer((ip, port), _handler(upstream))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def tcp_echo(ip: str, port: int) -> Iterator[list[bytes]]:
    """A non-HTTP service that speaks only after the client: echoes each read upper-cased."""
    received: list[bytes] = []
    listener = socket.create_server((ip, port))
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                received.append(data)
                conn.sendall(data.upper())

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        thread.join(2)
        listener.close()


@contextmanager
def ws_upstream(ip: str, port: int, cert: IssuedCert) -> Iterator[list[str | bytes]]:
    """A TLS WebSocket server that records every message and answers each."""
    from websockets.sync.server import serve as ws_serve

    received: list[str | bytes] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert.cert_path, cert.key_path)

    def handler(ws) -> None:  # type: ignore[no-untyped-def]
        for message in ws:
            received.append(message)
            ws.send("ack")

    server = ws_serve(handler, ip, port, ssl=tls, max_size=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        thread.join(5)


def events_of(store_url: str) -> list[EgressEvent]:
    from auditor.store.base import open_store

    st = open_store(store_url, create=False)
    try:
        return list(st.events())
    finally:
        st.close()


def wait_for_events(store_url: str, pred: Callable[[EgressEvent], bool], count: int = 1, timeout: float = 10.0) -> list[EgressEvent]:
    """The events `pred` picks, once there are `count` of them or `timeout` has passed: the
    proxy's writer flushes every 0.2 s, so a test polls for what it made."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in events_of(store_url) if pred(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


OVERLAY = """\
overlay:
  id: proxy-tests
  description: loopback test site; the test client is a pod
cluster:
  pod_cidrs: [127.0.0.1/32]
"""


@pytest.fixture(scope="session")
def overlay_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("overlay") / "site.yaml"
    path.write_text(OVERLAY)
    return path
