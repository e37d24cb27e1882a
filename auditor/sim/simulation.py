"""Starts and stops the whole simulated Gretel Hybrid: CA, HTTPS hosts, DNS.

    sim = Simulation.start(tmp_dir)
    sim.hosts["api.gretel.cloud"]   # ("127.0.0.11", 40123)
    sim.connect_to()                # ["api.gretel.cloud:443:127.0.0.11:40123", ...] for `auditor proxy`
    sim.stop()
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import yaml

from auditor.errors import AuditorError
from auditor.sim import names
from auditor.sim.apps import APPS, SimRequest, SimResponse, SimState
from auditor.sim.ca import ThrowawayCA
from auditor.sim.dns import DnsQueryRecord, SimDnsServer
from auditor.sim.servers import HandshakeFailure, ReceivedRequest, Recorder, SimHTTPSServer, server_context

_POLL = 0.02


class Simulation:
    """A running simulation; every server listens on loopback only."""

    def __init__(self, ca: ThrowawayCA, state: SimState, recorder: Recorder, servers: dict[str, SimHTTPSServer],
                 dns: SimDnsServer, threads: list[threading.Thread]) -> None:
        self.ca = ca
        self.state = state
        self.recorder = recorder
        self._servers = servers
        self._dns = dns
        self._threads = threads
        self.hosts: dict[str, tuple[str, int]] = {n: s.server_address[:2] for n, s in servers.items()}  # type: ignore[misc]
        self.dns_address: tuple[str, int] = dns.address
        self.ca_cert_path: Path = ca.cert_path
        self.customer_bucket = names.CUSTOMER_BUCKET
        self.stopped = False
        self._holder: list[SimState] = [state]

    @classmethod
    def start(cls, ca_dir: Path | str, *, addresses: Mapping[str, str] | None = None, https_port: int = 0,
              dns_ip: str = names.DNS_ADDRESS, dns_port: int = 0) -> Simulation:
        """Create a fresh CA in `ca_dir`, start every host and the DNS server.

        `addresses` overrides the listen address per host (e.g. a veth address in a test
        namespace); `https_port=443` makes each host listen on 443 of its own address.
        """
        listen = dict(names.DEFAULT_ADDRESSES)
        for host, ip in (addresses or {}).items():
            if host not in listen:
                raise AuditorError(f"unknown simulated host {host!r}", fix=f"use one of {', '.join(sorted(listen))}")
            listen[host] = ip
        ca = ThrowawayCA(Path(ca_dir))
        state = SimState()
        recorder = Recorder()
        served = frozenset(listen)

        holder: list[SimState] = [state]  # reset_state() swaps what the servers answer from

        def dispatch(host: str, request: SimRequest) -> SimResponse:
            return APPS[host](holder[0], request)

        servers: dict[str, SimHTTPSServer] = {}
        threads: list[threading.Thread] = []
        dns: SimDnsServer | None = None
        try:
            for host, ip in listen.items():
                issued = ca.issue([host], [ip])
                try:
                    server = SimHTTPSServer(host, (ip, https_port), server_context(issued.cert_path, issued.key_path),
                                            dispatch, recorder, served)
                except OSError as exc:
                    raise AuditorError(f"cannot listen on {ip}:{https_port} for {host}: {exc.strerror}",
                                       fix="pick a free port or another loopback address") from exc
                servers[host] = server
                thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": _POLL},
                                          name=f"sim-{host}", daemon=True)
                thread.start()
                threads.append(thread)
            try:
                dns = SimDnsServer(dns_ip, listen, port=dns_port).start()
            except OSError as exc:
                raise AuditorError(f"cannot listen on {dns_ip}:{dns_port} for DNS: {exc.strerror}",
                                   fix="pick a free port or another loopback address") from exc
        except BaseException:
            for server in servers.values():
                server.shutdown()
                server.server_close()
            raise
        sim = cls(ca, state, recorder, servers, dns, threads)
        sim._holder = holder
        return sim

    def reset_state(self) -> SimState:
        """A fresh control plane (one pending invite, no jobs, ids from the start) so every
        scenario run sees the same world; what the servers received is kept."""
        self.state = SimState()
        self._holder[0] = self.state
        return self.state

    # --- what happened ---------------------------------------------------------------------------

    @property
    def received(self) -> list[ReceivedRequest]:
        """Every HTTP request any simulated host received, in arrival order."""
        return self.recorder.snapshot()

    def received_by(self, host: str) -> list[ReceivedRequest]:
        """Requests whose connection reached `host`'s listener (whatever their Host header said)."""
        return [r for r in self.recorder.snapshot() if r.server == host]

    @property
    def handshake_failures(self) -> list[HandshakeFailure]:
        return list(self.recorder.failures)

    @property
    def dns_queries(self) -> list[DnsQueryRecord]:
        return self._dns.snapshot()

    @property
    def dns_malformed(self) -> int:
        return self._dns.malformed

    # --- how to reach it -------------------------------------------------------------------------

    def connect_to(self, port: int = 443) -> list[str]:
        """`HOST:PORT:ADDR:PORT` values (curl's --connect-to) mapping each name to its listener."""
        return [f"{host}:{port}:{ip}:{lport}" for host, (ip, lport) in self.hosts.items()]

    def address_of(self, ip: str) -> tuple[str, int] | None:
        """The listener on `ip` (the DNS answer for a name), for clients that connect directly."""
        for addr in self.hosts.values():
            if addr[0] == ip:
                return addr
        return None

    def site_overlay(self) -> dict[str, object]:
        """The site overlay that describes the simulated cluster to the rule pack: the customer's
        bucket, the registry region, where pods and nodes connect from, and the cluster resolver."""
        return {
            "overlay": {"id": "simulated-hybrid", "description": "Boundary Auditor's simulated Gretel Hybrid on loopback"},
            "registry_region": names.REGION,
            "buckets": [f"s3://{names.CUSTOMER_BUCKET}/"],
            "cluster": {
                "pod_cidrs": [f"{names.POD_IP.rsplit('.', 1)[0]}.0/24"],
                "node_cidrs": [f"{names.NODE_IP.rsplit('.', 1)[0]}.0/24"],
                "dns": {"servers": [self.dns_address[0]]},
            },
        }

    def write_site_overlay(self, path: Path | str) -> Path:
        """Write `site_overlay()` as YAML, for `--overlay`."""
        out = Path(path)
        out.write_text("# Written by auditor.sim: the simulated cluster's site facts.\n"
                       + yaml.safe_dump(self.site_overlay(), sort_keys=False))
        return out

    # --- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for server in self._servers.values():
            server.close_connections()
        stoppers = [threading.Thread(target=s.shutdown, daemon=True) for s in self._servers.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=2)
        for server in self._servers.values():
            server.server_close()
        self._dns.stop()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
