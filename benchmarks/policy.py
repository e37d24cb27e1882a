"""Policy decisions per second against the Gretel Hybrid pack (plus the example
site overlay), beside a reference measured in the same run: a bare loop doing
only a dict lookup of each event's host.

Events are synthetic but shaped like real hybrid traffic: agent polling and
metadata PATCHes, worker log shipping, base-model downloads, image pulls from
ECR and its layer bucket (path-style and virtual-hosted, every key different),
probe flows, DNS lookups, cluster-internal calls, and about 6% violations
(uploads to foreign buckets, unknown hosts, training data in logs, the
forbidden artifacts route, bypassing raw IPs, inbound connections).

    /work/venv/bin/python benchmarks/policy.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

from auditor.model import (
    DetectorFinding,
    Destination,
    DnsInfo,
    EgressEvent,
    FlowInfo,
    HttpInfo,
    PayloadInfo,
    Source,
)
from auditor.rules import evaluate, load_pack, shipped_path

import store_ingest  # benchmarks/store_ingest.py: the store half of this benchmark

CHUNK = 50_000
REGISTRY = "074762682575.dkr.ecr.us-west-2.amazonaws.com"
LAYER_BUCKET = "prod-us-west-2-starport-layer-bucket"

POD = Source(ip="10.42.0.17", port=40112, pod="agent-7c9d6b5f4-x2kqv", namespace="gretel-hybrid", workload="agent", scope="pod")
WORKER = Source(ip="10.42.1.33", port=51220, pod="gretel-jobs-worker-5f7kd", namespace="gretel-hybrid", workload="gretel-jobs-worker", scope="pod")
NODE = Source(ip="192.168.10.12", port=33000, node="node-b", scope="node")


def _http(src: Source, host: str, method: str, path: str, payload: PayloadInfo | None = None, port: int = 443) -> EgressEvent:
    return EgressEvent(
        sensor_id="proxy-a",
        kind="http",
        source=src,
        destination=Destination(host=host, sni=host, http_host=host, ip="203.0.113.10", port=port, tls=True, app_protocol="http/1.1"),
        http=HttpInfo(method=method, scheme="https", path=path, status=200, request_bytes_wire=payload.size if payload else None),
        payload=payload,
    )


def _meta(kinds: list[str], route: str) -> PayloadInfo:
    return PayloadInfo(sha256="0" * 64, size=180, labels=["metadata"], metadata_kinds=kinds, inspected=True, route=route)


def _make(rng: random.Random) -> EgressEvent:
    r = rng.random()
    hexid = uuid.UUID(int=rng.getrandbits(128)).hex
    if r < 0.14:
        return _http(POD, "api.gretel.cloud", "POST", "/jobs/receive_one")
    if r < 0.22:
        return _http(POD, "api.gretel.cloud", "GET", "/users/me/billing")
    if r < 0.30:
        return _http(POD, "api.gretel.cloud", "PATCH", "/projects/models", _meta(["model-id", "model-status"], "PATCH /projects/models"))
    if r < 0.40:
        return _http(WORKER, "api.gretel.cloud", "POST", f"/v1/logs/model/{hexid}", _meta(["model-logs"], "POST /v1/logs/model"))
    if r < 0.44:
        return _http(POD, "api.gretel.cloud", "GET", f"/projects/proj-{hexid[:8]}")
    if r < 0.50:
        return _http(WORKER, "artifacts.gretel.cloud", "GET", f"/tabular/actgan/{hexid}.tar.gz")
    if r < 0.58:
        return _http(NODE, REGISTRY, rng.choice(["GET", "HEAD"]), f"/v2/gretelai/worker/blobs/sha256:{hexid}{hexid}")
    if r < 0.64:
        return _http(NODE, f"{LAYER_BUCKET}.s3.us-west-2.amazonaws.com", "GET", f"/{hexid[:2]}/{hexid}")
    if r < 0.70:
        return _http(NODE, rng.choice(["s3.amazonaws.com", "s3-us-west-2.amazonaws.com"]), "GET", f"/{LAYER_BUCKET}/{hexid}")
    if r < 0.76:
        host = rng.choice(["api.gretel.cloud", REGISTRY, "s3.amazonaws.com"])
        src = POD if host == "api.gretel.cloud" else NODE
        return EgressEvent(
            sensor_id="probe-node-b", kind="flow", source=src,
            destination=Destination(host=host, sni=host, ip="203.0.113.20", port=443, app_protocol="tls"),
            flow=FlowInfo(direction="egress", tcp_state="closed", bytes_up=2100, bytes_down=88000),
        )
    if r < 0.82:
        qname = rng.choice(["api.gretel.cloud", "artifacts.gretel.cloud", "agent.gretel-hybrid.svc.cluster.local", REGISTRY])
        return EgressEvent(
            sensor_id="probe-node-b", kind="dns", source=POD,
            destination=Destination(ip="10.43.0.10", port=53, transport="udp", app_protocol="dns"),
            dns=DnsInfo(qname=qname, answers=["203.0.113.10"], resolver="10.43.0.10"),
        )
    if r < 0.88:
        return EgressEvent(
            sensor_id="probe-node-b", kind="flow", source=POD,
            destination=Destination(ip=f"10.43.{rng.randrange(4)}.{rng.randrange(1, 65)}", port=8080),  # ~250 services
            flow=FlowInfo(direction="egress", tcp_state="closed"),
        )
    if r < 0.94:
        return _http(WORKER, "s3.amazonaws.com", "PUT", f"/example-corp-gretel-artifacts/proj/model/{hexid}/model.tar.gz")
    # violations
    v = rng.randrange(6)
    if v == 0:
        return _http(NODE, "s3.amazonaws.com", "PUT", f"/exfil-{hexid[:6]}/{hexid}")
    if v == 1:
        return _http(WORKER, f"{hexid[:10]}.example.net", "POST", "/upload")
    if v == 2:
        tabular = PayloadInfo(
            sha256="2" * 64, size=2048, labels=["training-data"], inspected=True, route="POST /v1/logs/model",
            findings=[DetectorFinding(detector="tabular", label="training-data", likelihood="VERY_LIKELY", field_path="$[3].msg", excerpt="ssn,name\\n***,***")],
        )
        return _http(WORKER, "api.gretel.cloud", "POST", "/v1/logs/model", tabular)
    if v == 3:
        return _http(POD, "api.gretel.cloud", "POST", f"/projects/{hexid[:8]}/artifacts")
    if v == 4:
        return EgressEvent(
            sensor_id="probe-node-b", kind="flow", source=WORKER,
            destination=Destination(ip=f"198.51.100.{rng.randrange(1, 255)}", port=443, app_protocol="tls"),
            flow=FlowInfo(direction="egress", tcp_state="established", bytes_up=50000), observations=["direct-ip", "bypass"],
        )
    return EgressEvent(
        sensor_id="probe-node-b", kind="flow", source=Source(ip="198.51.100.9", scope="external"),
        destination=Destination(ip="10.42.0.17", port=22), flow=FlowInfo(direction="inbound", tcp_state="established"),
        observations=["inbound"],
    )


def _timed(fn: Callable[[list[EgressEvent]], None], events: list[EgressEvent]) -> tuple[float, float]:
    """Wall time and this process's CPU time (the machine is shared; CPU time shows our own cost)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(events)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ingest-events", type=int, default=200_000, help="events for the store ingest half")
    args = parser.parse_args()

    pack = load_pack(None, [shipped_path("site-example.yaml")])
    allowed_hosts = {h: ep.id for ep in pack.all_endpoints for h in ep.hosts}
    rng = random.Random(args.seed)
    actions: Counter[str] = Counter()
    ours = ref = ours_cpu = ref_cpu = 0.0
    done = 0

    decisions: list[object] = []

    def run_policy(events: list[EgressEvent]) -> None:
        keep = decisions.append
        for event in events:
            keep(evaluate(event, pack))

    def run_reference(events: list[EgressEvent]) -> None:
        looked_up: list[object] = []
        keep = looked_up.append
        get = allowed_hosts.get
        for event in events:
            keep(get(event.destination.host or event.destination.ip or ""))

    while done < args.events:
        n = min(CHUNK, args.events - done)
        events = [_make(rng) for _ in range(n)]
        # The synthetic chunk is a large static heap a real sensor never holds (it sees one
        # event at a time): freeze it so the cyclic GC does not rescan it, for both loops.
        gc.collect()
        gc.freeze()
        wall, cpu = _timed(run_reference, events)
        ref, ref_cpu = ref + wall, ref_cpu + cpu
        wall, cpu = _timed(run_policy, events)
        ours, ours_cpu = ours + wall, ours_cpu + cpu
        gc.unfreeze()
        actions.update(d.action for d in decisions if d is not None)  # type: ignore[attr-defined]
        decisions.clear()
        del events
        done += n

    rate, ref_rate = done / ours, done / ref
    cpu_rate, ref_cpu_rate = done / ours_cpu, done / ref_cpu
    print(f"policy.evaluate: {done:,} events in {ours:.2f} s = {rate:,.0f} decisions/s wall, {cpu_rate:,.0f}/s per CPU second  (target >= 200,000)")
    print(f"reference (bare dict lookup of the host): {ref_rate:,.0f} lookups/s wall, {ref_cpu_rate:,.0f}/s per CPU second")
    print(f"ratio policy/reference: {rate / ref_rate:.3f} wall, {cpu_rate / ref_cpu_rate:.3f} CPU  ({ref_rate / rate:.1f}x the cost of a dict lookup)")
    print("decisions: " + ", ".join(f"{k} {v:,}" for k, v in sorted(actions.items())))
    print()
    store_ingest.main(args.ingest_events)


if __name__ == "__main__":
    main()
