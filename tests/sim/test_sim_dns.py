"""The simulated DNS answers every simulated name, NXDOMAIN for the rest, over UDP and TCP."""

from __future__ import annotations

import socket

from dnslib import QTYPE, RCODE, DNSRecord

from auditor.sim import Simulation, names
from auditor.sim.dns import query_a


def test_every_simulated_name_resolves_to_its_listener(sim: Simulation) -> None:
    for host, (ip, _) in sim.hosts.items():
        for transport in ("udp", "tcp"):
            assert query_a(sim.dns_address, host, transport=transport) == ("NOERROR", [ip]), (host, transport)
    assert sim.hosts[names.API][0] != sim.hosts[names.FOREIGN][0]  # distinct addresses per host
    assert all(ip.startswith("127.") for ip, _ in sim.hosts.values())


def test_unknown_names_are_nxdomain_and_case_and_dot_are_normalised(sim: Simulation) -> None:
    assert query_a(sim.dns_address, "evil.example.org") == ("NXDOMAIN", [])
    assert query_a(sim.dns_address, "x.api.gretel.cloud", transport="tcp") == ("NXDOMAIN", [])
    assert query_a(sim.dns_address, "API.Gretel.Cloud.") == ("NOERROR", [sim.hosts[names.API][0]])


def test_other_types_get_an_empty_answer(sim: Simulation) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(DNSRecord.question(names.API, "AAAA").pack(), sim.dns_address)
        reply = DNSRecord.parse(sock.recvfrom(4096)[0])
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == [] and reply.header.aa == 1
    assert sim.dns_queries[-1].qtype == "AAAA"


def test_queries_are_logged_with_client_and_transport(sim: Simulation) -> None:
    before = len(sim.dns_queries)
    query_a(sim.dns_address, names.REGISTRY, source_ip=names.NODE_IP, transport="tcp")
    query_a(sim.dns_address, "nope.invalid", source_ip=names.POD_IP)
    last = sim.dns_queries[before:]
    assert [(q.client_ip, q.transport, q.qname, q.qtype, q.rcode) for q in last] == [
        (names.NODE_IP, "tcp", names.REGISTRY, "A", "NOERROR"),
        (names.POD_IP, "udp", "nope.invalid", "A", "NXDOMAIN"),
    ]
    assert last[0].answers == [sim.hosts[names.REGISTRY][0]]


def test_malformed_packets_are_counted_and_the_server_keeps_answering(sim: Simulation) -> None:
    before = sim.dns_malformed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x12\x34\x01", sim.dns_address)
        sock.sendto(b"\x00" * 12 + b"\xff" * 40, sim.dns_address)
    with socket.create_connection(sim.dns_address, timeout=5) as tcp:
        tcp.sendall(b"\x00\x05hello")
        assert tcp.recv(10) == b""  # the server hangs up on garbage
    assert query_a(sim.dns_address, names.API) == ("NOERROR", [sim.hosts[names.API][0]])
    assert sim.dns_malformed >= before + 2


def test_many_queries_over_one_tcp_connection(sim: Simulation) -> None:
    with socket.create_connection(sim.dns_address, timeout=5) as tcp:
        for host in (names.API, names.ARTIFACTS):
            wire = DNSRecord.question(host, "A").pack()
            tcp.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(tcp.recv(2), "big")
            data = b""
            while len(data) < size:
                data += tcp.recv(size - len(data))
            reply = DNSRecord.parse(data)
            assert [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A] == [sim.hosts[host][0]]
