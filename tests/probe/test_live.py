"""Live capture on loopback (CI runs as root) while the test makes real connections:
a DNS lookup answered by a resolver thread, a TLS handshake to the address it
returned, and a UDP datagram to an address nothing resolved."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.packet import raw

from auditor.model import Destination, EgressEvent
from auditor.probe.engine import ProbeConfig
from auditor.probe.runner import run_live
from auditor.store.base import open_store

CLIENT, RESOLVER, SERVER, STRAY = "127.0.0.1", "127.0.0.77", "127.0.0.78", "127.0.0.79"
NAME = "live.gretel.test"


def _resolver(sock: socket.socket, done: threading.Event) -> None:
    sock.settimeout(0.2)
    while not done.is_set():
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            continue
        q = DNS(data)
        sock.sendto(raw(DNS(id=q.id, qr=1, rd=1, ra=1, qd=q.qd, an=[DNSRR(rrname=NAME, rdata=SERVER, ttl=30)])), addr)


def _server(sock: socket.socket, done: threading.Event) -> None:
    sock.settimeout(0.2)
    while not done.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(4096)  # the ClientHello; then hang up, the handshake need not finish
            except OSError:
                pass


def test_live_capture_on_loopback_records_dns_tls_and_flows(tmp_path: Path) -> None:
    done = threading.Event()
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind((RESOLVER, 53))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((SERVER, 0))
    srv.listen()
    port = srv.getsockname()[1]
    helpers = [threading.Thread(target=_resolver, args=(dns_sock, done)), threading.Thread(target=_server, args=(srv, done))]
    for h in helpers:
        h.start()
    store = str(tmp_path / "live.db")
    stop, ready = threading.Event(), threading.Event()
    result: dict = {}
    config = ProbeConfig(sensor_id="probe-live", cluster_cidrs=[f"{CLIENT}/32", f"{RESOLVER}/32"], proxies=[f"{CLIENT}:3128"], linger_s=0)
    bpf = f"host {RESOLVER} or host {SERVER} or host {STRAY}"
    probe = threading.Thread(target=lambda: result.update(s=run_live("lo", store, bpf=bpf, config=config, stop=stop, ready=ready)))
    probe.start()
    try:
        assert ready.wait(10)
        proxy_store = open_store(store)  # the proxy writes its upstream connection to the same store
        proxy_store.append([EgressEvent(sensor_id="proxy-test", kind="tls", destination=Destination(host=NAME, sni=NAME, ip=SERVER, port=port, tls=True))])
        proxy_store.close()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(raw(DNS(id=4242, rd=1, qd=DNSQR(qname=NAME))), (RESOLVER, 53))
        answer = DNS(client.recv(2048))
        assert answer.an[0].rdata == SERVER
        ctx = ssl.create_default_context()
        with socket.create_connection((SERVER, port), timeout=5) as tcp:
            try:
                ctx.wrap_socket(tcp, server_hostname=NAME)
            except (ssl.SSLError, OSError):
                pass  # the server hangs up after the hello
        client.sendto(b"nobody resolved this", (STRAY, 9999))
        client.close()
    finally:
        stop.set()
        probe.join(30)
        done.set()
        for h in helpers:
            h.join(5)
        dns_sock.close()
        srv.close()
    summary = result["s"]
    assert summary.stats.packets >= 6 and summary.capture.dropped == 0
    st = open_store(store, create=False)
    events = list(st.events())
    assert st.verify().ok
    st.close()
    lifecycle = [e.sensor.lifecycle for e in events if e.kind == "sensor"]
    assert lifecycle[:2] == ["start", "config"] and lifecycle[-1] == "stop"
    (dns,) = [e for e in events if e.kind == "dns"]
    assert dns.dns.qname == NAME and dns.dns.answers == [SERVER] and dns.dns.rcode == "NOERROR"
    (tls,) = [e for e in events if e.kind == "tls" and e.sensor_id == "probe-live"]
    assert tls.destination.sni == NAME and tls.destination.port == port
    (flow,) = [e for e in events if e.kind == "flow" and e.destination.ip == SERVER]
    assert flow.flow.direction == "egress" and flow.flow.resolved_name == NAME and "direct-ip" not in flow.observations
    assert "bypass" not in flow.observations  # the proxy recorded this connection
    assert flow.flow.tcp_state in ("established", "closed", "reset") and flow.flow.bytes_up > 0
    (stray,) = [e for e in events if e.kind == "flow" and e.destination.ip == STRAY]
    assert stray.destination.transport == "udp" and {"direct-ip", "bypass"} <= set(stray.observations)
    assert summary.bypass == 1
