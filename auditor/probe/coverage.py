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
from collections.abc import Hashable
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from auditor.model import PROBE_PREFIX, PROXY_PREFIX, REFUSED_NOTE, EgressEvent
from auditor.rules import registry
from auditor.store.base import Store, chain_keys

MAX_LISTED = 100
TAIL_BATCH = 10_000


ProxyKey = tuple[bool, tuple[str, int]]  # (by address?, (address or name, port))


def timestamp_us(t: datetime) -> int:
    """The index's clock: microseconds from the float timestamp, the same for every caller."""
    return int(t.timestamp() * 1_000_000)


def _name(value: str) -> str:
    return value.lower().rstrip(".")


def is_proxy_record(ev: EgressEvent) -> bool:
    """A proxy's record of an upstream connection (not its lifecycle records)."""
    return ev.sensor_id.startswith(PROXY_PREFIX) and ev.kind != "sensor"


def proxy_keys(ev: EgressEvent) -> tuple[ProxyKey, ...]:
    """Where a proxy record says the proxy connected: by (address, port); by (name, port)
    only when no address was recorded, the name being the best there is. A request the
    proxy refused connected nowhere: it accounts for no flow."""
    if REFUSED_NOTE in ev.notes:
        return ()
    d = ev.destination
    port = d.port or (443 if d.tls or (ev.http and ev.http.scheme == "https") else 80)
    if d.ip:
        return ((True, (d.ip, port)),)
    return tuple((False, (_name(name.rsplit(":", 1)[0]), port)) for name in {d.host, d.sni, d.http_host} if name)


def flow_keys(ev: EgressEvent) -> tuple[ProxyKey, ...]:
    """The proxy records that would account for a flow: its (address, port) and each name
    it carries with its port; none for a flow without a port or a first-seen time."""
    f, d = ev.flow, ev.destination
    if f is None or f.first_seen is None or not d.port:
        return ()
    keys: list[ProxyKey] = [(True, (d.ip, d.port))] if d.ip else []
    keys.extend((False, (_name(name), d.port)) for name in {d.sni, d.http_host, d.host, f.resolved_name} if name)
    return tuple(keys)


def flow_window(first_seen: datetime, last_seen: datetime | None, slack_us: int) -> tuple[int, int]:
    """The times a proxy record may have to match a flow: its lifetime plus slack."""
    return timestamp_us(first_seen) - slack_us, timestamp_us(last_seen or first_seen) + slack_us


class ProxyIndex:
    """Times of proxy upstream connections under their `proxy_keys`, so a flow is matched
    by its `flow_keys` (a direct connection to another address that merely names the same
    host is not taken for the proxy's)."""

    def __init__(self) -> None:
        self._by_addr: dict[tuple[str, int], list[int]] = defaultdict(list)
        self._by_name: dict[tuple[str, int], list[int]] = defaultdict(list)
        self._seen: dict[Hashable, int] = {}  # record -> time, so overlapping reads count once
        self.events = 0
        self.login_registries: dict[str, int] = {}  # registry host a get_login answer named -> first time; never pruned

    def add(self, ev: EgressEvent, key: Hashable) -> None:
        """One stored event under `key`, what tells it from every other: (sensor, seq)."""
        if is_proxy_record(ev):
            t = timestamp_us(ev.time)
            self.record(key, t, proxy_keys(ev))
            named = ev.http.login_registry if ev.http is not None and ev.decision is not None and ev.decision.action == "allowed" else None
            if named:
                self.name_registry(named, t)

    def name_registry(self, host: str, t: int) -> None:
        """A get_login answer at `timestamp_us` time `t` named `host`."""
        if t < self.login_registries.get(host, t + 1):
            self.login_registries[host] = t

    def record(self, key: Hashable, t: int, keys: tuple[ProxyKey, ...]) -> None:
        """One proxy record by what tells it apart (its id, or its sensor and seq), its
        `timestamp_us` time and its `proxy_keys`; a record seen before counts once."""
        if key in self._seen:
            return
        self._seen[key] = t
        self.events += 1
        for by_addr, key in keys:
            bisect.insort((self._by_addr if by_addr else self._by_name)[key], t)

    def prune(self, before: datetime) -> None:
        """Forget records older than `before`: no flow still to be decided can match them."""
        cut = timestamp_us(before)
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
        """The proxy's records timed within [since, until). Other sensors' rows, and rows
        read before, are passed over undecoded: in a probe's own store they are most."""
        seen = self._seen
        for _, sensor_id, seq, body in store.event_rows(since, until, **chain_keys(PROXY_PREFIX)):
            if (sensor_id, seq) not in seen:
                self.add(EgressEvent.model_validate_json(body), (sensor_id, seq))

    def tail(self, store: Store, cursor: dict[str, int]) -> None:
        """The proxy's records appended past `cursor` (`proxy_heads`, advanced here), however
        late they were written: a live probe's refresh reads each record once."""
        while True:
            batch = store.events_after(cursor, TAIL_BATCH, prefix=PROXY_PREFIX)
            for sensor_id, seq, ev in batch:
                cursor[sensor_id] = max(cursor.get(sensor_id, 0), seq)
                self.add(ev, (sensor_id, seq))
            if len(batch) < TAIL_BATCH:
                return

    def matches(self, flow: EgressEvent, slack_s: float = 5.0) -> bool:
        """A proxy record for this destination within the flow's lifetime (plus slack)."""
        if flow.flow is None or flow.flow.first_seen is None:
            return False
        lo, hi = flow_window(flow.flow.first_seen, flow.flow.last_seen, int(slack_s * 1_000_000))
        return self.seen(flow_keys(flow), lo, hi)

    def seen(self, keys: tuple[ProxyKey, ...], lo: int, hi: int) -> bool:
        """A record under any of `keys` (`flow_keys`) timed within [lo, hi] (`flow_window`)."""
        for by_addr, key in keys:
            times = (self._by_addr if by_addr else self._by_name).get(key)
            if times:
                i = bisect.bisect_left(times, lo)
                if i < len(times) and times[i] <= hi:
                    return True
        return False


def proxy_heads(store: Store) -> dict[str, int]:
    """Each proxy chain's last seq now: where `ProxyIndex.tail` starts."""
    return {h.sensor_id: h.head_seq for h in store.chain_heads() if h.sensor_id.startswith(PROXY_PREFIX)}


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


def mark_unnamed_registries(events: list[EgressEvent], index: ProxyIndex) -> int:
    """Red flag 10 for pulls around the proxy: add `registry-not-named` to each external
    flow to a registry's name (`registry.is_registry_name`) that no get_login answer the
    proxy recorded before the flow began had named. Before any such answer, nothing is
    judged. Returns how many were marked."""
    count = 0
    for ev in events:
        if not index.login_registries or not is_external_flow(ev) or ev.flow is None or ev.flow.first_seen is None:
            continue
        name = ev.destination.sni or ev.destination.host
        if not name or not registry.is_registry_name(name) or registry.OBSERVATION in ev.observations:
            continue
        start = timestamp_us(ev.flow.first_seen)
        named = {host for host, t in index.login_registries.items() if t <= start}
        if registry.unnamed(name, named):
            ev.observations = sorted([*ev.observations, registry.OBSERVATION])
            ev.notes.append(registry.note(named))
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
