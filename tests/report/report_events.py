"""Events the report tests store: shaped like the proxy's and the probe's, with
times fixed so windows and timelines are exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from auditor.model import (
    DetectorFinding, Destination, EgressEvent, FlowInfo, HttpInfo, PayloadInfo, Source, sensor_event,
)

T0 = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)
API_IP = "203.0.113.10"
ARTIFACTS_IP = "203.0.113.11"
REGISTRY_IP = "203.0.113.20"

AGENT = Source(ip="10.42.0.17", port=40112, pod="agent-7c9d6b5f4-x2kqv", namespace="gretel-hybrid",
               node="node-a", workload="agent", scope="pod")
WORKER = Source(ip="10.42.1.33", port=51220, pod="gretel-jobs-worker-5f7kd", namespace="gretel-hybrid",
                node="node-b", workload="gretel-jobs-worker", scope="pod")
NODE_B = Source(ip="192.168.10.12", port=33000, node="node-b", scope="node")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _timed(event: EgressEvent, seconds: float) -> EgressEvent:
    event.time = at(seconds)
    return event


def api(seconds: float, method: str, path: str, *, src: Source = AGENT, payload: PayloadInfo | None = None,
        host: str = "api.gretel.cloud", ip: str = API_IP, sensor: str = "proxy-a", size: int = 0) -> EgressEvent:
    return EgressEvent(
        time=at(seconds), sensor_id=sensor, kind="http", source=src,
        destination=Destination(host=host, sni=host, http_host=host, ip=ip, port=443, app_protocol="http/1.1", tls=True),
        http=HttpInfo(method=method, scheme="https", path=path, status=200, request_bytes_wire=size or None,
                      response_bytes_wire=400, content_type="application/json" if payload else None),
        payload=payload,
    )


def metadata(kinds: list[str], route: str) -> PayloadInfo:
    return PayloadInfo(sha256="0" * 64, size=42, labels=["metadata"], metadata_kinds=kinds, inspected=True, route=route)


def flow(seconds: float, src: Source, ip: str, sni: str | None, *, observations: list[str] | None = None,
         direction: str = "egress", sensor: str = "probe-node-a", up: int = 900, down: int = 4000) -> EgressEvent:
    return EgressEvent(
        time=at(seconds), sensor_id=sensor, kind="flow", source=src,
        destination=Destination(host=sni, sni=sni, ip=ip, port=443, app_protocol="tls"),
        flow=FlowInfo(direction=direction, tcp_state="closed", bytes_up=up, bytes_down=down, packets_up=5, packets_down=6,
                      first_seen=at(seconds), last_seen=at(seconds + 1), resolved_name=sni),
        observations=observations or [],
    )


def lifecycle(sensor: str, what: str, seconds: float, **fields: object) -> EgressEvent:
    return _timed(sensor_event(sensor, what, **fields), seconds)  # type: ignore[arg-type]


def clean_events() -> list[EgressEvent]:
    """A complete, allowed run: the proxy inspected every body, the probe saw every
    pod flow go through the proxy, and the node pulled images from the registry."""
    return [
        lifecycle("proxy-a", "start", 0, config_digest="sha256:" + "1" * 64, version="0.1.0"),
        lifecycle("probe-node-a", "start", 0),
        api(1, "GET", "/users/me/billing"),
        flow(1, AGENT, API_IP, "api.gretel.cloud", sensor="probe-node-a"),
        api(3, "PATCH", "/projects/models", payload=metadata(["model-id", "model-status"], "PATCH /projects/models"), size=42),
        flow(3, AGENT, API_IP, "api.gretel.cloud", sensor="probe-node-a"),
        api(5, "GET", "/models/base.tar.gz", src=WORKER, host="artifacts.gretel.cloud", ip=ARTIFACTS_IP),
        flow(5, WORKER, ARTIFACTS_IP, "artifacts.gretel.cloud", sensor="probe-node-a"),
        flow(7, NODE_B, REGISTRY_IP, "074762682575.dkr.ecr.us-west-2.amazonaws.com", sensor="probe-node-a", up=2100, down=88000),
        lifecycle("proxy-a", "stop", 20),
        lifecycle("probe-node-a", "stop", 20),
    ]


def leak_events() -> list[EgressEvent]:
    """Training rows in a log line to the API, and a pod going around the proxy."""
    leak = PayloadInfo(
        sha256="f" * 64, size=900, labels=["training-data"], inspected=True, route="POST /v1/logs/model",
        findings=[DetectorFinding(detector="tabular", label="training-data", likelihood="VERY_LIKELY",
                                  field_path="msg", excerpt="j*** s****,4***-****")],
    )
    return [
        *clean_events()[:-2],
        api(10, "POST", "/v1/logs/model", src=WORKER, payload=leak, size=900),
        flow(11, WORKER, API_IP, "api.gretel.cloud"),
        flow(12, WORKER, "198.51.100.7", None, observations=["direct-ip", "bypass"]),
        lifecycle("proxy-a", "stop", 20),
        lifecycle("probe-node-a", "stop", 20),
    ]
