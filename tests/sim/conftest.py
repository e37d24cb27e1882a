"""One running simulation per test module: starting one takes tens of milliseconds, but the
tests also check that each starts from a fresh control plane (`reset_state`)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest

from auditor.sim import Simulation


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    simulation = Simulation.start(tmp_path_factory.mktemp("sim") / "ca")
    yield simulation
    simulation.stop()


class SimClient:
    """A real HTTPS client (httpx) that reaches a simulated name at its listener, with the
    name as SNI and Host, verifying the certificate against the simulation's CA only."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.client = httpx.Client(verify=ssl.create_default_context(cafile=str(sim.ca_cert_path)), timeout=5.0,
                                   trust_env=False)

    def request(self, method: str, host: str, target: str, *, sni: str | None = None, **kwargs: object) -> httpx.Response:
        ip, port = self.sim.hosts[host]
        headers = {"Host": host, **dict(kwargs.pop("headers", {}) or {})}  # type: ignore[arg-type]
        return self.client.request(method, f"https://{ip}:{port}{target}", headers=headers,
                                   extensions={"sni_hostname": sni or host}, **kwargs)  # type: ignore[arg-type]

    def url(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        """Follow an absolute URL the simulation handed out (presigned, redirect)."""
        parsed = httpx.URL(url)
        target = parsed.raw_path.decode()
        return self.request(method, parsed.host, target, **kwargs)


@pytest.fixture()
def client(sim: Simulation) -> Iterator[SimClient]:
    c = SimClient(sim)
    yield c
    c.client.close()


@pytest.fixture()
def fresh(sim: Simulation) -> Simulation:
    sim.reset_state()
    return sim

