"""Coverage against the proxy: for each pod or node flow to an external address,
did the proxy record an upstream connection to the same place at the same time?

A flow the proxy saw is inspected; one it did not see went around it (`bypass`).
The matched share is what the report states as proxy coverage. Proxy events are
those whose sensor id starts with ``proxy``; they carry the upstream address
(destination ip and port) or at least the name, and their time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from auditor.model import EgressEvent
from auditor.store.base import Store

PROXY_PREFIX = "proxy"
PROBE_PREFIX = "probe"
MAX_LISTED = 100


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


class ProxyIndex:
    """Times of proxy upstream connections by (address, port); by (name, port) only for
    proxy records without an address, so a direct connection to another address that
    merely names the same host is not taken for the proxy's."""

    def __init__(self) -> None:
        self._by_addr: dict[tuple[str, int], list[int]] = defaultdict(list)
        self._by_name: dict[tuple[str, int], list[int]] = defaultdict(list)
        self._seen: dict[str, int] = {}  # event id -> time, so overlapping reads count once
        self.events = 0

    def add(self, ev: EgressEvent) -> None:
        if not ev.sensor_id.startswith(PROXY_PREFIX) or ev.kind == "sensor" or ev.id in self._seen:
            return
        t = _us(ev.time)
        self._seen[ev.id] = t
        self.events += 1
        d = ev.destination
        port = d.port or (443 if d.tls or (ev.http and ev.http.scheme == "https") else 80)
        if d.ip:
            bisect.insort(self._by_addr[(d.ip, port)], t)
            return
        for name in {d.host, d.sni, d.http_host}:  # no address recorded: the name is the best we have
            if name:
                bisect.insort(self._by_name[(name.rsplit(":", 1)[0].lower().rstrip("."), port)], t)

    def prune(self, before: datetime) -> None:
        """Forget records older than `before`: no flow still to be decided can match them."""
        cut = _us(before)
        for table in (self._by_addr, self._by_name):
            for key in list(table):
                times = table[key]
                keep = times[bisect.bisect_left(times, cut) :]
                if keep:
                    table[key] = keep
                else:
                    del table[key]
        self._seen = {k: t for k, t in self._seen.items() if t >= cut}

    def load(self, store: Store, since: datetime | None = None, until: datetime | None = None) -> None:
        for ev in store.events(since, until):
            self.add(ev)

    def matches(self, flow: EgressEvent, slack_s: float = 5.0) -> bool:
        """A proxy record for this destination within the flow's lifetime (plus slack)."""
        if flow.flow is None or flow.flow.first_seen is None:
            return False
        lo = _us(flow.flow.first_seen) - int(slack_s * 1_000_000)
        hi = _us(flow.flow.last_seen or flow.flow.first_seen) + int(slack_s * 1_000_000)
        d = flow.destination
        keys: list[tuple[dict[tuple[str, int], list[int]], tuple[str, int]]] = []
        if d.ip and d.port:
            keys.append((self._by_addr, (d.ip, d.port)))
        for name in {d.sni, d.http_host, d.host, flow.flow.resolved_name}:
            if name and d.port:
                keys.append((self._by_name, (name.lower().rstrip("."), d.port)))
        for table, key in keys:
            times = table.get(key)
            if times:
                i = bisect.bisect_left(times, lo)
                if i < len(times) and times[i] <= hi:
                    return True
        return False


def is_external_flow(ev: EgressEvent) -> bool:
    """A probe flow opened from inside toward an address outside the cluster, not to the proxy."""
    return (
        ev.sensor_id.startswith(PROBE_PREFIX)
        and ev.kind == "flow"
        and ev.flow is not None
        and ev.flow.direction == "egress"
        and ev.destination.transport in ("tcp", "udp")
        and "to the audit proxy" not in ev.notes
        and ev.destination.app_protocol != "dns"
    )


def mark_bypass(events: list[EgressEvent], index: ProxyIndex, slack_s: float = 5.0) -> int:
    """Add `bypass` to each external flow the proxy has no record of; returns how many."""
    count = 0
    for ev in events:
        if is_external_flow(ev) and not index.matches(ev, slack_s) and "bypass" not in ev.observations:
            ev.observations = sorted([*ev.observations, "bypass"])
            ev.notes.append("no proxy connection to this destination during the flow")
            count += 1
    return count


class ProxyCoverage(BaseModel):
    """What share of external flows the proxy saw: the report's proxy coverage."""

    external_flows: int = 0
    matched: int = 0
    proxy_events: int = 0
    share: float | None = None  # None when there were no external flows
    unmatched_event_ids: list[str] = Field(default_factory=list)  # capped at MAX_LISTED
    unmatched_destinations: dict[str, int] = Field(default_factory=dict)


def proxy_coverage(
    store: Store, since: datetime | None = None, until: datetime | None = None, *, slack_s: float = 5.0
) -> ProxyCoverage:
    """Recompute the match from the store: probe flows against proxy records (which may
    extend a little past the window, since a proxy records a request when it completes)."""
    index = ProxyIndex()
    pad = timedelta(seconds=slack_s)
    index.load(store, since - pad if since else None, until + pad if until else None)
    out = ProxyCoverage(proxy_events=index.events)
    dests: dict[str, int] = defaultdict(int)
    for ev in store.events(since, until):
        if not is_external_flow(ev):
            continue
        out.external_flows += 1
        if index.matches(ev, slack_s):
            out.matched += 1
        else:
            dests[f"{ev.destination.host or ev.destination.ip}:{ev.destination.port}"] += 1
            if len(out.unmatched_event_ids) < MAX_LISTED:
                out.unmatched_event_ids.append(ev.id)
    out.share = out.matched / out.external_flows if out.external_flows else None
    out.unmatched_destinations = dict(sorted(dests.items(), key=lambda kv: -kv[1])[:MAX_LISTED])
    return out
