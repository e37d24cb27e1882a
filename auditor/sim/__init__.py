"""Simulated Gretel Hybrid for the demo and the tests: control plane, registry, S3, a
foreign host and DNS on loopback, plus a worker that makes the real call sequence.

    from auditor.sim import Simulation, run_scenario, expectations
    with Simulation.start(tmp / "ca") as sim:
        result = run_scenario("leaky", None, sim)                  # straight to the simulation
        result = run_scenario("clean", "http://127.0.0.1:8080", sim,
                              proxy_ca=proxy_ca_pem)               # through `auditor proxy`
"""

from __future__ import annotations

from pathlib import Path

from auditor.sim import names
from auditor.sim.scenarios import SCENARIOS, Expectation, Step, expectations
from auditor.sim.simulation import Simulation
from auditor.sim.worker import DEFAULT_CANARY, ScenarioResult, StepResult, WorkerConfig, run_steps, scenario_steps

__all__ = [
    "DEFAULT_CANARY", "SCENARIOS", "Expectation", "ScenarioResult", "Simulation", "Step", "StepResult",
    "WorkerConfig", "expectations", "names", "run_scenario", "worker_config",
]


def worker_config(sim: Simulation, proxy_url: str | None = None, *, proxy_ca: Path | str | None = None,
                  canary: str | None = None) -> WorkerConfig:
    """The worker's view of a running simulation: its DNS, its CA, where each answer listens."""
    foreign_ip = sim.hosts[names.FOREIGN][0]
    return WorkerConfig(
        proxy_url=proxy_url,
        proxy_ca=Path(proxy_ca) if proxy_ca else None,
        sim_ca=sim.ca_cert_path,
        dns_server=sim.dns_address,
        port_map={ip: port for ip, port in sim.hosts.values()},
        foreign_ip=foreign_ip,
        canary=canary or DEFAULT_CANARY,
    )


def run_scenario(name: str, proxy_url: str | None, sim: Simulation, *, proxy_ca: Path | str | None = None,
                 canary: str | None = None) -> ScenarioResult:
    """Run scenario `name` ("clean" or "leaky") against `sim`, through `proxy_url` when given.

    `proxy_ca` is the CA the proxy presents (the pods trust it); without a proxy the
    worker trusts the simulation's CA. `canary` replaces the default canary token.
    """
    steps = scenario_steps(name)
    sim.reset_state()
    return run_steps(name, steps, worker_config(sim, proxy_url, proxy_ca=proxy_ca, canary=canary))
