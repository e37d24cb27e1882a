"""Cilium Hubble flows (`hubble observe -o json`, with or without the `flow` wrapper)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from auditor.importers.common import Parsed, Rejected
from auditor.model import Destination, DnsInfo, EgressEvent, FlowInfo, Source


def parse_hubble(paths: list[Path], sensor_id: str) -> Parsed:
    path = paths[0]
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                flow = doc.get("flow", doc)
                if not isinstance(flow, dict) or "IP" not in flow:
                    raise ValueError("no flow.IP: not an L3/L4 flow record")
                event = _event(flow, sensor_id)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                yield Rejected(f"{path}:{lineno}: {exc.__class__.__name__}: {exc} (fix: one `hubble observe -o json` record per line)")
                continue
            if event is not None:
                yield event


def _time(value: str) -> datetime:
    """Hubble prints nanoseconds; Python keeps microseconds."""
    value = value.replace("Z", "+00:00")
    if "." in value:
        head, rest = value.split(".", 1)
        frac, _, zone = rest.partition("+")
        value = f"{head}.{frac[:6]}+{zone}" if zone else f"{head}.{frac[:6]}"
    return datetime.fromisoformat(value)


def _endpoint(ep: dict[str, Any] | None) -> dict[str, Any]:
    return ep or {}


def _event(flow: dict[str, Any], sensor_id: str) -> EgressEvent | None:
    if flow.get("is_reply"):
        return None  # the request side carries the flow; replies would double it
    ip, l4 = flow["IP"], flow.get("l4") or {}
    proto = "tcp" if "TCP" in l4 else "udp" if "UDP" in l4 else "icmp" if any(k.startswith("ICMP") for k in l4) else "tcp"
    ports = l4.get("TCP") or l4.get("UDP") or {}
    src_ep, dst_ep = _endpoint(flow.get("source")), _endpoint(flow.get("destination"))
    workloads = src_ep.get("workloads") or []
    direction = {"EGRESS": "egress", "INGRESS": "inbound"}.get(str(flow.get("traffic_direction")), "unknown")
    if dst_ep.get("namespace") and src_ep.get("namespace"):
        direction = "internal"
    names = flow.get("destination_names") or []
    l7 = flow.get("l7") or {}
    dns = l7.get("dns")
    time = _time(flow["time"])
    source = Source(
        ip=ip.get("source"),
        port=ports.get("source_port"),
        pod=src_ep.get("pod_name"),
        namespace=src_ep.get("namespace"),
        node=flow.get("node_name"),
        workload=workloads[0].get("name") if workloads else None,
        scope="pod" if src_ep.get("pod_name") else "unknown",
    )
    if dns and dns.get("query"):
        return EgressEvent(
            time=time, sensor_id=sensor_id, kind="dns", source=source,
            destination=Destination(ip=ip.get("destination"), port=ports.get("destination_port"), transport=proto, app_protocol="dns"),  # type: ignore[arg-type]
            dns=DnsInfo(
                qname=str(dns["query"]).rstrip(".").lower(),
                qtype=(dns.get("qtypes") or ["A"])[0],
                rcode={0: "NOERROR", 3: "NXDOMAIN", 2: "SERVFAIL"}.get(dns.get("rcode", 0), str(dns.get("rcode"))),
                answers=[str(a) for a in dns.get("ips") or []],
                cname_chain=[str(c).rstrip(".") for c in dns.get("cnames") or []],
                ttl=dns.get("ttl"),
                resolver=ip.get("destination"),
            ),
        )
    flags = (l4.get("TCP") or {}).get("flags") or {}
    verdict = str(flow.get("verdict", ""))
    state = "refused" if flags.get("RST") and not flags.get("ACK") else "attempted" if flags.get("SYN") and not flags.get("ACK") else "established"
    notes = [f"hubble verdict {verdict}"] if verdict and verdict != "FORWARDED" else []
    return EgressEvent(
        time=time,
        sensor_id=sensor_id,
        kind="flow",
        source=source,
        destination=Destination(
            host=names[0].rstrip(".") if names else None,
            ip=ip.get("destination"),
            port=ports.get("destination_port"),
            transport=proto,  # type: ignore[arg-type]
        ),
        flow=FlowInfo(direction=direction, tcp_state=state if proto == "tcp" else None, first_seen=time, last_seen=time,  # type: ignore[arg-type]
                      resolved_name=names[0].rstrip(".") if names else None),
        observations=["inbound"] if direction == "inbound" else [],
        notes=notes,
    )
