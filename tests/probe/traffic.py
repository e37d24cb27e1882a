"""Real packets for the probe's tests, built with scapy: TCP sessions with correct
sequence numbers, DNS exchanges, TLS ClientHellos and QUIC Initials."""

from __future__ import annotations

import itertools
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.tls.extensions import (
    ProtocolName,
    ServerName,
    TLS_Ext_ALPN,
    TLS_Ext_ServerName,
    TLS_Ext_SupportedVersion_CH,
    TLS_Ext_Unknown,
)
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS
from scapy.packet import Packet, raw
from scapy.utils import PcapNgWriter, PcapWriter

from auditor.probe.quic import crypto_frame, protect_initial

T0 = 1_700_000_000.0
_ports = itertools.count(40000)


def ip_layer(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def hello_body(sni: str | None, alpn: tuple[str, ...] = ("h2", "http/1.1"), *, ech: bool = False, grease: bool = False) -> TLSClientHello:
    ext: list[Packet] = []
    if grease:
        ext.append(TLS_Ext_Unknown(type=0x1A1A, val=b""))
    if sni is not None:
        ext.append(TLS_Ext_ServerName(servernames=[ServerName(servername=sni.encode())]))
    if alpn:
        ext.append(TLS_Ext_ALPN(protocols=[ProtocolName(protocol=p.encode()) for p in alpn]))
    ext.append(TLS_Ext_SupportedVersion_CH(versions=[0x0304, 0x0303]))
    if ech:
        ext.append(TLS_Ext_Unknown(type=0xFE0D, val=b"\x00" * 32))
    return TLSClientHello(ext=ext)


def client_hello(sni: str | None, **kw: object) -> bytes:
    """A TLS record carrying a ClientHello, as scapy's TLS layer writes it."""
    return raw(TLS(msg=[hello_body(sni, **kw)]))  # type: ignore[arg-type]


def quic_initial(sni: str, dcid: bytes = bytes.fromhex("0011223344556677"), *, split: bool = False) -> list[bytes]:
    """Client Initial datagram(s) whose CRYPTO frames carry a ClientHello for `sni`."""
    hs = raw(hello_body(sni, ("h3",)))
    if not split:
        return [protect_initial(dcid, b"\x01\x02", crypto_frame(hs))]
    half = len(hs) // 2
    return [
        protect_initial(dcid, b"\x01\x02", crypto_frame(hs[:half]), packet_number=0),
        protect_initial(dcid, b"\x01\x02", crypto_frame(hs[half:], offset=half), packet_number=1),
    ]


class Trace:
    """Packets with timestamps, in order, ready to write as pcap or pcapng."""

    def __init__(self, l2: bool = True, t0: float = T0, linktype: int | None = None) -> None:
        self.linktype = linktype
        self.packets: list[Packet] = []
        self.t = t0
        self.l2 = l2

    def add(self, pkt: Packet, dt: float = 0.001) -> Packet:
        self.t += dt
        if self.l2 and not isinstance(pkt, Ether):
            pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt
        pkt.time = self.t
        self.packets.append(pkt)
        return pkt

    def dns(
        self,
        client: str,
        resolver: str,
        qname: str,
        answers: list[tuple[str, str, str]] | None = None,  # (name, type, rdata)
        *,
        qtype: str = "A",
        rcode: int = 0,
        ttl: int = 300,
        tcp: bool = False,
        answered: bool = True,
    ) -> None:
        sport = next(_ports)
        ident = sport & 0xFFFF
        query = DNS(id=ident, rd=1, qd=DNSQR(qname=qname, qtype=qtype))
        rrs = [DNSRR(rrname=n, type=t, rdata=r, ttl=ttl) for n, t, r in (answers or [])]
        resp = DNS(id=ident, qr=1, aa=0, rd=1, ra=1, rcode=rcode, qd=DNSQR(qname=qname, qtype=qtype), an=rrs)
        if tcp:
            q = raw(query)
            r = raw(resp)
            self.tcp(client, resolver, 53, [len(q).to_bytes(2, "big") + q], [len(r).to_bytes(2, "big") + r], sport=sport)
            return
        self.add(ip_layer(client, resolver) / UDP(sport=sport, dport=53) / query)
        if answered:
            self.add(ip_layer(resolver, client) / UDP(sport=53, dport=sport) / resp)

    def tcp(
        self,
        client: str,
        server: str,
        dport: int,
        up: list[bytes] = (),  # type: ignore[assignment]
        down: list[bytes] = (),  # type: ignore[assignment]
        *,
        sport: int | None = None,
        handshake: bool = True,
        answer: str = "synack",  # or "rst" (refused) or "none" (attempted)
        close: bool = True,
        reorder: bool = False,
    ) -> int:
        sport = sport or next(_ports)
        ip_c, ip_s = ip_layer(client, server), ip_layer(server, client)
        cseq, sseq = 1000, 5000
        if handshake:
            self.add(ip_c / TCP(sport=sport, dport=dport, flags="S", seq=cseq))
            if answer == "rst":
                self.add(ip_s / TCP(sport=dport, dport=sport, flags="RA", seq=0, ack=cseq + 1))
                return sport
            if answer == "none":
                return sport
            self.add(ip_s / TCP(sport=dport, dport=sport, flags="SA", seq=sseq, ack=cseq + 1))
            self.add(ip_c / TCP(sport=sport, dport=dport, flags="A", seq=cseq + 1, ack=sseq + 1))
        cseq += 1
        sseq += 1
        segs = []
        for chunk in up:
            segs.append(ip_c / TCP(sport=sport, dport=dport, flags="PA", seq=cseq, ack=sseq) / chunk)
            cseq += len(chunk)
        if reorder and len(segs) > 1:
            segs = segs[1:] + segs[:1]
        for seg in segs:
            self.add(seg)
        for chunk in down:
            self.add(ip_s / TCP(sport=dport, dport=sport, flags="PA", seq=sseq, ack=cseq) / chunk)
            sseq += len(chunk)
        if close:
            self.add(ip_c / TCP(sport=sport, dport=dport, flags="FA", seq=cseq, ack=sseq))
            self.add(ip_s / TCP(sport=dport, dport=sport, flags="FA", seq=sseq, ack=cseq + 1))
            self.add(ip_c / TCP(sport=sport, dport=dport, flags="A", seq=cseq + 1, ack=sseq + 1))
        return sport

    def udp(self, client: str, server: str, dport: int, up: list[bytes], down: list[bytes] = ()) -> int:  # type: ignore[assignment]
        sport = next(_ports)
        for chunk in up:
            self.add(ip_layer(client, server) / UDP(sport=sport, dport=dport) / chunk)
        for chunk in down:
            self.add(ip_layer(server, client) / UDP(sport=dport, dport=sport) / chunk)
        return sport

    def ping(self, client: str, server: str, size: int, count: int = 1) -> None:
        for seq in range(count):
            self.add(IP(src=client, dst=server) / ICMP(type=8, id=77, seq=seq) / (b"x" * size))
            self.add(IP(src=server, dst=client) / ICMP(type=0, id=77, seq=seq) / (b"x" * size))

    def write(self, path: Path, *, ng: bool = False, linktype: int | None = None) -> Path:
        linktype = linktype or self.linktype
        writer = PcapNgWriter(str(path)) if ng else PcapWriter(str(path), linktype=linktype, sync=True)
        if linktype is not None and not ng:
            writer.write_header(None)
        for pkt in self.packets:
            if linktype is not None and not ng:
                t = float(pkt.time)
                writer.write_packet(raw(pkt), sec=int(t), usec=round((t - int(t)) * 1e6))
            else:
                writer.write(pkt)
        writer.close()
        return path


def run_trace(trace: Trace, tmp: Path, name: str = "t.pcap", **config: object) -> list:
    """Write the trace, run the probe on it (no store), and check every event the
    engine built is valid under the schema."""
    from auditor.model import EgressEvent
    from auditor.probe.engine import ProbeConfig
    from auditor.probe.runner import events_from_pcap

    path = trace.write(tmp / name)
    out = list(events_from_pcap(path, config=ProbeConfig(**config)))  # type: ignore[arg-type]
    for ev in out:
        EgressEvent.model_validate_json(ev.model_dump_json())
    return out


def of_kind(events: list, kind: str) -> list:
    return [e for e in events if e.kind == kind]
