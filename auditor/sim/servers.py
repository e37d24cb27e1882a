"""Threaded HTTPS listeners for the simulated hosts, each recording every request it gets.

One listener per host, each on its own 127.x address, so captures show distinct
destinations. A request whose Host names another simulated host is answered as that
host (what a CDN does for a fronted request), and the record keeps both names.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from auditor.model import utcnow
from auditor.sim.apps import SimRequest, SimResponse

_IO_TIMEOUT = 10.0
_MAX_BODY = 64 * 1024 * 1024
_MAX_RECORDS = 100_000


class ReceivedRequest(BaseModel):
    """One HTTP request as the simulated upstream saw it (tests: "the upstream never received")."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    time: datetime = Field(default_factory=utcnow)
    server: str  # the simulated host whose listener accepted the connection
    answered_as: str  # the app that answered: the Host header's host when it names a simulated host
    listen_ip: str
    listen_port: int
    client_ip: str
    client_port: int
    sni: str | None
    method: str
    path: str
    query: str
    http_host: str | None
    headers: list[tuple[str, str]]
    body: bytes
    status: int


class HandshakeFailure(BaseModel):
    """A client that connected but did not complete TLS (rejected our CA, spoke plaintext, hung up)."""

    time: datetime = Field(default_factory=utcnow)
    server: str
    client_ip: str
    client_port: int
    sni: str | None
    error: str


class Recorder:
    """Thread-safe, bounded log of what every simulated server received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self.requests: list[ReceivedRequest] = []
        self.failures: list[HandshakeFailure] = []
        self.dropped = 0

    def add(self, **fields: object) -> None:
        with self._lock:
            self._seq += 1
            if len(self.requests) >= _MAX_RECORDS:
                self.dropped += 1
                return
            self.requests.append(ReceivedRequest(seq=self._seq, **fields))  # type: ignore[arg-type]

    def fail(self, failure: HandshakeFailure) -> None:
        with self._lock:
            if len(self.failures) < _MAX_RECORDS:
                self.failures.append(failure)

    def snapshot(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.requests)


Dispatch = Callable[[str, SimRequest], SimResponse]


def _bare_host(value: str | None) -> str | None:
    if not value:
        return None
    host = value.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sim"
    sys_version = ""
    timeout = _IO_TIMEOUT
    server: SimHTTPSServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """The record is the log; stderr stays quiet."""

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > _MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        srv = self.server
        try:
            body = self._read_body()
        except ValueError:
            body = None
        target = self.path
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        path, _, query = target.partition("?")
        http_host = self.headers.get("Host")
        named = _bare_host(http_host)
        answered_as = named if named in srv.served_names else srv.name
        if body is None:
            response = SimResponse.json(413, {"message": "body too large or malformed"})
            self.close_connection = True
        else:
            request = SimRequest(
                method=self.command, path=path, query=query,
                headers={k.lower(): v for k, v in self.headers.items()}, body=body, host=answered_as,
            )
            try:
                response = srv.dispatch(answered_as, request)
            except Exception as exc:  # the simulation answers 500 rather than dropping the connection
                response = SimResponse.json(500, {"message": f"simulation error: {type(exc).__name__}"})
        client_ip, client_port = self.client_address[:2]
        srv.recorder.add(
            server=srv.name, answered_as=answered_as, listen_ip=srv.server_address[0],
            listen_port=srv.server_address[1], client_ip=client_ip, client_port=client_port,
            sni=getattr(self.request, "sim_sni", None), method=self.command, path=path, query=query,
            http_host=http_host, headers=list(self.headers.items()), body=body or b"", status=response.status,
        )
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve


def _record_sni(sock: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
    sock.sim_sni = server_name  # type: ignore[union-attr]


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sni_callback = _record_sni
    return ctx


class SimHTTPSServer(ThreadingHTTPServer):
    """Accepts on the main loop, does the TLS handshake in the per-connection thread."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self, name: str, address: tuple[str, int], ctx: ssl.SSLContext, dispatch: Dispatch,
        recorder: Recorder, served_names: frozenset[str],
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.dispatch = dispatch
        self.recorder = recorder
        self.served_names = served_names
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse lookup (getfqdn) that can stall; the name is known.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.name
        self.server_port = self.server_address[1]

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        request.settimeout(_IO_TIMEOUT)
        # Headers and body go out in separate writes; without this, Nagle plus delayed ACK
        # stall every keep-alive response by ~40 ms.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._open_lock:
            self._open.add(request)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                self.recorder.fail(HandshakeFailure(
                    server=self.name, client_ip=client_address[0], client_port=client_address[1],
                    sni=getattr(tls, "sim_sni", None), error=f"{type(exc).__name__}: {exc}"[:300],
                ))
                tls.close()
                return
            with self._open_lock:
                self._open.add(tls)
            try:
                _Handler(tls, client_address, self)
            except OSError:
                pass  # the client went away mid-exchange; what it sent is already recorded
            finally:
                with self._open_lock:
                    self._open.discard(tls)
                tls.close()
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        """Unblock keep-alive connections so stop() does not wait for idle clients."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
