"""Zeek JSON logs (conn, dns, ssl), joined by connection uid like Zeek itself does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.importers.common import Parsed, Rejected
from auditor.model import Destination, DnsInfo, EgressEvent, FlowInfo, Source, TcpState

# Zeek's conn_state, mapped onto the probe's TCP states.
_STATES: dict[str, TcpState] = {
    "S0": "attempted", "REJ": "refused", "S1": "established", "SF": "closed", "S2": "closed", "S3": "closed",
    "RSTO": "reset", "RSTR": "reset", "RSTOS0": "reset", "RSTRH": "reset", "SH": "attempted", "SHR": "attempted",
    "OTH": "established",
}
_APP = {"ssl": "tls", "http": "http/1.1", "dns": "dns", "quic": "quic"}


def _time(ts: Any) -> datetime:
    if isinstance(ts, (int, float)):
        return datetime.fromtimestamp(ts, UTC)
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00"))


def _endpoints(rec: dict[str, Any]) -> tuple[str, int, str, int]:
    if "id.orig_h" in rec:
        return rec["id.orig_h"], int(rec["id.orig_p"]), rec["id.resp_h"], int(rec["id.resp_p"])
    ident = rec["id"]
    return ident["orig_h"], int(ident["orig_p"]), ident["resp_h"], int(ident["resp_p"])


def _read(path: Path) -> tuple[str, list[tuple[int, dict[str, Any]]], list[Rejected]]:
    """Which log this is (by its fields, since names vary) and its records."""
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[Rejected] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                records.append((lineno, rec))
            except ValueError as exc:
                bad.append(Rejected(f"{path}:{lineno}: {exc} (fix: one Zeek JSON record per line)"))
    sample = records[0][1] if records else {}
    if "query" in sample or "qtype_name" in sample:
        kind = "dns"
    elif "server_name" in sample or "cipher" in sample or "established" in sample:
        kind = "ssl"
    else:
        kind = "conn"
    return kind, records, bad


def parse_zeek(paths: list[Path], sensor_id: str) -> Parsed:
    logs: dict[str, list[tuple[Path, int, dict[str, Any]]]] = {"conn": [], "dns": [], "ssl": []}
    for path in paths:
        kind, records, bad = _read(path)
        yield from bad
        logs[kind].extend((path, n, r) for n, r in records)
    sni = {r.get("uid"): r for _, _, r in logs["ssl"] if r.get("uid")}
    for path, lineno, rec in logs["conn"]:
        try:
            yield _conn(rec, sni.get(rec.get("uid")), sensor_id)
        except (KeyError, TypeError, ValueError) as exc:
            yield Rejected(f"{path}:{lineno}: conn record: {exc.__class__.__name__}: {exc} (fix: needs ts, uid, id.*)")
    conn_uids = {r.get("uid") for _, _, r in logs["conn"]}
    for path, lineno, rec in logs["ssl"]:
        if rec.get("uid") in conn_uids:
            continue
        try:
            yield _ssl_only(rec, sensor_id)
        except (KeyError, TypeError, ValueError) as exc:
            yield Rejected(f"{path}:{lineno}: ssl record: {exc.__class__.__name__}: {exc} (fix: needs ts, id.*)")
    for path, lineno, rec in logs["dns"]:
        try:
            yield _dns(rec, sensor_id)
        except (KeyError, TypeError, ValueError) as exc:
            yield Rejected(f"{path}:{lineno}: dns record: {exc.__class__.__name__}: {exc} (fix: needs ts, id.*, query)")


def _direction(rec: dict[str, Any]) -> str:
    orig, resp = rec.get("local_orig"), rec.get("local_resp")
    if orig is True and resp is True:
        return "internal"
    if orig is False and resp is True:
        return "inbound"
    if orig is True and resp is False:
        return "egress"
    return "unknown"


def _conn(rec: dict[str, Any], ssl: dict[str, Any] | None, sensor_id: str) -> EgressEvent:
    src, sport, dst, dport = _endpoints(rec)
    start = _time(rec["ts"])
    duration = rec.get("duration")
    last = datetime.fromtimestamp(start.timestamp() + float(duration), UTC) if duration else start
    direction = _direction(rec)
    service = str(rec.get("service") or "").split(",")[0]
    return EgressEvent(
        time=start,
        sensor_id=sensor_id,
        kind="flow",
        source=Source(ip=src, port=sport),
        destination=Destination(
            host=(ssl or {}).get("server_name"),
            sni=(ssl or {}).get("server_name"),
            ip=dst,
            port=dport,
            transport=rec.get("proto", "tcp") if rec.get("proto") in ("tcp", "udp", "icmp") else "tcp",
            app_protocol=_APP.get(service, service or None),
            tls=True if ssl else None,
        ),
        flow=FlowInfo(
            direction=direction,  # type: ignore[arg-type]
            tcp_state=_STATES.get(str(rec.get("conn_state"))),
            bytes_up=int(rec.get("orig_bytes") or 0),
            bytes_down=int(rec.get("resp_bytes") or 0),
            packets_up=int(rec.get("orig_pkts") or 0),
            packets_down=int(rec.get("resp_pkts") or 0),
            first_seen=start,
            last_seen=last,
        ),
        observations=["inbound"] if direction == "inbound" else [],
    )


def _ssl_only(rec: dict[str, Any], sensor_id: str) -> EgressEvent:
    src, sport, dst, dport = _endpoints(rec)
    return EgressEvent(
        time=_time(rec["ts"]),
        sensor_id=sensor_id,
        kind="tls",
        source=Source(ip=src, port=sport),
        destination=Destination(host=rec.get("server_name"), sni=rec.get("server_name"), ip=dst, port=dport,
                                app_protocol=rec.get("next_protocol") or "tls", tls=True),
    )


def _dns(rec: dict[str, Any], sensor_id: str) -> EgressEvent:
    src, sport, dst, dport = _endpoints(rec)
    answers = [str(a) for a in rec.get("answers") or []]
    ttls = rec.get("TTLs") or []
    return EgressEvent(
        time=_time(rec["ts"]),
        sensor_id=sensor_id,
        kind="dns",
        source=Source(ip=src, port=sport),
        destination=Destination(ip=dst, port=dport, transport="udp" if rec.get("proto") != "tcp" else "tcp", app_protocol="dns"),
        dns=DnsInfo(
            qname=str(rec["query"]).rstrip(".").lower(),
            qtype=str(rec.get("qtype_name") or "A"),
            rcode=rec.get("rcode_name"),
            answers=answers,
            ttl=int(min(ttls)) if ttls else None,
            resolver=dst,
            over="tcp" if rec.get("proto") == "tcp" else "udp",
        ),
    )
