"""The policy: one event in, one Decision out. Pure (the caches on the pack only
remember answers), and the only place facts become judgements.

An event is judged on every name its destination went by (host, SNI, Host
header, the DNS name behind its IP): one name outside the pack is enough for a
violation. Then direction, every sensor observation, and the payload's labels.
The worst rule that fired decides; anything the pack does not know is
unverified, never allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from auditor.model import SEVERITY_ORDER, Decision, Destination, EgressEvent, Finding, Likelihood, PayloadInfo
from auditor.rules.hosts import MAX_HOST, normalise_host, split_host_port
from auditor.rules.match import ACTION_RANK, Hit, Request, check_path, judge_name, name_info, normalise_path
from auditor.rules.pack import Endpoint, Pack, Rule
from auditor.rules.storage import StorageHost, bucket_of, storage_host

MAX_EVENT_IDS = 100
MAX_EXCERPTS = 5
MAX_SOURCES = 20
_CACHE_LIMIT = 50_000
_PER_PLAN_LIMIT = 1_000


def _given_names(event: EgressEvent) -> list[str]:
    """Every name the destination went by, in the order a reviewer reads them, without repeats."""
    d = event.destination
    names: list[str] = []
    for raw in (d.host, d.sni, d.http_host, event.flow.resolved_name if event.flow is not None else None):
        if raw:
            host = split_host_port(raw)[0]
            if host and host not in names:
                names.append(host)
    return names


def _names(event: EgressEvent) -> list[str]:
    """The names the destination went by, else its address."""
    names = _given_names(event)
    if not names and event.destination.ip:
        names.append(event.destination.ip)
    return names


def _request(event: EgressEvent, pack: Pack) -> tuple[Request, str | None]:
    d = event.destination
    http = event.http
    port = d.port
    if port is None and d.http_host:
        port = split_host_port(d.http_host)[1]
    scope = event.source.scope
    note = None
    if scope not in ("pod", "node"):
        derived = pack.scope_of(event.source.ip) if event.source.ip else None
        assumed = pack.site.unknown_scope
        if derived is not None:
            note = f"source {event.source.ip} is in the overlay's {derived} CIDRs"
            scope = derived
        elif assumed in ("pod", "node"):
            note = f"source not attributed; the site overlay assumes a {assumed}"
            scope = assumed
        else:
            scope = "unknown"
    plaintext = (http is not None and http.scheme == "http") or d.tls is False
    method = http.method.upper() if http is not None else None
    # No path: what the plan holds must not depend on it (paths carry ids); evaluate adds it.
    return Request(port=port, scope=scope, plaintext=plaintext, method=method, path=None, transport=d.transport), note


def _label_reason(payload: PayloadInfo, label: str) -> str:
    where = [
        f"{f.field_path or 'body'} ({f.likelihood}, {f.detector})" for f in payload.findings if f.label == label
    ][:3]
    route = f" in {payload.route}" if payload.route else ""
    return f"payload labelled {label}{route}" + (f" at {', '.join(where)}" if where else "")


def _payload_hits(event: EgressEvent, pack: Pack) -> list[Hit]:
    """Hits for the request body: uninspected, unlabelled, or each label's rule."""
    payload = event.payload
    http = event.http
    if payload is None:
        if http is not None:
            size = http.request_bytes_decoded or http.request_bytes_wire or 0
            if size > 0:
                return [("payload.not-inspected", f"request body of {size} bytes has no payload record")]
        return []
    hits: list[Hit] = []
    if not payload.inspected and payload.size > 0:
        reason = payload.not_inspected_reason or "no reason recorded"
        hits.append(("payload.not-inspected", f"body of {payload.size} bytes not inspected: {reason}"))
    elif payload.inspected and payload.size > 0 and not payload.labels:
        hits.append(("payload.unlabelled", f"inspected body of {payload.size} bytes carries no label"))
    labels = pack.labels
    for label in payload.labels:
        rule_id = labels.get(label)
        if rule_id is None:
            hits.append(("policy.unknown-label", f"payload label '{label}' is not in the pack"))
        elif label == "metadata":
            unknown = [k for k in payload.metadata_kinds if k not in pack.metadata_kind_ids]
            if unknown:
                hits.append(("payload.unknown-kind", f"metadata kind(s) {', '.join(unknown)} are not among the contract's 13"))
            kinds = ", ".join(payload.metadata_kinds) or "unspecified kinds"
            hits.append((rule_id, f"metadata: {kinds}"))
        else:
            hits.append((rule_id, _label_reason(payload, label)))
    return hits


def _dns_hits(event: EgressEvent, pack: Pack) -> list[Hit]:
    """A lookup is judged on the name asked for and, when the overlay says where the cluster is, on the resolver asked."""
    assert event.dns is not None
    hits: list[Hit] = []
    resolver = event.destination.ip or event.dns.resolver
    if resolver and pack.internal_networks and not pack.is_internal(resolver):
        rule_id = pack.observations.get("dns-foreign-resolver", "policy.unknown-observation")
        hits.append((rule_id, f"query sent to {normalise_host(resolver)}, not a cluster resolver"))
    name = normalise_host(event.dns.qname)
    if pack.is_internal(name):
        hits.append(("dns.lookup", f"lookup of cluster-internal {name}"))
        return hits
    req, _ = _request(event, pack)
    _, ep = judge_name(pack, name, Request(port=None, scope=req.scope, plaintext=False, method=None, path=None))
    if ep is not None:
        hits.append(("dns.lookup", f"lookup of {name} (endpoint {ep.id})"))
    else:
        hits.append(("dns.outside-pack", f"lookup of {name}, which no endpoint names"))
    return hits


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an event's destination decides before its path and body are looked at; cached per destination."""

    hits: tuple[Hit, ...]
    judge_payload: bool
    path_checks: tuple[tuple[Endpoint, str], ...] = ()  # allowed endpoints with deny routes or path globs
    deferred: tuple[tuple[str, StorageHost], ...] = ()  # object storage names whose bucket is in the path
    req: Request | None = None
    note: str | None = None
    cacheable: bool = True  # False for junk names longer than any host: they must not fill the cache
    by_bucket: dict[tuple[str, str | None], tuple[list[Hit], Endpoint | None]] = field(default_factory=dict)
    decisions: dict[tuple[Hit, ...], Decision] = field(default_factory=dict)


def _plan(event: EgressEvent, pack: Pack, direction: str | None) -> _Plan:
    if direction == "inbound":
        src = event.source.ip
        d = event.destination
        if src and pack.is_internal(src):
            return _Plan((("net.internal", f"opened toward {d.ip or d.host or 'a pod'} from {src}, inside the cluster"),), False)
        return _Plan((("net.no-inbound", f"connection opened from {src or 'an outside address'} toward {d.ip or d.host or 'the cluster'}"),), False)
    if direction == "internal":
        return _Plan((("net.internal", "flow marked cluster-internal by the sensor"),), False)
    if event.kind == "dns" and event.dns is not None:
        return _Plan(tuple(_dns_hits(event, pack)), False)
    names = _names(event)
    if not names:
        return _Plan((("egress.no-destination", "the event names no host, SNI, Host header or IP"),), True)
    req, note = _request(event, pack)
    hits: list[Hit] = []
    judge_payload = False
    path_checks: list[tuple[Endpoint, str]] = []
    deferred: list[tuple[str, StorageHost]] = []
    for name in names:
        info = name_info(pack, name)
        if info.storage is not None and info.storage.host_bucket is None and req.method is not None and not info.internal:
            deferred.append((name, info.storage))
            continue
        name_hits, ep = judge_name(pack, name, req)
        hits.extend(name_hits)
        if event.http is not None and ep is not None and info.path_dependent and pack.rules[name_hits[0][0]].action == "allowed":
            path_checks.append((ep, info.host))
        if (ep is None and name_hits[0][0] != "net.internal") or (ep is not None and ep.judges_payload):
            judge_payload = True
    if note and hits:
        hits.append((hits[0][0], note))
        note = None
    cacheable = all(len(n) <= MAX_HOST for n in names)
    return _Plan(tuple(hits), judge_payload, tuple(path_checks), tuple(deferred), req, note, cacheable)


def _decide(pack: Pack, hits: Sequence[Hit]) -> Decision:
    rules = pack.rules
    ordered = sorted(
        hits, key=lambda h: (-ACTION_RANK[rules[h[0]].action], -SEVERITY_ORDER[rules[h[0]].severity])
    )
    top = rules[ordered[0][0]]
    rule_ids = list(dict.fromkeys(h[0] for h in ordered))
    reasons = list(dict.fromkeys(f"{h[0]}: {h[1]}" for h in ordered))
    return Decision.model_construct(
        action=top.action, rule_id=top.id, severity=top.severity, reasons=reasons, rule_ids=rule_ids
    )


_NO_HITS: tuple[Hit, ...] = ()


def evaluate(event: EgressEvent, pack: Pack) -> Decision | None:
    """Judge one event. None for sensor lifecycle records, which are evidence, not traffic.

    The Decision returned may be shared by events with the same facts: treat it as read-only.
    """
    kind = event.kind
    if kind == "sensor":
        return None
    d = event.destination
    http = event.http
    flow = event.flow
    if flow is None:
        direction = resolved = None
    else:
        direction, resolved = flow.direction, flow.resolved_name
    source = event.source
    # A destination that went by a name is judged by its names, not its address, so one
    # plan serves every address behind the name (CDNs; the probe sees one IP per connection).
    named = kind != "dns" and direction != "inbound" and bool(d.host or d.sni or d.http_host or resolved)
    key = (
        kind, d.host, d.sni, d.http_host, None if named else d.ip, d.port, d.tls, d.transport, source.scope,
        None if http is None else http.method, None if http is None else http.scheme,
        direction, resolved,
        event.dns.qname if kind == "dns" and event.dns is not None else None,
        # The source address matters for inbound flows and for sources the sensor did not attribute.
        source.ip if direction == "inbound" or (source.scope != "pod" and source.scope != "node") else None,
    )
    cache = pack.cache
    plan = cache.get(key)
    if plan is None:
        if named and not _given_names(event):  # only junk where the names go (":443"): the address decides
            key = (*key[:4], d.ip, *key[5:])
            plan = cache.get(key)
        if plan is None:
            plan = _plan(event, pack, direction)
            if plan.cacheable:
                if len(cache) > _CACHE_LIMIT:
                    cache.clear()
                cache[key] = plan
    # Hits beyond the plan's: path checks, buckets, observations, the body. Most events add none
    # or a cached tuple, so the decision comes from the plan's own small cache.
    extra: list[Hit] | tuple[Hit, ...] = _NO_HITS
    judge_payload = plan.judge_payload
    if plan.path_checks or plan.deferred:
        req = plan.req
        assert req is not None and http is not None  # only http events get path checks or deferred names
        path = normalise_path(http.path)
        for ep, host in plan.path_checks:
            denied = check_path(ep, host, req.method, path)
            if denied:
                extra = [*extra, *denied]
        for name, storage in plan.deferred:
            bucket = bucket_of(storage, path)
            verdict = plan.by_bucket.get((name, bucket))
            if verdict is None:
                with_path = Request(req.port, req.scope, req.plaintext, req.method, path, req.transport)
                verdict = judge_name(pack, name, with_path)
                if len(plan.by_bucket) < _PER_PLAN_LIMIT:
                    plan.by_bucket[(name, bucket)] = verdict
            name_hits, ep = verdict
            extra = [*extra, *name_hits]
            if ep is None or ep.judges_payload:
                judge_payload = True
        if plan.note and not plan.hits and extra:
            extra.append((extra[0][0], plan.note))
    if event.observations:
        observations = pack.observations
        extra = list(extra)
        for obs in event.observations:
            rule_id = observations.get(obs)
            if rule_id is None:
                extra.append(("policy.unknown-observation", f"observation '{obs}' is not in the pack"))
            else:
                extra.append((rule_id, f"sensor observed {obs}"))
    payload = event.payload
    if judge_payload and (payload is not None or http is not None):
        if payload is not None and payload.inspected and not payload.findings:
            # Bodies without detector findings are judged by their labels alone: cached.
            pkey = ("payload", tuple(payload.labels), tuple(payload.metadata_kinds), payload.size > 0, payload.route)
            body = cache.get(pkey)
            if body is None:
                body = cache[pkey] = tuple(_payload_hits(event, pack))
        else:
            body = _payload_hits(event, pack)
        if body:
            extra = body if not extra else [*extra, *body]
    extra_key = extra if type(extra) is tuple else tuple(extra)
    decision = plan.decisions.get(extra_key)
    if decision is None:
        decision = _decide(pack, (*plan.hits, *extra_key))
        if len(plan.decisions) < _PER_PLAN_LIMIT:
            plan.decisions[extra_key] = decision
    return decision


def judge(events: Iterable[EgressEvent], pack: Pack) -> Iterator[EgressEvent]:
    """The same events, each with `.decision` set (None for sensor records)."""
    for event in events:
        event.decision = evaluate(event, pack)
        yield event


def fronting_note(d: Destination) -> str | None:
    """`SNI a, Host b` when the TLS server name or the Host header names another host than
    the one the client asked for: domain fronting hides the real destination behind an
    allowed name, so wherever a destination is named, both must show."""
    target = d.host or d.sni or d.http_host
    if not target:
        return None
    first = normalise_host(split_host_port(target)[0])
    named = [(what, normalise_host(split_host_port(raw)[0])) for what, raw in (("SNI", d.sni), ("Host", d.http_host)) if raw]
    named = [(what, name) for what, name in named if name]
    if all(name == first for _, name in named):
        return None
    return ", ".join(f"{what} {name}" for what, name in named)


def destination_label(event: EgressEvent) -> str:
    """How a finding names where traffic went: host:port, plus the bucket for object
    storage, plus the SNI and Host header when they disagree (`fronting_note`)."""
    d = event.destination
    if event.flow is not None and event.flow.direction == "inbound":
        return f"inbound from {event.source.ip or 'unknown'} to {d.ip or d.host or 'cluster'}:{d.port or '?'}"
    if event.kind == "dns" and event.dns is not None:
        if "dns-tunnel" in event.observations:  # every query a fresh name: one tunnel is one finding, by parent domain
            from auditor.probe.dns import parent_domain  # noqa: PLC0415 - only for tunnel records

            return f"dns *.{parent_domain(normalise_host(event.dns.qname))}"
        return f"dns {normalise_host(event.dns.qname)}"
    raw = d.host or d.sni or d.http_host or d.ip
    if not raw:
        return "unknown destination"
    host = normalise_host(split_host_port(raw)[0])
    label = f"{host}:{d.port}" if d.port is not None else host
    if event.http is not None:
        info = storage_host(host)
        if info is not None:
            bucket = bucket_of(info, normalise_path(event.http.path))
            if bucket and bucket != info.host_bucket:
                label += f"/{bucket}"
    note = fronting_note(d)
    return f"{label} ({note})" if note else label


def _source_label(event: EgressEvent) -> str | None:
    s = event.source
    if s.pod:
        return f"{s.namespace}/{s.pod}" if s.namespace else s.pod
    return s.node or s.ip


@dataclass
class _Group:
    """Events under one rule and destination, while they are being counted."""

    rule: Rule
    first: datetime
    last: datetime
    count: int = 0
    likelihood: int = 0
    ids: list[str] = field(default_factory=list)
    excerpts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, event: EgressEvent, labels: set[str]) -> None:
        self.count += 1
        self.first = min(self.first, event.time)
        self.last = max(self.last, event.time)
        if len(self.ids) < MAX_EVENT_IDS:
            self.ids.append(event.id)
        source = _source_label(event)
        if source and source not in self.sources and len(self.sources) < MAX_SOURCES:
            self.sources.append(source)
        if event.payload is None:
            return
        for f in event.payload.findings:
            if f.label in labels:
                self.likelihood = max(self.likelihood, Likelihood[f.likelihood].value)
                text = f"{f.field_path}: {f.excerpt}" if f.field_path and f.excerpt else f.excerpt
                if text and text not in self.excerpts and len(self.excerpts) < MAX_EXCERPTS:
                    self.excerpts.append(text)

    def finding(self, destination: str) -> Finding:
        rule = self.rule
        default = Likelihood.VERY_LIKELY if rule.action == "violation" else Likelihood.POSSIBLE
        likelihood = self.likelihood or (Likelihood[rule.likelihood] if rule.likelihood else default)
        return Finding(
            rule_id=rule.id,
            action=rule.action,
            severity=rule.severity,
            likelihood=Likelihood(likelihood).name,
            message=rule.message,
            remediation=rule.remediation,
            controls=list(rule.controls),
            destination=destination,
            first_seen=self.first,
            last_seen=self.last,
            count=self.count,
            event_ids=self.ids,
            excerpts=self.excerpts,
            sources=self.sources,
        )


def group_findings(events: Iterable[EgressEvent], pack: Pack) -> list[Finding]:
    """Findings for everything not allowed, one per rule and destination, worst first.

    An event that fired several rules of its decision's action (training data sent
    around the proxy) appears under each of them, so every broken promise is its own
    finding; an unverified side note on a violation is not a finding of its own.
    """
    groups: dict[tuple[str, str], _Group] = {}
    labels_of: dict[str, set[str]] = {}
    for label, rid in pack.labels.items():
        labels_of.setdefault(rid, set()).add(label)
    for event in events:
        decision = event.decision
        if decision is None or decision.action == "allowed":
            continue
        dest = destination_label(event)
        for rule_id in decision.rule_ids or [decision.rule_id]:
            rule = pack.rules.get(rule_id)
            if rule is None and rule_id == decision.rule_id:
                rule = _foreign_rule(decision, pack)  # judged by another pack: kept, never dropped
            if rule is None or rule.action != decision.action:
                continue
            group = groups.get((rule_id, dest))
            if group is None:
                group = groups[(rule_id, dest)] = _Group(rule=rule, first=event.time, last=event.time)
            group.add(event, labels_of.get(rule_id, set()))
    findings = [group.finding(dest) for (_, dest), group in groups.items()]
    findings.sort(key=lambda f: (-ACTION_RANK[f.action], -SEVERITY_ORDER[f.severity], f.rule_id, f.destination))
    return findings


def _foreign_rule(decision: Decision, pack: Pack) -> Rule:
    """A stand-in for a rule this pack does not have (the event was judged by another pack)."""
    return Rule(
        id=decision.rule_id,
        action=decision.action,
        severity=decision.severity,
        message=f"Rule {decision.rule_id} is not in pack {pack.id}: " + "; ".join(decision.reasons[:3]),
        contract="",
        contract_text="",
        contract_section="",
        remediation=f"Re-judge these events with the pack that defines {decision.rule_id}, or with this pack.",
        controls=[],
    )
