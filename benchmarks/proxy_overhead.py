"""Proxy overhead: bare `mitmdump` against `auditor proxy` (audit mode, classification on).

Same workload through both, interleaved in one run: keep-alive HTTPS, Gretel-shaped JSON
PATCH bodies of 1 KB and 256 KB, with curl (one process, one connection, many requests)
and Python `requests` (what gretel-client uses). Prints requests/s of each, the ratio,
the direct-to-server reference, and the peak memory (VmHWM) of each proxy process,
including after one 64 MiB upload (memory must stay bounded whatever the body size).

Run: python benchmarks/proxy_overhead.py [--rounds 4] [--small 600] [--large 150]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

HOST = "api.gretel.cloud"
UPSTREAM_IP = "127.0.9.1"
UPSTREAM_PORT = 443
PATH = "/projects/models?uid=6613d6a1f0c8b2b1a9e4d0c7&type=train"
BIN = Path(sys.executable).parent


def gretel_body(size: int) -> bytes:
    """A model status update (PATCH /projects/models) padded with status history to `size` bytes."""
    history: list[dict[str, str]] = []
    doc = {
        "uid": "6613d6a1f0c8b2b1a9e4d0c7", "status": "active", "last_active_hb": "2025-02-11T10:00:00Z",
        "container_image_version": "2025.02.11", "status_history": history,
    }
    i = 0
    while len(json.dumps(doc)) < size:
        history.append({"status": ("created", "pending", "active")[i % 3], "ts": f"2025-02-11T10:{i // 60 % 60:02d}:{i % 60:02d}Z"})
        i += 1
    return json.dumps(doc).encode()


# --- the upstream: a keep-alive HTTPS server in its own process ------------------------


def serve_upstream(cert: str, key: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_PATCH(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            remaining = length
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
            payload = b'{"data": {"status": "ok"}}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_PUT = do_PATCH

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self):  # type: ignore[no-untyped-def]
            sock, addr = super().get_request()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock, addr

    server = Server((UPSTREAM_IP, UPSTREAM_PORT), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


# --- helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited: {proc.args}\n{proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {host}:{port}")


def _tree(pid: int) -> list[int]:
    """The process and its descendants (the auditor's classifier processes count toward its memory)."""
    pids = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:  # gone meanwhile
        return pids
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for child in children:
            pids += _tree(int(child))
    return pids


def peak_rss_mib(pid: int) -> float:
    """VmHWM summed over the process tree: an upper bound of the tree's peak resident memory."""
    total = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except FileNotFoundError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return total / 1024


# Stock mitmproxy cannot map a name to a loopback address, so every run (direct, mitmdump,
# auditor) names the upstream by its address and sends `Host: api.gretel.cloud`: the same
# bytes through each, and the auditor classifies by the Host header as it would in a cluster.
URL = f"https://{UPSTREAM_IP}{PATH}"
HEADERS = {"content-type": "application/json", "host": HOST}


def curl_run(proxy: str | None, ca: Path, body_file: Path, n: int, tmp: Path) -> float:
    """One curl process, one keep-alive connection, n PATCH requests; requests/s."""
    config = tmp / "curl.cfg"
    config.write_text("".join(f'url = "{URL}&n={i}"\noutput = "/dev/null"\n' for i in range(n)))
    cmd = ["curl", "-sS", "--fail", "-X", "PATCH", "--data-binary", f"@{body_file}", "--cacert", str(ca), "--config", str(config)]
    for name, value in HEADERS.items():
        cmd += ["-H", f"{name}: {value}"]
    if proxy:
        cmd += ["--proxy", proxy]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, timeout=600, env={"PATH": "/usr/bin:/bin"})
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"curl failed: {out.stderr.decode()}")
    return n / elapsed


def requests_run(proxy: str | None, ca: Path, body: bytes, n: int) -> float:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    if proxy:
        session.proxies = {"https": proxy}
    session.patch(URL, data=body, headers=HEADERS).raise_for_status()  # connect outside the timing
    start = time.perf_counter()
    for _ in range(n):
        session.patch(URL, data=body, headers=HEADERS).raise_for_status()
    elapsed = time.perf_counter() - start
    session.close()
    return n / elapsed


def big_upload(proxy: str, ca: Path, big_file: Path) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-X", "PUT", "--data-binary", f"@{big_file}", "-o", "/dev/null", "--cacert", str(ca), "--proxy", proxy,
         "-H", f"host: {HOST}", f"https://{UPSTREAM_IP}/big-upload"],
        capture_output=True, timeout=600, env={"PATH": "/usr/bin:/bin"},
    )
    if out.returncode != 0:
        raise SystemExit(f"large upload failed: {out.stderr.decode()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--small", type=int, default=600, help="requests per 1 KB cell")
    parser.add_argument("--large", type=int, default=150, help="requests per 256 KB cell")
    parser.add_argument("--big-mib", type=int, default=64, help="size of the one large upload for peak memory")
    parser.add_argument("--serve-upstream", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(*args.serve_upstream)
        return

    from auditor.proxy.ca import ensure_ca
    from auditor.sim.ca import ThrowawayCA

    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    upstream_ca = ThrowawayCA(tmp / "upstream-ca", "proxy benchmark upstream CA")
    cert = upstream_ca.issue([HOST], [UPSTREAM_IP])
    proxy_ca = ensure_ca(tmp / "proxy-ca")
    bodies = {"1 KB": gretel_body(1024), "256 KB": gretel_body(256 * 1024)}
    counts = {"1 KB": args.small, "256 KB": args.large}
    files = {}
    for name, body in bodies.items():
        files[name] = tmp / f"body-{name.replace(' ', '')}.json"
        files[name].write_bytes(body)
    big_file = tmp / "big.bin"
    with big_file.open("wb") as fh:
        chunk = os.urandom(1 << 20)
        for _ in range(args.big_mib):
            fh.write(chunk)

    procs: list[subprocess.Popen[bytes]] = []
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(cert.cert_path), str(cert.key_path)], stderr=subprocess.PIPE)
    procs.append(upstream)
    try:
        wait_port(UPSTREAM_IP, UPSTREAM_PORT, upstream)
        bare_port, auditor_port = free_port(), free_port()
        bare = subprocess.Popen(
            [str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(bare_port),
             "--set", f"confdir={proxy_ca.confdir}", "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca.cert_path}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        procs.append(bare)
        auditor = subprocess.Popen(
            [sys.executable, "-m", "auditor.cli", "proxy", "--listen", f"127.0.0.1:{auditor_port}", "--store", str(tmp / "evidence.db"),
             "--confdir", str(proxy_ca.confdir), "--upstream-ca", str(upstream_ca.cert_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        procs.append(auditor)
        wait_port("127.0.0.1", bare_port, bare)
        wait_port("127.0.0.1", auditor_port, auditor)
        targets = {
            "direct": None,
            "mitmdump": f"http://127.0.0.1:{bare_port}",
            "auditor": f"http://127.0.0.1:{auditor_port}",
        }
        results: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.rounds):
            for client in ("curl", "requests"):
                for size, body in bodies.items():
                    for name, proxy in targets.items():
                        ca = upstream_ca.cert_path if proxy is None else proxy_ca.cert
                        if client == "curl":
                            rate = curl_run(proxy, ca, files[size], counts[size], tmp)
                        else:
                            rate = requests_run(proxy, ca, body, counts[size])
                        results.setdefault((client, size, name), []).append(rate)
        mem_before = {"mitmdump": peak_rss_mib(bare.pid), "auditor": peak_rss_mib(auditor.pid)}
        big_upload(f"http://127.0.0.1:{bare_port}", proxy_ca.cert, big_file)
        big_upload(f"http://127.0.0.1:{auditor_port}", proxy_ca.cert, big_file)
        mem_after = {"mitmdump": peak_rss_mib(bare.pid), "auditor": peak_rss_mib(auditor.pid)}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is not upstream else signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print(f"proxy overhead: keep-alive HTTPS PATCH {PATH.split('?')[0]}, best of {args.rounds} interleaved rounds, requests/s")
    print(f"{'client':9} {'body':7} {'direct':>9} {'mitmdump':>9} {'auditor':>9} {'auditor/mitmdump':>17}")
    for client in ("curl", "requests"):
        for size in bodies:
            d, m, a = (max(results[(client, size, n)]) for n in ("direct", "mitmdump", "auditor"))
            print(f"{client:9} {size:7} {d:9.1f} {m:9.1f} {a:9.1f} {a / m:17.2f}")
    print("peak memory (VmHWM summed over each proxy's processes, MiB)")
    print(f"{'':28} {'mitmdump':>9} {'auditor':>9}")
    print(f"{'after the rounds':28} {mem_before['mitmdump']:9.1f} {mem_before['auditor']:9.1f}")
    print(f"{f'after one {args.big_mib} MiB upload':28} {mem_after['mitmdump']:9.1f} {mem_after['auditor']:9.1f}")


if __name__ == "__main__":
    main()
