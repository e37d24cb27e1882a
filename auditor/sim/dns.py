"""A small authoritative DNS server for the simulated names, over UDP and TCP, logging every query.

A records for the simulated hosts, NOERROR with no answer for other types of a known
name, NXDOMAIN for everything else. Malformed queries are counted, never fatal.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import zlib
from datetime import datetime
from typing import Literal

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord
from pydantic import BaseModel, Field

from auditor.model import utcnow

_POLL = 0.05
_TCP_TIMEOUT = 5.0
_MAX_RECORDS = 100_000


class DnsQueryRecord(BaseModel):
    time: datetime = Field(default_factory=utcnow)
    client_ip: str
    client_port: int
    transport: Literal["udp", "tcp"]
    qname: str
    qtype: str
    rcode: str
    answers: list[str] = Field(default_factory=list)


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def resolve_query(wire: bytes, records: dict[str, str], ttl: int) -> tuple[bytes, list[tuple[str, str, str, list[str]]]]:
    """The reply to one query message and what it asked and answered. Raises DNSError if malformed."""
    query = DNSRecord.parse(wire)
    reply = query.reply(ra=1, aa=1)
    seen: list[tuple[str, str, str, list[str]]] = []
    rcode = RCODE.NOERROR
    for question in query.questions:
        qname = _norm(str(question.qname))
        qtype = QTYPE.get(question.qtype, str(question.qtype))
        answers: list[str] = []
        if qname not in records:
            rcode = RCODE.NXDOMAIN
        elif question.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(records[qname]), ttl=ttl))
            answers.append(records[qname])
        seen.append((qname, str(qtype), "NXDOMAIN" if qname not in records else "NOERROR", answers))
    reply.header.rcode = rcode
    return reply.pack(), seen


class SimDnsServer:
    """UDP and TCP on the same ephemeral port of one loopback address."""

    def __init__(self, ip: str, records: dict[str, str], *, port: int = 0, ttl: int = 60) -> None:
        self.records = {_norm(k): v for k, v in records.items()}
        self.ttl = ttl
        self.queries: list[DnsQueryRecord] = []
        self.malformed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._udp, self._tcp = self._bind(ip, port)
        self.address: tuple[str, int] = self._udp.getsockname()[:2]
        self._thread = threading.Thread(target=self._loop, name="sim-dns", daemon=True)

    @staticmethod
    def _bind(ip: str, port: int) -> tuple[socket.socket, socket.socket]:
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((ip, port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((ip, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                if port:
                    raise
                continue
            tcp.listen(16)
            return udp, tcp
        raise OSError(f"no free port on {ip} for both UDP and TCP DNS")

    def start(self) -> SimDnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._udp.close()
        self._tcp.close()

    def snapshot(self) -> list[DnsQueryRecord]:
        with self._lock:
            return list(self.queries)

    def _answer(self, wire: bytes, client: tuple[str, int], transport: Literal["udp", "tcp"]) -> bytes | None:
        try:
            reply, seen = resolve_query(wire, self.records, self.ttl)
        except (DNSError, ValueError, struct.error, IndexError):
            with self._lock:
                self.malformed += 1
            return None
        with self._lock:
            for qname, qtype, rcode, answers in seen:
                if len(self.queries) < _MAX_RECORDS:
                    self.queries.append(DnsQueryRecord(
                        client_ip=client[0], client_port=client[1], transport=transport,
                        qname=qname, qtype=qtype, rcode=rcode, answers=answers,
                    ))
        return reply

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ)
        sel.register(self._tcp, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(_POLL):
                if key.fileobj is self._udp:
                    try:
                        wire, client = self._udp.recvfrom(4096)
                    except OSError:
                        continue
                    reply = self._answer(wire, client, "udp")
                    if reply is not None:
                        self._udp.sendto(reply, client)
                else:
                    try:
                        conn, client = self._tcp.accept()
                    except OSError:
                        continue
                    threading.Thread(target=self._serve_tcp, args=(conn, client), daemon=True).start()
        sel.close()

    def _serve_tcp(self, conn: socket.socket, client: tuple[str, int]) -> None:
        conn.settimeout(_TCP_TIMEOUT)
        try:
            while not self._stop.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                wire = _recv_exact(conn, struct.unpack("!H", head)[0])
                if wire is None:
                    return
                reply = self._answer(wire, client, "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            conn.close()


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def query_a(server: tuple[str, int], name: str, *, source_ip: str | None = None, qid: int = 0,
            transport: Literal["udp", "tcp"] = "udp", timeout: float = 2.0) -> tuple[str, list[str]]:
    """Ask `server` for the A record of `name` from `source_ip`; returns (rcode, addresses)."""
    question = DNSRecord.question(name, "A")
    question.header.id = qid or (zlib.crc32(name.encode()) & 0xFFFF) or 1
    wire = question.pack()
    family_source = (source_ip, 0) if source_ip else None
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            if family_source:
                sock.bind(family_source)
            sock.sendto(wire, server)
            data, _ = sock.recvfrom(4096)
    else:
        with socket.create_connection(server, timeout=timeout, source_address=family_source) as sock:
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            head = _recv_exact(sock, 2)
            body = _recv_exact(sock, struct.unpack("!H", head)[0]) if head else None
            if body is None:
                raise OSError(f"DNS server {server} closed the TCP connection")
            data = body
    reply = DNSRecord.parse(data)
    addresses = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
    return RCODE.get(reply.header.rcode, str(reply.header.rcode)), addresses
