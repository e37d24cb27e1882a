"""The attestation report as one canonical document, built only from the store.

Events are judged with the rule pack at report time, so the verdict says which
pack (by digest) it applied. Every string that came from traffic is redacted on
the way in; renderers escape it on the way out. The document holds no floats
(shares are numerator/denominator pairs with a percent string), so its canonical
JSON is RFC 8785 and its digest is stable.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from decimal import Decimal
from importlib import metadata
from typing import Any, Literal
from urllib.parse import quote

import msgspec
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from auditor.classify.routes import kind_paths
from auditor.model import PROBE_PREFIX, SEVERITY_ORDER, EgressEvent, Finding, Likelihood, LikelihoodName, Severity
from auditor.probe.coverage import ProxyIndex, ProxyKey, flow_keys, flow_window, is_external_flow, is_proxy_record, proxy_keys, timestamp_us
from auditor.redact import redact_query, redact_text
from auditor.rules import Pack, destination_label, evaluate, group_findings, judge, registry
from auditor.rules.policy import fronting_note
from auditor.rules.spec import ForbiddenClassSpec
from auditor.store.base import ChainHead, Store, VerifyResult, open_store, redact_url
from auditor.store.chain import GENESIS, canonical_json, record_hash
from auditor.store.retention import RETENTION_SENSOR

SCHEMA = "https://boundary-auditor.dev/report/v1"
Status = Literal["PASS", "FAIL", "INCONCLUSIVE"]
LineStatus = Literal["pass", "fail", "unverified", "not-seen"]
EXIT_CODES: dict[str, int] = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 2}
DEFAULT_MIN_COVERAGE = Decimal("0.95")
L7_KINDS = frozenset({"http", "websocket"})
L3_KINDS = frozenset({"flow", "dns", "icmp"})
TRAFFIC_CONNECTION_KINDS = frozenset({"flow", "tcp", "tls"})
MAX_SAMPLES = 5
MAX_EXCERPTS = 3
MAX_EVENT_IDS = 10
MATCH_SLACK_US = 5_000_000
PROXY_NOTE = "to the audit proxy"  # the probe's note on a flow to the audit proxy (auditor.probe.engine)
CONTROL_FRAMEWORKS = {
    "SOC 2": ("CC6.6", "CC6.7", "CC7.2"),
    "ISO/IEC 27001:2022": ("A.8.20", "A.8.21", "A.8.22", "A.8.23"),
    "NIST SP 800-53": ("SC-7", "AC-4"),
}


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Share(_Doc):
    """A ratio without a float: the document's canonical JSON stays exact."""

    numerator: int
    denominator: int
    percent: str

    @classmethod
    def of(cls, numerator: int, denominator: int) -> Share | None:
        if denominator <= 0:
            return None
        return cls(numerator=numerator, denominator=denominator, percent=_percent(Decimal(numerator) / Decimal(denominator)))

    def at_least(self, threshold: Decimal) -> bool:
        return Decimal(self.numerator) >= threshold * Decimal(self.denominator)


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _percent(value: Decimal) -> str:
    return f"{(value * 100).quantize(Decimal('0.1'))}%"


class PackSource(_Doc):
    kind: str
    id: str
    path: str
    digest: str


class Identity(_Doc):
    report_id: str
    tool: str = "boundary-auditor"
    tool_version: str
    generated_at: datetime
    pack_id: str
    pack_version: str
    pack_digest: str
    pack_sources: list[PackSource]
    parameters: dict[str, str | list[str] | None]


class ReportScope(_Doc):
    clusters: list[str]
    namespaces: list[str]
    pods: list[str]
    nodes: list[str]
    window_start: datetime | None
    window_end: datetime | None
    window_requested: bool
    first_event: datetime | None
    last_event: datetime | None
    events: int
    traffic_events: int
    sensors: list[str]


class Verdict(_Doc):
    status: Status
    reason: str
    reasons: list[str]
    exit_code: int


class SensorCoverage(_Doc):
    sensor_id: str
    sensor_class: Literal["proxy", "probe", "other"]
    events: int
    kinds: dict[str, int]
    starts: int
    stops: int
    gaps: int
    dropped: int
    config_digests: list[str]


class CoverageReport(_Doc):
    threshold: str
    threshold_percent: str
    score: Share | None
    meets_threshold: bool
    proxy_available: bool
    probe_available: bool
    sensors: list[SensorCoverage]
    events_by_sensor: dict[str, int]
    score_basis: str  # which measure the score is: a reader must not take one for the other
    external_flows: int  # pod flows the probe saw to addresses outside the cluster, not to the audit proxy
    proxy_flows: int  # pod flows the probe saw to the audit proxy itself (not matched: the proxy's records cover them)
    proxy_matched_flows: int
    proxy_matched_share: Share | None  # None: not measured (no probe or proxy events, or no external pod flow)
    matched_method: str
    unmatched_destinations: dict[str, int]
    http_requests: int
    bodies_seen: int
    bodies_inspected: int
    bodies_skipped: dict[str, int]
    inspected_share: Share | None
    judged_events: int
    unverified_events: int
    tls_not_opened: int
    drops: int
    gaps: int
    statements: list[str]


class EndpointLine(_Doc):
    id: str
    hosts: list[str]
    ports: list[int]
    scopes: list[str]
    contract: str
    status: LineStatus
    reached: bool
    sources: list[str]
    events: int
    bytes_up: int
    bytes_down: int
    methods: dict[str, int]
    actions: dict[str, int]
    finding_ids: list[str]


class MetadataKindLine(_Doc):
    id: str
    description: str
    contract: str
    status: LineStatus
    count: int
    routes: list[str]
    field_paths: list[str]  # where the schemas of those routes carry this kind (`kind_paths`): the report keeps no bodies


class ForbiddenClassLine(_Doc):
    """Data that must stay home: it fails only where it went somewhere the contract does
    not allow; taken where the contract allows it (the customer's own bucket), it is kept."""

    id: str
    description: str
    contract: str
    labels: list[str]
    status: LineStatus
    count: int  # events that carried it where the contract does not allow (violations)
    unverified: int  # events that carried it where the policy could not decide
    kept: int  # events that carried it where the contract allows (allowed decisions)
    kept_where: list[str]  # a sample of those destinations, each with the rule that allowed it
    statement: str
    finding_ids: list[str]
    event_ids: list[str]  # of the violations and unverified events


class InboundLine(_Doc):
    status: LineStatus
    count: int
    statement: str
    finding_ids: list[str]
    event_ids: list[str]


class Contract(_Doc):
    endpoints: list[EndpointLine]
    metadata_kinds: list[MetadataKindLine]
    forbidden_classes: list[ForbiddenClassLine]
    inbound: InboundLine
    login_registries: list[str] = Field(default_factory=list)  # what get_login answers named: pulls are checked against it
    login_answers_unread: int = 0  # successful get_login answers from which no registry could be read


class FindingEntry(_Doc):
    id: str
    rule_id: str
    action: str
    severity: Severity
    likelihood: LikelihoodName
    message: str
    remediation: str
    contract: str
    controls: list[str]
    destination: str
    first_seen: datetime
    last_seen: datetime
    count: int
    event_ids: list[str]
    excerpts: list[str]
    sources: list[str]
    locations: list[str]
    requests: list[str]


class DestinationRow(_Doc):
    destination: str
    port: int | None
    decision: str
    actions: dict[str, int]
    events: int
    bytes_up: int
    bytes_down: int
    sources: list[str]
    rule_ids: list[str]


class TimelineBucket(_Doc):
    start: datetime
    allowed: int
    violation: int
    unverified: int


class Timeline(_Doc):
    interval_seconds: int
    buckets: list[TimelineBucket]


class ChainLine(_Doc):
    sensor_id: str
    count: int
    head_seq: int
    head_hash: str


class Integrity(_Doc):
    chains_ok: bool
    records: int
    chains: list[ChainLine]
    problems: list[str]
    signing_key_id: str | None


class ReportDoc(_Doc):
    schema_: str = Field(default=SCHEMA, alias="schema")
    identity: Identity
    scope: ReportScope
    verdict: Verdict
    coverage: CoverageReport
    contract: Contract
    findings: list[FindingEntry]
    destinations: list[DestinationRow]
    timeline: Timeline
    integrity: Integrity
    control_frameworks: dict[str, list[str]]
    limitations: list[str]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json_doc(self) -> dict[str, Any]:
        """`model_dump(mode="json", by_alias=True)`, through pydantic's JSON writer and orjson (3x faster)."""
        return orjson.loads(self.model_dump_json(by_alias=True))  # type: ignore[no-any-return]

    def canonical(self) -> bytes:
        return canonical_json(self.to_json_doc())


# --- building ----------------------------------------------------------------------------------


@dataclass
class _EndpointAcc:
    events: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    sources: set[str] = field(default_factory=set)
    methods: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)


@dataclass
class _KindAcc:
    count: int = 0
    routes: set[str] = field(default_factory=set)


@dataclass
class _DestAcc:
    actions: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    bytes_down: int = 0
    sources: set[str] = field(default_factory=set)
    rule_ids: set[str] = field(default_factory=set)


@dataclass
class _SensorAcc:
    events: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    starts: int = 0
    stops: int = 0
    gaps: int = 0
    dropped: int = 0
    config_digests: set[str] = field(default_factory=set)


FLAGGED_BATCH = 20_000
SAMPLES_PER_FINDING = 3
MAX_FINDING_EVENT_IDS = 100


class _FindingGroups:
    """The policy's `group_findings` over bounded batches of non-allowed events,
    merged by rule and destination: memory grows with findings, not with events,
    and a few sample events per finding are kept for locations and requests."""

    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        self.buffer: list[EgressEvent] = []
        self.groups: dict[tuple[str, str], Finding] = {}
        self.samples: dict[str, EgressEvent] = {}

    def add(self, event: EgressEvent) -> None:
        self.buffer.append(event)
        if len(self.buffer) >= FLAGGED_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        batch = {e.id: e for e in self.buffer}
        for f in group_findings(self.buffer, self.pack):
            key = (f.rule_id, f.destination)
            old = self.groups.get(key)
            if old is None:
                self.groups[key] = merged = f
            else:
                merged = old
                merged.count += f.count
                merged.first_seen = min(merged.first_seen, f.first_seen)
                merged.last_seen = max(merged.last_seen, f.last_seen)
                merged.event_ids = (merged.event_ids + f.event_ids)[:MAX_FINDING_EVENT_IDS]
                merged.excerpts = list(dict.fromkeys(merged.excerpts + f.excerpts))[:5]
                merged.sources = list(dict.fromkeys(merged.sources + f.sources))[:20]
                if Likelihood[f.likelihood] > Likelihood[merged.likelihood]:
                    merged.likelihood = f.likelihood
            for eid in merged.event_ids[:SAMPLES_PER_FINDING]:
                if eid in batch:
                    self.samples[eid] = batch[eid]
        self.buffer = []

    def finish(self) -> list[Finding]:
        self.flush()
        return list(self.groups.values())


@dataclass
class _Acc:
    """Everything one pass over the events collects; only non-allowed events are kept whole."""

    sensors: defaultdict[str, _SensorAcc] = field(default_factory=lambda: defaultdict(_SensorAcc))
    namespaces: set[str] = field(default_factory=set)
    pods: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None
    events: int = 0
    traffic: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    http_requests: int = 0
    bodies_seen: int = 0
    bodies_inspected: int = 0
    bodies_skipped: Counter[str] = field(default_factory=Counter)
    tls_not_opened: int = 0
    endpoints: defaultdict[str, _EndpointAcc] = field(default_factory=lambda: defaultdict(_EndpointAcc))
    kinds: defaultdict[str, _KindAcc] = field(default_factory=lambda: defaultdict(_KindAcc))
    forbidden: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # ids of events not allowed
    forbidden_counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (class, action) -> events
    kept_where: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    inbound_ids: list[str] = field(default_factory=list)
    inbound: int = 0
    destinations: defaultdict[tuple[str, int | None], _DestAcc] = field(default_factory=lambda: defaultdict(_DestAcc))
    times: array = field(default_factory=lambda: array("q"))
    codes: array = field(default_factory=lambda: array("b"))
    flagged: _FindingGroups | None = None
    proxy_index: ProxyIndex = field(default_factory=ProxyIndex)
    pending_flows: deque[tuple[int, _Profile, int, int]] = field(default_factory=deque)  # (deadline, profile, flow_window)
    external_flows: int = 0
    proxy_flows: int = 0
    matched_flows: int = 0
    unmatched: Counter[str] = field(default_factory=Counter)
    endpoint_of: dict[tuple[str | None, str | None, str | None], str | None] = field(default_factory=dict)
    internal: dict[tuple[str | None, str], bool] = field(default_factory=dict)
    who: dict[tuple[str | None, str | None, str | None, str | None], str] = field(default_factory=dict)
    login_registries: set[str] = field(default_factory=set)
    login_answers_unread: int = 0


_ACTION_CODE = {"allowed": 0, "violation": 1, "unverified": 2}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_ONE_US = timedelta(microseconds=1)


def _us(value: datetime) -> int:
    """Exact integer microseconds since the epoch."""
    return (value - _EPOCH) // _ONE_US


def tool_version() -> str:
    try:
        return metadata.version("boundary-auditor")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _clean(text: str | None, limit: int = 300) -> str:
    """Traffic text as the report may show it: secrets redacted, control characters
    made visible, bounded in length. Escaping is the renderer's job."""
    if not text:
        return ""
    return _clean_cached(text, limit)


@lru_cache(maxsize=131_072)
def _clean_cached(text: str, limit: int) -> str:
    """Traffic repeats the same names endlessly: clean each once."""
    cleaned = redact_text(text)
    if not cleaned.isprintable():
        cleaned = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in cleaned)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def destination_name(event: EgressEvent) -> str:
    """The destination as the destinations table names it: the client's target, and the
    SNI and Host header beside it when they disagree (as findings name it)."""
    d = event.destination
    name = d.host or d.sni or d.http_host or d.ip or "(unknown)"
    note = fronting_note(d)
    return _clean(f"{name} ({note})" if note else name, 255)


def _who(event: EgressEvent) -> str:
    s = event.source
    return _who_of(s.namespace, s.pod, s.node, s.ip)


def _who_of(namespace: str | None, pod: str | None, node: str | None, ip: str | None) -> str:
    if pod:
        return _clean(f"{namespace}/{pod}" if namespace else pod, 200)
    if node:
        return _clean(f"node/{node}", 200)
    return _clean(ip or "(unattributed)", 100)


def _location(event: EgressEvent) -> str | None:
    """`k8s://namespace/workload`, each part percent-encoded so it is always a valid URI."""
    s = event.source
    name = s.workload or s.pod
    if name:
        return f"k8s://{quote(_clean(s.namespace or 'default', 100), safe='')}/{quote(_clean(name, 150), safe='')}"
    if s.node:
        return f"k8s://node/{quote(_clean(s.node, 150), safe='')}"
    return None


def _bytes(event: EgressEvent) -> tuple[int, int]:
    if event.flow is not None:
        return event.flow.bytes_up, event.flow.bytes_down
    if event.http is not None:
        return (event.http.request_bytes_wire or event.http.request_bytes_decoded or 0,
                event.http.response_bytes_wire or event.http.response_bytes_decoded or 0)
    return 0, 0


def _sensor_class(acc: _SensorAcc, sensor_id: str) -> Literal["proxy", "probe", "other"]:
    """Which kind of eyes a sensor is: content (L7) or packets (L3/L4)."""
    if any(acc.kinds.get(k) for k in L7_KINDS) or sensor_id.startswith(("proxy", "import-har", "import-mitm")):
        return "proxy"
    if any(acc.kinds.get(k) for k in L3_KINDS) or sensor_id.startswith(("probe", "import-pcap", "import-zeek", "import-hubble")):
        return "probe"
    return "other"


class _Matcher:
    """Does a normalised host match one of an endpoint's host patterns ('*.' = one more label)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact = {p.lower().rstrip(".") for p in patterns if not p.startswith("*.")}
        self.suffixes = {p[2:].lower().rstrip(".") for p in patterns if p.startswith("*.")}

    def __call__(self, host: str) -> bool:
        if host in self.exact:
            return True
        head, _, rest = host.partition(".")
        return bool(head) and rest in self.suffixes


@dataclass
class ReportParams:
    """What the report was asked for; recorded in the document as run parameters."""

    store_url: str
    since: datetime | None = None
    until: datetime | None = None
    min_coverage: Decimal = DEFAULT_MIN_COVERAGE
    pack_path: str | None = None
    overlays: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    signing_key_id: str | None = None


PARALLEL_VERIFY_ABOVE = 100_000  # records; below this a second process costs more than it saves


_VERIFY_CHILD = (
    "import sys; from auditor.store.base import open_store; "
    "store = open_store(sys.stdin.readline().rstrip('\\n'), create=False); "
    "sys.stdout.write(store.verify().model_dump_json()); store.close()"
)


class _VerifyJob:
    """`verify` of a large store in a second Python process while this one reads its
    events: the two reads share nothing, and the machine's second core does the hashing.
    The URL goes over stdin (it may hold a password); any failure of the child means
    verifying here instead."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", _VERIFY_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.child.stdin is not None
        self.child.stdin.write(store.url.encode() + b"\n")
        self.child.stdin.close()

    @classmethod
    def start(cls, store: Store) -> _VerifyJob | None:
        url = getattr(store, "url", None)
        if not isinstance(url, str) or not url or "\n" in url or url == ":memory:":
            return None
        if sum(head.count for head in store.chain_heads()) < PARALLEL_VERIFY_ABOVE:  # the checkpoints: no scan
            return None
        try:
            return cls(store)
        except OSError:
            return None

    def result(self) -> VerifyResult:
        assert self.child.stdout is not None
        out = self.child.stdout.read()
        self.child.stdout.close()
        if self.child.wait() == 0:
            try:
                return VerifyResult.model_validate_json(out)
            except ValueError:
                pass
        return self.store.verify()

    def cancel(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        if self.child.stdout is not None:
            self.child.stdout.close()
        self.child.wait()


@dataclass(frozen=True)
class _Judging:
    """What every event is measured against: the pack, matchers for its endpoints, and
    the labels of its forbidden classes (made once per report)."""

    pack: Pack
    endpoints: list[tuple[str, _Matcher]]
    forbidden_labels: dict[str, set[str]]
    any_forbidden: frozenset[str]

    @classmethod
    def of(cls, pack: Pack) -> _Judging:
        forbidden = {fc.id: set(fc.labels) for fc in pack.forbidden_classes}
        return cls(pack, [(ep.id, _Matcher(ep.hosts)) for ep in pack.endpoints], forbidden, frozenset(label for labels in forbidden.values() for label in labels))


def _reference_pass(
    store: Store,
    params: ReportParams,
    judging: _Judging,
) -> tuple[_Acc, str | None]:
    """Every event validated, judged and observed on its own: the definition the fast
    pass must agree with, and the pass for stores whose chains do not verify."""
    acc = _Acc(flagged=_FindingGroups(judging.pack))
    read_error: str | None = None
    try:
        for event in judge(store.events(params.since, params.until), judging.pack):
            _observe(acc, event, judging)
    except (ValueError, sqlite3.DatabaseError) as exc:  # pydantic's ValidationError is a ValueError
        read_error = f"the store could not be read past event {acc.events}: {_clean(str(exc).splitlines()[0], 200)}"
    _settle(acc, None)
    return acc, read_error


def build_report(store: Store, pack: Pack, params: ReportParams, *, fast: bool = True) -> ReportDoc:
    """Read the window from the store, judge it with `pack`, and say what it shows.
    `fast=False` builds it with the reference pass only (the tests compare the two)."""
    collecting = gc.isenabled()
    gc.disable()  # a report allocates millions of objects that live until it is built and form no cycles
    try:
        return _build_report(store, pack, params, fast=fast)
    finally:
        if collecting:
            gc.enable()


def _build_report(store: Store, pack: Pack, params: ReportParams, *, fast: bool) -> ReportDoc:
    checks = fast and _checks_chains(store, params)
    job = _VerifyJob.start(store) if fast and not checks else None
    verified: VerifyResult | None = None if job is not None or checks else store.verify()
    judging = _Judging.of(pack)
    acc: _Acc | None = None
    read_error: str | None = None
    try:
        if fast and (verified is None or verified.ok):
            try:
                acc, checked = _fast_pass(store, params, judging, checks=checks)
                if checks:
                    verified = checked
            except (_Untrusted, sqlite3.DatabaseError):
                acc = None
        if job is not None:
            verified = job.result()
    except BaseException:
        if job is not None:
            job.cancel()
        raise
    if verified is None:  # the chains read with the events did not all verify (or were not read): the full account
        verified = store.verify()
    if acc is None or not verified.ok:
        acc, read_error = _reference_pass(store, params, judging)

    assert acc.flagged is not None
    findings = acc.flagged.finish()
    entries = [_finding_entry(f, pack, acc.flagged.samples) for f in findings]
    entries.sort(key=lambda f: (-SEVERITY_ORDER[f.severity], f.rule_id, f.destination, f.first_seen))
    event_to_finding: dict[str, str] = {eid: f.id for f in entries for eid in f.event_ids}

    sensors = _sensors(acc)
    coverage = _coverage(acc, sensors, params.min_coverage, pack)
    contract = _contract(acc, pack, entries, event_to_finding, coverage)
    integrity = Integrity(
        chains_ok=verified.ok and read_error is None,
        records=verified.records,
        chains=[ChainLine(**h.model_dump()) for h in verified.chains],
        problems=[p.line() for p in verified.problems] + ([read_error] if read_error else []),
        signing_key_id=params.signing_key_id,
    )
    window_start = params.since or acc.first
    window_end = params.until or acc.last
    verdict = _verdict(acc, entries, coverage, integrity, store_empty=not verified.records and store.count() == 0)
    return ReportDoc(
        identity=Identity(
            report_id=uuid.uuid4().hex,
            tool_version=tool_version(),
            generated_at=datetime.now(UTC).replace(microsecond=0),
            pack_id=pack.id,
            pack_version=pack.info.version,
            pack_digest=pack.digest,
            pack_sources=[PackSource(kind=s.kind, id=s.id, path=s.path, digest=s.sha256) for s in pack.sources],
            parameters={
                "store": redact_url(params.store_url),
                "since": params.since.isoformat() if params.since else None,
                "until": params.until.isoformat() if params.until else None,
                "min_coverage": str(params.min_coverage),
                "pack": params.pack_path,
                "overlays": list(params.overlays),
                "formats": list(params.formats),
            },
        ),
        scope=ReportScope(
            clusters=_clusters(pack),
            namespaces=sorted(acc.namespaces),
            pods=sorted(acc.pods),
            nodes=sorted(acc.nodes),
            window_start=window_start,
            window_end=window_end,
            window_requested=params.since is not None or params.until is not None,
            first_event=acc.first,
            last_event=acc.last,
            events=acc.events,
            traffic_events=acc.traffic,
            sensors=sorted(acc.sensors),
        ),
        verdict=verdict,
        coverage=coverage,
        contract=contract,
        findings=entries,
        destinations=_destinations(acc),
        timeline=_timeline(acc, window_start, window_end),
        integrity=integrity,
        control_frameworks={k: list(v) for k, v in CONTROL_FRAMEWORKS.items()},
        limitations=_limitations(coverage, contract),
    )


def _observe(acc: _Acc, event: EgressEvent, judging: _Judging) -> None:
    """One event into the accumulators: the event is a profile of its own, made, added
    and folded in by the same helpers the fast pass runs once per profile."""
    acc.events += 1
    time = event.time
    if acc.first is None:
        acc.first = time
    acc.last = time
    if event.kind == "sensor":
        _sensor_record(acc, event)
        return
    acc.traffic += 1
    src = event.source
    src_key = (src.namespace, src.pod, src.node, src.ip)
    who = acc.who.get(src_key)
    if who is None:
        who = _new_source(acc, src_key)
    p = _new_profile(acc, event, judging)
    if p.code and acc.flagged is not None:
        acc.flagged.add(event)
    p.up, p.down = _bytes(event)
    flow = event.flow
    first_seen, last_seen = (flow.first_seen, flow.last_seen) if flow is not None else (None, None)
    _add_event(acc, p, who, event.id, _us(time), time, first_seen, last_seen)
    _fold(acc, p, event.sensor_id, event.kind)


def _sensor_record(acc: _Acc, event: EgressEvent) -> None:
    """A sensor's own lifecycle record: counted, and its starts, stops, gaps and drops."""
    sensor = acc.sensors[event.sensor_id]
    sensor.events += 1
    sensor.kinds[event.kind] += 1
    info = event.sensor
    if info is not None:
        if info.lifecycle == "start":
            sensor.starts += 1
        elif info.lifecycle == "stop":
            sensor.stops += 1
        elif info.lifecycle == "gap":
            sensor.gaps += 1
        sensor.dropped += info.dropped
        if info.config_digest:
            sensor.config_digests.add(info.config_digest)


def _new_source(acc: _Acc, src_key: tuple[str | None, str | None, str | None, str | None]) -> str:
    """A source not in the memo: how it is named, and the scope it adds."""
    namespace, pod, node, ip = src_key
    who = _who_of(namespace, pod, node, ip)
    if len(acc.who) < 100_000:
        acc.who[src_key] = who
    if namespace:
        acc.namespaces.add(_clean(namespace, 100))
    if pod:
        acc.pods.add(who)
    if node:
        acc.nodes.add(_clean(node, 100))
    return who


def _settle(acc: _Acc, now: int | None) -> None:
    """Match pod flows to proxy records once every proxy record that could match has
    been read (events arrive in time order), so only a few seconds of flows are held."""
    pending = acc.pending_flows
    index = acc.proxy_index
    while pending and (now is None or pending[0][0] < now):
        _, p, lo, hi = pending.popleft()
        acc.external_flows += 1
        if not p.bypass and index.seen(p.match_keys, lo, hi):
            acc.matched_flows += 1
        else:
            acc.unmatched[p.unmatched] += 1


def _internal(acc: _Acc, pack: Pack, ip: str | None, host: str) -> bool:
    key = (ip, host)
    known = acc.internal.get(key)
    if known is None:
        known = any(value and pack.is_internal(value) for value in key)
        if len(acc.internal) < 200_000:
            acc.internal[key] = known
    return known


# --- the fast pass ---------------------------------------------------------------------------
#
# `_observe` on validated models, one event at a time in time order, is the reference.
# The fast pass computes the same accumulators from the store's bytes, in two phases:
#
# 1. Read the rows in the table's own key order (a scan, about three times faster than
#    the time index's one lookup per row); a large table is split into interleaved key
#    ranges (a large window: into its two halves in time) between this process and a
#    forked child. Each body is decoded once by msgspec into the fields some step
#    reads; the per-event work is done once per *profile*: events
#    whose facts agree in everything but their id, time, source, byte counts and flow
#    times (in a store of a million events, about ten thousand profiles). Each profile
#    is computed from one of its events, validated and judged, by the helpers `_observe`
#    uses. Of each event a few numbers are kept (time, order key, profile, source, bytes).
#    When the whole of a SQLite store is read, every record's chain link is checked on
#    the way (`_ChainCheck`), so the table is read once rather than once more by `verify`.
# 2. Sort those numbers into the reference order (time, sensor, seq) and do with numpy
#    what `_add_event` and `_settle` do one event at a time: counts and sums per profile,
#    the first ids and sources in time order, the samples profiles offer in the order
#    their first events come, and the match of every pod flow against the proxy records
#    read before the reference pass would decide it.
#
# The bytes are trusted only when the chains verify; otherwise, or on anything
# unexpected, the report is built by the reference pass. On the benchmark store (1M
# events, 10k findings) the whole report takes about 16 CPU-seconds, two thirds of the
# streaming single pass and separate `verify` it replaces, spread over two processes;
# tests/report/test_fast_pass.py holds it to the reference document byte for byte, on
# ordinary, tied, shuffled, retained and tampered stores.


class _Untrusted(Exception):
    """Something in the stored bytes only the validating pass may judge."""


@dataclass(slots=True)
class _Profile:
    """What each event with these facts adds; counts and sums are folded in at the end."""

    action: str
    code: int
    bytes_mode: int  # 0: none, 1: flow, 2: http
    l7: bool
    body: int  # 0: no body, 1: inspected, 2: skipped
    skip_reason: str
    tls_not_opened: bool
    inbound: bool
    endpoint: _EndpointAcc | None
    endpoint_id: str | None  # the keys of `endpoint` and `dest` in the accumulators
    method: str | None
    dest: _DestAcc | None
    dest_key: tuple[str, int | None] | None
    kinds: tuple[str, ...]
    forbidden: tuple[str, ...]  # classes it carried where it was not allowed: their ids are sampled
    kept: tuple[str, ...]  # classes it carried where the contract allows them
    kept_where: str  # where those went, and by which rule
    proxy_keys: tuple[ProxyKey, ...] | None  # None: not a proxy record
    pending: bool
    to_proxy: bool  # a pod flow the probe saw go to the audit proxy itself
    bypass: bool
    match_keys: tuple[ProxyKey, ...]
    unmatched: str
    rule_id: str | None  # what the destination's sample of rule ids gains from it
    samples: tuple[tuple[str, str], ...]  # (metadata kind, route) it offers
    login_registry: str | None  # the registry a get_login answer named
    login_unread: bool  # an allowed, successful get_login answer that named no registry the proxy could read
    index: int = 0
    n: int = 0
    up: int = 0
    down: int = 0


def _new_profile(acc: _Acc, event: EgressEvent, judging: _Judging) -> _Profile:
    """The profile of an event, its samples taken at once, as the reference pass meets it."""
    p = _profile_of(acc, event, judging)
    _take_samples(acc, p)
    return p


def _take_samples(acc: _Acc, p: _Profile) -> None:
    """What a profile adds to the bounded samples (a destination's rule ids, a metadata
    kind's routes) when its first event is read: which profiles fill
    a sample depends on the order their first events come in."""
    dest = p.dest
    if p.rule_id is not None and dest is not None and len(dest.rule_ids) < 20:
        dest.rule_ids.add(p.rule_id)
    if p.login_registry is not None and len(acc.login_registries) < MAX_SAMPLES:
        acc.login_registries.add(p.login_registry)
    for class_id in p.kept:
        where = acc.kept_where[class_id]
        if len(where) < MAX_SAMPLES:
            where.add(p.kept_where)
    for kind_id, route in p.samples:
        k = acc.kinds[kind_id]
        if len(k.routes) < MAX_SAMPLES:
            k.routes.add(route)


def _profile_of(acc: _Acc, event: EgressEvent, judging: _Judging) -> _Profile:
    """The per-event decisions for an event (the fast pass: any one of its profile), and
    the samples every event of a profile would offer (rule id, routes)."""
    decision = event.decision
    action = decision.action if decision is not None else "unverified"
    kind = event.kind
    payload = event.payload
    body, skip_reason = 0, ""
    if payload is not None and (payload.size or payload.sha256 or payload.inspected or payload.not_inspected_reason):
        body = 1 if payload.inspected else 2
        if not payload.inspected:
            skip_reason = _clean(payload.not_inspected_reason or "not-inspected", 80)
    observations = event.observations
    flow = event.flow
    dest = event.destination
    host = (dest.host or dest.sni or dest.http_host or dest.ip or "").lower().rstrip(".")
    internal = (flow is not None and flow.direction == "internal") or _internal(acc, judging.pack, dest.ip, host)
    inbound = "inbound" in observations or (flow is not None and flow.direction == "inbound")
    endpoint: _EndpointAcc | None = None
    method: str | None = None
    dest_acc: _DestAcc | None = None
    endpoint_id: str | None = None
    dest_key: tuple[str, int | None] | None = None
    if not internal and not inbound and kind != "dns":
        endpoint_id = _endpoint_id(acc, (dest.host, dest.sni, dest.http_host), judging.endpoints)
        if endpoint_id is not None:
            endpoint = acc.endpoints[endpoint_id]
            if event.http is not None:
                method = _clean(event.http.method, 16)
        dest_key = (destination_name(event), dest.port)
        dest_acc = acc.destinations[dest_key]
    forbidden: list[str] = []
    kept: list[str] = []
    samples: tuple[tuple[str, str], ...] = ()
    if payload is not None:
        if payload.route:
            route = _clean(payload.route, 120)
            samples = tuple((kind_id, route) for kind_id in payload.metadata_kinds)
        labels = set(payload.labels)
        labels.update(f.label for f in payload.findings)
        if not labels.isdisjoint(judging.any_forbidden):
            carried = [class_id for class_id, wanted in judging.forbidden_labels.items() if not labels.isdisjoint(wanted)]
            if action == "allowed":
                kept = carried
            else:
                forbidden = carried
    return _Profile(
        action=action, code=_ACTION_CODE[action],
        bytes_mode=1 if flow is not None else 2 if event.http is not None else 0,
        l7=kind in L7_KINDS, body=body, skip_reason=skip_reason,
        tls_not_opened="tls-not-opened" in observations or (payload is not None and payload.not_inspected_reason == "tls-not-opened"),
        inbound=inbound, endpoint=endpoint, endpoint_id=endpoint_id, method=method, dest=dest_acc, dest_key=dest_key,
        kinds=tuple(payload.metadata_kinds) if payload is not None else (), forbidden=tuple(forbidden), kept=tuple(kept),
        kept_where=_clean(f"{destination_label(event)} (rule {decision.rule_id})", 300) if kept and decision is not None else "",
        proxy_keys=proxy_keys(event) if is_proxy_record(event) else None,
        pending=kind == "flow" and event.source.scope != "node" and not internal and is_external_flow(event),
        to_proxy=kind == "flow" and event.source.scope != "node" and event.sensor_id.startswith(PROBE_PREFIX) and PROXY_NOTE in event.notes,
        bypass="bypass" in observations, match_keys=flow_keys(event),
        unmatched=_clean(f"{dest.host or dest.sni or dest.ip}:{dest.port}", 200),
        rule_id=decision.rule_id if decision is not None and dest_acc is not None else None,
        samples=samples,
        login_registry=_clean(event.http.login_registry, 253) if action == "allowed" and event.http is not None and event.http.login_registry else None,
        login_unread=action == "allowed" and event.http is not None and not event.http.login_registry and event.http.status == 200
        and registry.is_get_login(event.http.method, event.http.path),
    )


def _endpoint_id(
    acc: _Acc, names: tuple[str | None, str | None, str | None], endpoint_matchers: list[tuple[str, _Matcher]]
) -> str | None:
    """The contract endpoint a destination's (host, sni, http_host) names, memoised."""
    if names in acc.endpoint_of:
        return acc.endpoint_of[names]
    normal = {n.lower().rstrip(".") for n in names if n}
    endpoint_id = next((eid for eid, matches in endpoint_matchers if any(matches(n) for n in normal)), None)
    if len(acc.endpoint_of) < 100_000:
        acc.endpoint_of[names] = endpoint_id
    return endpoint_id


def _add_event(
    acc: _Acc,
    p: _Profile,
    who: str,
    event_id: str,
    now: int,
    time: datetime,
    first_seen: datetime | None,
    last_seen: datetime | None,
) -> None:
    """What one event of profile `p` adds on its own: its time and action code, the
    bounded samples of sources and ids, its proxy record, and its flow to match.
    `first_seen`/`last_seen` are its flow's, read only when `p.pending`."""
    p.n += 1
    acc.times.append(now)
    acc.codes.append(p.code)
    if p.inbound and len(acc.inbound_ids) < MAX_EVENT_IDS:
        acc.inbound_ids.append(event_id)
    ep = p.endpoint
    if ep is not None and len(ep.sources) < 200:
        ep.sources.add(who)
    dest = p.dest
    if dest is not None and len(dest.sources) < 20:
        dest.sources.add(who)
    for class_id in p.forbidden:
        ids = acc.forbidden[class_id]
        if len(ids) < MAX_EVENT_IDS:
            ids.append(event_id)
    if p.proxy_keys is not None:
        acc.proxy_index.record(event_id, timestamp_us(time), p.proxy_keys)
    pending = acc.pending_flows
    if p.pending:
        end = last_seen or first_seen
        lo, hi = flow_window(first_seen, last_seen, MATCH_SLACK_US) if first_seen is not None else (0, 0)
        pending.append(((_us(end) if end else now) + MATCH_SLACK_US, p, lo, hi))
    if pending and pending[0][0] < now:
        _settle(acc, now)


def _fold(acc: _Acc, p: _Profile, sensor_id: str, kind: str) -> None:
    """The counts and sums of a profile's `p.n` events into the accumulators."""
    n = p.n
    sensor = acc.sensors[sensor_id]
    sensor.events += n
    sensor.kinds[kind] += n
    acc.actions[p.action] += n
    if p.l7:
        acc.http_requests += n
    if p.body:
        acc.bodies_seen += n
        if p.body == 1:
            acc.bodies_inspected += n
        else:
            acc.bodies_skipped[p.skip_reason] += n
    if p.tls_not_opened:
        acc.tls_not_opened += n
    if p.inbound:
        acc.inbound += n
    if p.to_proxy:
        acc.proxy_flows += n
    ep = p.endpoint
    if ep is not None:
        ep.events += n
        ep.bytes_up += p.up
        ep.bytes_down += p.down
        if p.method is not None:
            ep.methods[p.method] += n
        ep.actions[p.action] += n
    if p.dest is not None:
        p.dest.actions[p.action] += n
        p.dest.bytes_up += p.up
        p.dest.bytes_down += p.down
    for kind_id in p.kinds:
        acc.kinds[kind_id].count += n
    for class_id in p.forbidden:
        acc.forbidden_counts[class_id, p.action] += n
    for class_id in p.kept:
        acc.forbidden_counts[class_id, "allowed"] += n
    if p.login_unread:
        acc.login_answers_unread += n


class _RawSource(msgspec.Struct, forbid_unknown_fields=True):
    ip: str | None
    namespace: str | None
    node: str | None
    pod: str | None
    port: msgspec.Raw
    scope: str
    workload: msgspec.Raw


class _RawHttp(msgspec.Struct, forbid_unknown_fields=True):
    alpn: str | None
    content_encoding: str | None
    content_type: str | None
    duration_us: msgspec.Raw
    method: str
    path: str
    query: msgspec.Raw
    request_bytes_decoded: int | None
    request_bytes_wire: int | None
    response_bytes_decoded: int | None
    response_bytes_wire: int | None
    scheme: str | None
    status: msgspec.Raw
    login_registry: str | None = None  # recorded since red flag 10; older stores lack it


class _RawFlow(msgspec.Struct, forbid_unknown_fields=True):
    bytes_down: int
    bytes_up: int
    cname_chain: tuple[str, ...]
    direction: str
    first_seen: datetime | None
    last_seen: datetime | None
    packets_down: msgspec.Raw
    packets_up: msgspec.Raw
    resolved_name: str | None
    tcp_state: str | None


class _RawPayload(msgspec.Struct, forbid_unknown_fields=True):
    findings: msgspec.Raw
    inspected: bool
    labels: tuple[str, ...]
    metadata_kinds: tuple[str, ...]
    not_inspected_reason: str | None
    route: str | None
    sha256: str | None
    size: int


class _RawEvent(msgspec.Struct, forbid_unknown_fields=True):
    """A stored event as the fast pass reads it: every field named (an unknown one sends
    the store to the reference pass), the ones the profile key takes whole kept as the
    raw JSON they were stored as, and nothing decoded that no step reads."""

    decision: msgspec.Raw
    destination: msgspec.Raw
    dns: msgspec.Raw
    flow: _RawFlow | None
    http: _RawHttp | None
    id: str
    kind: str
    notes: tuple[str, ...]
    observations: tuple[str, ...]
    payload: _RawPayload | None
    sensor: msgspec.Raw
    sensor_id: str
    source: _RawSource
    time: datetime


_EVENT_DECODER = msgspec.json.Decoder(_RawEvent)


def _profile_key(e: _RawEvent) -> tuple[Any, ...]:
    """Every fact the policy or `_observe` reads from an event, except those the fast pass
    reads per event (id, time, source, byte counts, flow times). The source address is in
    it where the policy reads it: inbound flows and sources no sensor attributed. Parts
    kept as raw JSON compare as bytes: equal bytes are equal facts."""
    src = e.source
    scope = src.scope
    h = e.http
    f = e.flow
    p = e.payload
    direction = f.direction if f is not None else None
    return (
        e.sensor_id, e.kind, bytes(e.destination), scope,
        src.ip if direction == "inbound" or (scope != "pod" and scope != "node") else None,
        None if h is None else (
            h.method, h.scheme, h.path, h.content_type, h.content_encoding, h.alpn,
            p is None and bool(h.request_bytes_decoded or h.request_bytes_wire), h.login_registry,
            bytes(h.status) if h.path == registry.GET_LOGIN_PATH else None,  # whether an answer that named nothing was one
        ),
        None if f is None else (direction, f.tcp_state, f.resolved_name, f.cname_chain, f.first_seen is None),
        bytes(e.dns),
        None if p is None else (
            p.inspected, p.size > 0, bool(p.sha256), p.labels, p.metadata_kinds,
            p.not_inspected_reason, p.route, bytes(p.findings),
        ),
        e.observations, e.notes,
    )


def _stored_rows(store: Store, since: datetime | None, until: datetime | None) -> Iterable[tuple[int, str, int, bytes | str]]:
    """(time_us, sensor_id, seq, body) of the window's events in any order. A store view
    without `event_rows` (one that rewrites events as it reads them) gives its bodies in
    time order, numbered in that order."""
    reader = getattr(store, "event_rows", None)
    if reader is not None:
        return reader(since, until)  # type: ignore[no-any-return]
    return ((_us(datetime.fromisoformat(orjson.loads(body)["time"])), "", i, body)
            for i, body in enumerate(store.event_bodies(since, until)))


@dataclass
class _Columns:
    """What phase one of the fast pass keeps of each traffic event, in the order read;
    rows are indices into the first eight columns."""

    time: array = field(default_factory=lambda: array("q"))  # the stored time_us: the reading order
    sensor: array = field(default_factory=lambda: array("q"))  # index into `sensors`
    seq: array = field(default_factory=lambda: array("q"))
    body_time: array = field(default_factory=lambda: array("q"))  # the event's own time, exact µs
    profile: array = field(default_factory=lambda: array("q"))
    who: array = field(default_factory=lambda: array("q"))  # index into `who_names`
    up: array = field(default_factory=lambda: array("q"))
    down: array = field(default_factory=lambda: array("q"))
    sensors: dict[str, int] = field(default_factory=dict)
    who_names: list[str] = field(default_factory=list)
    id_rows: array = field(default_factory=lambda: array("q"))  # events of inbound or forbidden profiles
    ids: list[str] = field(default_factory=list)
    flagged_rows: array = field(default_factory=lambda: array("q"))  # events not allowed
    flagged_bodies: list[bytes | str] = field(default_factory=list)
    flagged_events: dict[int, EgressEvent] = field(default_factory=dict)  # row -> the event, judged, where already made
    proxy_rows: array = field(default_factory=lambda: array("q"))  # proxy records
    proxy_ids: array = field(default_factory=lambda: array("q"))  # `hash` of their ids (same in a forked child)
    flow_rows: array = field(default_factory=lambda: array("q"))  # pod flows to match
    flow_first: array = field(default_factory=lambda: array("q"))  # first_seen, exact µs (0 when none)
    flow_last: array = field(default_factory=lambda: array("q"))  # last_seen, or first_seen, or the event's time
    flow_has_first: array = field(default_factory=lambda: array("b"))
    lifecycle_times: array = field(default_factory=lambda: array("q"))  # sensor records: stored time_us
    lifecycle_body_times: array = field(default_factory=lambda: array("q"))
    lifecycle_bodies: list[bytes | str] = field(default_factory=list)


@dataclass
class _Part:
    """What a forked reader of part of the table hands back: its columns, its profiles
    (detached from its accumulators, by key) and the scope its sources added."""

    cols: _Columns
    profiles: list[tuple[tuple[Any, ...], _Profile]]
    namespaces: set[str]
    pods: set[str]
    nodes: set[str]
    check: _ChainCheck | None


class _Reader:
    """Phase one: each row decoded once; a new profile validated, judged and made (its
    samples are taken later, in time order)."""

    def __init__(
        self,
        acc: _Acc,
        judging: _Judging,
        check: _ChainCheck | None = None,
    ) -> None:
        self.acc = acc
        self.check = check
        self.judge_flagged = False  # make and judge the events not allowed as they are read (not in a child: they do not travel well)
        self.judging = judging
        self.pack = judging.pack
        self.cols = _Columns()
        self.profiles: dict[tuple[Any, ...], _Profile] = {}
        self.whos: dict[tuple[str | None, str | None, str | None, str | None], int] = {}
        self.name_ids: dict[str, int] = {}

    def read(self, rows: Iterable[tuple[int, str, int, bytes | str]]) -> None:
        acc, pack, cols, profiles, whos, name_ids = self.acc, self.pack, self.cols, self.profiles, self.whos, self.name_ids
        who_names, sensors = cols.who_names, cols.sensors
        times, sensor_col, seq_col, body_times = cols.time, cols.sensor, cols.seq, cols.body_time
        profile_col, who_col, up_col, down_col = cols.profile, cols.who, cols.up, cols.down
        decode = _EVENT_DECODER.decode
        epoch, one_us = _EPOCH, _ONE_US
        for time_us, sensor_id, seq, body in rows:
            e = decode(body)
            now = (e.time - epoch) // one_us
            if e.kind == "sensor":
                cols.lifecycle_times.append(time_us)
                cols.lifecycle_body_times.append(now)
                cols.lifecycle_bodies.append(body)
                continue
            row = len(times)
            src = e.source
            src_key = (src.namespace, src.pod, src.node, src.ip)
            who = whos.get(src_key)
            if who is None:  # sources are sampled by name, and several sources may share one
                name = _new_source(acc, src_key)
                who = whos[src_key] = name_ids.setdefault(name, len(name_ids))
                if who == len(who_names):
                    who_names.append(name)
            key = _profile_key(e)
            p = profiles.get(key)
            if p is None:
                event = EgressEvent.model_validate_json(body)
                event.decision = evaluate(event, pack)
                p = profiles[key] = _profile_of(acc, event, self.judging)
                p.index = len(profiles) - 1
            rank = sensors.get(sensor_id)
            if rank is None:
                rank = sensors[sensor_id] = len(sensors)
            times.append(time_us)
            sensor_col.append(rank)
            seq_col.append(seq)
            body_times.append(now)
            profile_col.append(p.index)
            who_col.append(who)
            mode = p.bytes_mode
            if mode == 1:
                f = e.flow
                up_col.append(f.bytes_up)  # type: ignore[union-attr]
                down_col.append(f.bytes_down)  # type: ignore[union-attr]
            elif mode == 2:
                h = e.http
                up_col.append(h.request_bytes_wire or h.request_bytes_decoded or 0)  # type: ignore[union-attr]
                down_col.append(h.response_bytes_wire or h.response_bytes_decoded or 0)  # type: ignore[union-attr]
            else:
                up_col.append(0)
                down_col.append(0)
            if p.code:
                cols.flagged_rows.append(row)
                cols.flagged_bodies.append(body)
                if self.judge_flagged:
                    cols.flagged_events[row] = _judged(body, pack, p)
            if p.inbound or p.forbidden:
                cols.id_rows.append(row)
                cols.ids.append(e.id)
            if p.proxy_keys is not None:
                cols.proxy_rows.append(row)
                cols.proxy_ids.append(hash(e.id))
            if p.pending:
                f = e.flow
                first_seen, last_seen = f.first_seen, f.last_seen  # type: ignore[union-attr]
                first = (first_seen - epoch) // one_us if first_seen is not None else 0
                cols.flow_rows.append(row)
                cols.flow_first.append(first)
                cols.flow_last.append((last_seen - epoch) // one_us if last_seen is not None else first if first_seen is not None else now)
                cols.flow_has_first.append(first_seen is not None)

    def part(self) -> _Part:
        """This reader's work, to hand to another process's reader."""
        for p in self.profiles.values():
            p.endpoint = p.dest = None
        acc = self.acc
        return _Part(cols=self.cols, profiles=list(self.profiles.items()), namespaces=acc.namespaces, pods=acc.pods, nodes=acc.nodes,
                     check=self.check)

    def absorb(self, part: _Part) -> None:
        """Another reader's rows after this one's, in this reader's numbering."""
        acc, cols, other = self.acc, self.cols, part.cols
        if self.check is not None:
            if part.check is None:
                raise _Untrusted("a part read without checking its chains")
            self.check.absorb(part.check)
        acc.namespaces |= part.namespaces
        acc.pods |= part.pods
        acc.nodes |= part.nodes
        profile_map = np.zeros(len(part.profiles), dtype=np.int64)
        for i, (key, p) in enumerate(part.profiles):
            mine = self.profiles.get(key)
            if mine is None:
                p.endpoint = acc.endpoints[p.endpoint_id] if p.endpoint_id is not None else None
                p.dest = acc.destinations[p.dest_key] if p.dest_key is not None else None
                p.index = len(self.profiles)
                mine = self.profiles[key] = p
            profile_map[i] = mine.index
        who_map = np.zeros(len(other.who_names), dtype=np.int64)
        for i, name in enumerate(other.who_names):
            who_map[i] = self.name_ids.setdefault(name, len(self.name_ids))
            if who_map[i] == len(cols.who_names):
                cols.who_names.append(name)
        sensor_map = np.zeros(len(other.sensors), dtype=np.int64)
        for name, i in other.sensors.items():
            sensor_map[i] = cols.sensors.setdefault(name, len(cols.sensors))
        offset = len(cols.time)
        for column, mapped in (
            ("time", None), ("sensor", sensor_map), ("seq", None), ("body_time", None), ("profile", profile_map),
            ("who", who_map), ("up", None), ("down", None), ("proxy_ids", None), ("flow_first", None),
            ("flow_last", None), ("flow_has_first", None), ("lifecycle_times", None), ("lifecycle_body_times", None),
        ):
            values = getattr(other, column)
            getattr(cols, column).frombytes(values.tobytes() if mapped is None else mapped[_np(values)].tobytes())
        for column in ("id_rows", "flagged_rows", "proxy_rows", "flow_rows"):
            getattr(cols, column).frombytes((_np(getattr(other, column)) + offset).tobytes())
        for column in ("ids", "flagged_bodies", "lifecycle_bodies"):
            getattr(cols, column).extend(getattr(other, column))


PARALLEL_READ_ABOVE = 200_000  # records; below this a second reader costs more than it saves
CHUNK_ROWS = 65_536

Key = tuple[str, int]
Span = tuple[datetime | None, datetime | None, Key | None, Key | None]  # a window and a key range of `event_rows`


def _spans(store: Store, params: ReportParams, *, large: bool, checks: bool) -> list[Span]:
    """The pieces the fast pass reads the events in. A whole table: its key space,
    (sensor_id, seq), cut into ranges of about `CHUNK_ROWS` records by the chain heads (in
    the store's own order of sensor ids; every row lies in exactly one range, whatever
    the heads say). A large window: its two halves in time, which the time index reads
    without touching rows outside them. Anything else: the window."""
    since, until = params.since, params.until
    if since is None and until is None and (large or checks):
        cuts: list[Key] = []
        for head in store.chain_heads():
            first = head.head_seq - head.count + 1
            cuts.extend((head.sensor_id, seq) for seq in range(first, head.head_seq + 1, CHUNK_ROWS))
        bounds: list[Key | None] = [None, *cuts[1:], None]
        return [(None, None, start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    if large and since is not None and until is not None:
        middle = since + (until - since) / 2
        return [(since, middle, None, None), (middle, until, None, None)]
    return [(since, until, None, None)]


def _rows(store: Store, spans: list[Span], check: _ChainCheck | None) -> Iterable[tuple[int, str, int, bytes | str]]:
    """The event rows of `spans`, through `check` when it checks the chains on the way
    (spans of keys only)."""
    if check is not None:
        return check.events(store.chained_rows([(start, stop) for _, _, start, stop in spans]))  # type: ignore[attr-defined]
    if getattr(store, "event_rows", None) is None:
        [(since, until, _, _)] = spans
        return _stored_rows(store, since, until)
    return (row for since, until, start, stop in spans
            for row in store.event_rows(since, until, start=start, stop=stop))  # type: ignore[attr-defined]


def _checks_chains(store: Store, params: ReportParams) -> bool:
    """Whether the fast pass can check the chains as it reads the events: a SQLite file
    read whole (no window, so every record is read) whose chains have no retained prefix
    (whose start only `verify` knows how to read). Otherwise `verify` runs on its own."""
    url = getattr(store, "url", None)
    if params.since is not None or params.until is not None or getattr(store, "chained_rows", None) is None:
        return False
    if not isinstance(url, str) or not url or url == ":memory:":
        return False
    return all(h.sensor_id != RETENTION_SENSOR for h in store.chain_heads())


class _ChainCheck:
    """`verify_links` over records read in pieces, for the case that matters: every link
    holds. Each piece of consecutive records of one sensor is checked as read (types,
    `record_hash`, the link to the record before); `result` joins the pieces of both
    readers and compares the heads with the checkpoints. Anything short of a clean chain
    is left to `store.verify()`, which names the problem."""

    def __init__(self) -> None:
        self.pieces: list[tuple[str, int, str, int, str, int]] = []  # sensor, first seq, its prev, last seq, its hash, count
        self.broken = False
        self.records = 0

    def events(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[int, str, int, bytes | str]]:
        """Every record checked; the event rows (as `event_rows` selects them) passed on."""
        piece: list[Any] | None = None
        pieces = self.pieces
        records = 0
        for sensor_id, seq, kind, time_us, body, prev_hash, stored_hash in rows:
            records += 1
            raw = body if type(body) is bytes else body.encode() if type(body) is str else None
            if (raw is None or type(sensor_id) is not str or type(seq) is not int or type(prev_hash) is not str
                    or type(stored_hash) is not str or record_hash(sensor_id, seq, prev_hash, raw) != stored_hash):
                self.broken = True
            elif piece is not None and piece[0] == sensor_id and seq == piece[3] + 1:
                if prev_hash != piece[4]:
                    self.broken = True
                piece[3], piece[4], piece[5] = seq, stored_hash, piece[5] + 1
            else:
                if piece is not None:
                    pieces.append(tuple(piece))  # type: ignore[arg-type]
                piece = [sensor_id, seq, prev_hash, seq, stored_hash, 1]
            if kind == "event" and (type(time_us) is int or type(time_us) is float) and -(2**62) <= time_us < 2**62:
                yield time_us, sensor_id, seq, body
        if piece is not None:
            pieces.append(tuple(piece))  # type: ignore[arg-type]
        self.records += records

    def absorb(self, other: _ChainCheck) -> None:
        self.pieces += other.pieces
        self.broken = self.broken or other.broken
        self.records += other.records

    def result(self, store: Store) -> VerifyResult | None:
        """What `verify` would return, when that is a clean result; None otherwise."""
        if self.broken:
            return None
        chains: dict[str, ChainHead] = {}
        by_sensor: defaultdict[str, list[tuple[str, int, str, int, str, int]]] = defaultdict(list)
        for piece in self.pieces:
            by_sensor[piece[0]].append(piece)
        for sensor_id, pieces in by_sensor.items():
            pieces.sort(key=lambda piece: piece[1])
            expect_seq, expect_prev, count = 1, GENESIS, 0
            for _, first_seq, first_prev, last_seq, last_hash, n in pieces:
                if first_seq != expect_seq or first_prev != expect_prev:
                    return None
                expect_seq, expect_prev, count = last_seq + 1, last_hash, count + n
            chains[sensor_id] = ChainHead(sensor_id=sensor_id, count=count, head_seq=expect_seq - 1, head_hash=expect_prev)
        try:
            checkpoints = {h.sensor_id: (h.count, h.head_seq, h.head_hash) for h in store.chain_heads()}
        except ValueError:  # a checkpoint row `verify` has to read itself
            return None
        if set(checkpoints) != set(chains) or any((h.count, h.head_seq, h.head_hash) != checkpoints[s] for s, h in chains.items()):
            return None
        return VerifyResult(ok=True, records=self.records, chains=sorted(chains.values(), key=lambda h: h.sensor_id), problems=[])


class _PartJob:
    """Every other span (`_spans`) read by a forked copy of this process while this one
    reads the rest: phase one is most of the report's work, and the two parts share
    nothing until their columns are joined. Interleaved key ranges give each process a
    like mix of sensors, so neither waits long for the other. Any failure of the child
    short of a verdict on the bytes means reading its spans here."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    @classmethod
    def fork(cls, store: Store, reader: _Reader, spans: list[Span]) -> _PartJob | None:
        """The job reading `spans` in a child, or None to read them here (also when this
        process runs other threads: a fork copies only this one, and any lock they hold)."""
        url = getattr(store, "url", None)
        if not hasattr(os, "fork") or threading.active_count() > 1 or not isinstance(url, str) or not url or url == ":memory:" or not spans:
            return None
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            return None
        if pid == 0:  # the child: read, hand back, and leave without running the parent's exit handlers
            os.close(read_fd)
            code = 0
            try:
                with os.fdopen(write_fd, "wb") as out:
                    try:
                        own = open_store(url, create=False)
                        try:
                            reader.read(_rows(own, spans, reader.check))
                        finally:
                            own.close()
                        pickle.dump(("part", reader.part()), out, protocol=pickle.HIGHEST_PROTOCOL)
                    except _UNTRUSTED as exc:
                        pickle.dump(("untrusted", str(exc)), out, protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:  # noqa: BLE001 - the parent reads these spans itself
                code = 1
            os._exit(code)
        os.close(write_fd)
        return cls(pid, read_fd)

    def result(self) -> _Part | None:
        """The child's part; None when it failed. Raises `_Untrusted` when it met bytes
        only the reference pass may judge."""
        try:
            with os.fdopen(self.fd, "rb") as pipe:
                kind, value = pickle.load(pipe)  # noqa: S301 - our own forked child
        except (EOFError, pickle.UnpicklingError, OSError, ValueError):
            kind, value = "failed", None
        finally:
            _, status = os.waitpid(self.pid, 0)
            self.pid = 0
        if kind == "untrusted":
            raise _Untrusted(str(value))
        return value if kind == "part" and status == 0 else None

    def cancel(self) -> None:
        if not self.pid:  # `result` has reaped it
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        self.pid = 0


_UNTRUSTED = (msgspec.MsgspecError, KeyError, TypeError, ValueError, AttributeError, OverflowError)  # pydantic's ValidationError is a ValueError


def _fast_pass(
    store: Store,
    params: ReportParams,
    judging: _Judging,
    *,
    checks: bool = False,
) -> tuple[_Acc, VerifyResult | None]:
    """`_observe` over every event, from the stored bytes; raises `_Untrusted` on anything
    the reference pass must judge. Phase one reads the rows in the store's own order (one
    scan of the table, shared with a second process when it is large) and keeps a few
    numbers per event; phase two puts them in the time order the reference pass reads
    them in and does with numpy what `_add_event` does one event at a time. With `checks`
    (see `_checks_chains`) every record is read, its chain link checked on the way, and
    the second value is what `store.verify()` returns when all links hold, else None."""
    pack = judging.pack
    acc = _Acc(flagged=_FindingGroups(pack))
    reader = _Reader(acc, judging, _ChainCheck() if checks else None)
    large = getattr(store, "event_rows", None) is not None and sum(h.count for h in store.chain_heads()) >= PARALLEL_READ_ABOVE
    spans = _spans(store, params, large=large, checks=checks)
    job = _PartJob.fork(store, reader, spans[1::2]) if large and len(spans) > 1 else None
    reader.judge_flagged = job is not None  # while the child reads, this process has time to spare
    try:
        try:
            if job is None:
                reader.read(_rows(store, spans, reader.check))
            else:
                reader.read(_rows(store, spans[0::2], reader.check))
                part, job = job.result(), None
                if part is None:
                    reader.read(_rows(store, spans[1::2], reader.check))
                else:
                    reader.absorb(part)
            for body in reader.cols.lifecycle_bodies:
                _sensor_record(acc, EgressEvent.model_validate_json(body))
            _order_and_fold(acc, reader.cols, list(reader.profiles.values()), pack, [h.sensor_id for h in store.chain_heads()])
        except _UNTRUSTED as exc:
            raise _Untrusted(str(exc)) from exc
    finally:
        if job is not None:
            job.cancel()
    for key, p in reader.profiles.items():  # a profile's key starts with its sensor and kind
        _fold(acc, p, key[0], key[1])
    return acc, reader.check.result(store) if reader.check is not None else None


def _np(column: array) -> np.ndarray:
    return np.frombuffer(column, dtype=np.int64) if len(column) else np.zeros(0, dtype=np.int64)


def _order_and_fold(acc: _Acc, cols: _Columns, plist: list[_Profile], pack: Pack, sensor_order: list[str]) -> None:
    """Phase two: the reference pass's order, (time_us, sensor_id, seq) with sensor ids in
    the store's own order (`sensor_order`, as `chain_heads` lists them), and in it what
    `_add_event` and `_settle` do, per profile and per array instead of per event."""
    times, body_times = _np(cols.time), _np(cols.body_time)
    lifecycle, lifecycle_body = _np(cols.lifecycle_times), _np(cols.lifecycle_body_times)
    if not (np.array_equal(times, body_times) and np.array_equal(lifecycle, lifecycle_body)):
        raise _Untrusted("a stored time_us is not its event's time")
    n = len(times)
    acc.traffic = n
    acc.events = n + len(lifecycle)
    every = np.concatenate([times, lifecycle])
    if len(every):
        acc.first = _EPOCH + timedelta(microseconds=int(every.min()))
        acc.last = _EPOCH + timedelta(microseconds=int(every.max()))
    names = [name for name in dict.fromkeys(sensor_order) if name in cols.sensors]
    names += sorted(set(cols.sensors) - set(names))  # a store view's rows: one sensor, already in order
    rank = np.zeros(len(names), dtype=np.int64)
    for r, name in enumerate(names):
        rank[cols.sensors[name]] = r
    order = np.lexsort((_np(cols.seq), rank[_np(cols.sensor)], times))
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n, dtype=np.int64)
    prof = _np(cols.profile)
    count = len(plist)

    first_pos = np.full(count, n, dtype=np.int64)
    np.minimum.at(first_pos, prof, pos)
    for i in np.argsort(first_pos, kind="stable").tolist():
        _take_samples(acc, plist[i])
    ups, downs = _np(cols.up), _np(cols.down)
    if n and max(int(ups.max()), int(downs.max()), -int(ups.min()), -int(downs.min())) >= (2**62) // n:
        raise _Untrusted("byte counts too large to sum in 64 bits")
    up_sums = np.zeros(count, dtype=np.int64)
    down_sums = np.zeros(count, dtype=np.int64)
    np.add.at(up_sums, prof, ups)
    np.add.at(down_sums, prof, downs)
    for p, k, u, d in zip(plist, np.bincount(prof, minlength=count).tolist(), up_sums.tolist(), down_sums.tolist(), strict=True):
        p.n, p.up, p.down = k, u, d

    codes = np.array([p.code for p in plist], dtype=np.int8)
    acc.times.frombytes(times[order].tobytes())
    acc.codes.frombytes(codes[prof[order]].tobytes() if n else b"")
    _sample_ids(acc, cols, plist, pos, prof)
    _sample_sources(acc, cols, plist, order, prof)
    _match_flows(acc, cols, plist, times[order], pos, prof)
    _flag(acc, cols, plist, pos, prof, pack)


def _sample_ids(acc: _Acc, cols: _Columns, plist: list[_Profile], pos: np.ndarray, prof: np.ndarray) -> None:
    """The first ids of inbound events and of each forbidden class, in time order."""
    rows = _np(cols.id_rows)
    wanted = {c for p in plist for c in p.forbidden}
    for i in np.argsort(pos[rows], kind="stable").tolist():
        p = plist[int(prof[rows[i]])]
        event_id = cols.ids[i]
        if p.inbound and len(acc.inbound_ids) < MAX_EVENT_IDS:
            acc.inbound_ids.append(event_id)
        for class_id in p.forbidden:
            ids = acc.forbidden[class_id]
            if len(ids) < MAX_EVENT_IDS:
                ids.append(event_id)
        if len(acc.inbound_ids) >= MAX_EVENT_IDS and all(len(acc.forbidden[c]) >= MAX_EVENT_IDS for c in wanted):
            break


def _sample_sources(acc: _Acc, cols: _Columns, plist: list[_Profile], order: np.ndarray, prof: np.ndarray) -> None:
    """Each endpoint's first 200 and each destination's first 20 distinct sources."""
    who = _np(cols.who)[order]
    in_order = prof[order]
    for attr, limit in (("endpoint", 200), ("dest", 20)):
        groups: list[Any] = []
        index: dict[int, int] = {}
        of_profile = np.full(len(plist), -1, dtype=np.int64)
        for i, p in enumerate(plist):
            target = getattr(p, attr)
            if target is not None:
                of_profile[i] = index.setdefault(id(target), len(groups))
                if of_profile[i] == len(groups):
                    groups.append(target)
        group = of_profile[in_order]
        for g, w in _first_distinct(group, who, len(cols.who_names), limit):
            groups[g].sources.add(cols.who_names[w])


def _first_distinct(group: np.ndarray, value: np.ndarray, values: int, limit: int) -> Iterator[tuple[int, int]]:
    """(group, value) for the first `limit` distinct values of each group (-1: none), in
    the order of the arrays."""
    keep = group >= 0
    pairs = group[keep] * max(values, 1) + value[keep]
    if not len(pairs):
        return
    unique, first = np.unique(pairs, return_index=True)
    g, v = unique // max(values, 1), unique % max(values, 1)
    by_group = np.lexsort((first, g))
    g, v = g[by_group], v[by_group]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    chosen = rank < limit
    yield from zip(g[chosen].tolist(), v[chosen].tolist(), strict=True)


def _match_flows(acc: _Acc, cols: _Columns, plist: list[_Profile], now: np.ndarray, pos: np.ndarray, prof: np.ndarray) -> None:
    """`_settle` for every pod flow at once. The reference pass decides a flow when the
    first event after every earlier flow's deadline and its own is read, against the proxy
    records read by then: the flow at position i with running maximum deadline m is decided
    at the first position j >= i whose time is past m, and a record counts if it was read
    at or before j. Times only grow along the order, so under each key the records read by
    then are a prefix of those sorted by time."""
    rows = _np(cols.proxy_rows)
    if len(np.unique(_np(cols.proxy_ids))) != len(rows):  # ProxyIndex counts an id once: the reference pass knows which
        raise _Untrusted("proxy records share an id")
    by_pos = np.argsort(pos[rows], kind="stable")
    rec_pos, rec_prof = pos[rows][by_pos], prof[rows][by_pos]
    rec_time = timestamps_us(_np(cols.body_time)[rows][by_pos])
    if len(rec_time) > 1 and bool((rec_time[1:] < rec_time[:-1]).any()):
        raise _Untrusted("proxy record times out of order")
    parts: defaultdict[ProxyKey, list[np.ndarray]] = defaultdict(list)
    for pid, members in _members(rec_prof):
        for key in dict.fromkeys(plist[pid].proxy_keys or ()):
            parts[key].append(members)
    index: dict[ProxyKey, tuple[np.ndarray, np.ndarray]] = {}
    for key, chunks in parts.items():
        members = np.sort(np.concatenate(chunks))
        index[key] = (rec_time[members], rec_pos[members])

    rows = _np(cols.flow_rows)
    by_pos = np.argsort(pos[rows], kind="stable")
    flow_pos, flow_prof = pos[rows][by_pos], prof[rows][by_pos]
    first, last = _np(cols.flow_first)[by_pos], _np(cols.flow_last)[by_pos]
    has_first = np.frombuffer(cols.flow_has_first, dtype=np.int8)[by_pos].astype(bool)
    lo = np.where(has_first, timestamps_us(first) - MATCH_SLACK_US, 0)  # `flow_window`, or (0, 0) without a first_seen
    hi = np.where(has_first, timestamps_us(last) + MATCH_SLACK_US, 0)
    deadline = np.maximum.accumulate(last + MATCH_SLACK_US) if len(rows) else np.zeros(0, dtype=np.int64)
    decided = np.maximum(np.searchsorted(now, deadline, side="right"), flow_pos)
    matched = np.zeros(len(rows), dtype=bool)
    for pid, members in _members(flow_prof):
        p = plist[pid]
        if p.bypass:
            continue
        for key in p.match_keys:
            found = index.get(key)
            if found is None:
                continue
            key_time, key_pos = found
            at = np.searchsorted(key_time, lo[members], side="left")
            inside = at < len(key_time)
            at = np.minimum(at, len(key_time) - 1)
            matched[members] |= inside & (key_time[at] <= hi[members]) & (key_pos[at] <= decided[members])
    acc.external_flows += len(rows)
    acc.matched_flows += int(matched.sum())
    names: dict[str, int] = {}
    name_of = np.array([names.setdefault(p.unmatched, len(names)) for p in plist], dtype=np.int64)
    missed = name_of[flow_prof[~matched]]
    if len(missed):
        listed = list(names)
        unique, first, counts = np.unique(missed, return_index=True, return_counts=True)
        for i in np.argsort(first, kind="stable").tolist():
            acc.unmatched[listed[int(unique[i])]] += int(counts[i])


def timestamps_us(us: np.ndarray) -> np.ndarray:
    """`timestamp_us` of each exact µs time: `datetime.timestamp()` is the exact µs over 10**6
    correctly rounded to a double, as is this division of a double that holds the µs exactly
    (below 2**53); times 10**6 and truncated toward zero, as `int()` does."""
    if len(us) and int(np.abs(us).max()) >= 2**53:
        raise _Untrusted("a time too far from 1970 to convert exactly")
    return (us.astype(np.float64) / 1e6 * 1e6).astype(np.int64)


def _members(group: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Each value of `group` with the positions holding it, in increasing order."""
    if not len(group):
        return
    by_group = np.argsort(group, kind="stable")
    values = group[by_group]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(values)], strict=True):
        yield int(values[start]), by_group[start:stop]


def _flag(acc: _Acc, cols: _Columns, plist: list[_Profile], pos: np.ndarray, prof: np.ndarray, pack: Pack) -> None:
    """Events not allowed, validated and judged one by one, into the finding groups in time order."""
    flagged = acc.flagged
    assert flagged is not None
    rows = _np(cols.flagged_rows)
    made = cols.flagged_events
    for i in np.argsort(pos[rows], kind="stable").tolist():
        row = int(rows[i])
        event = made.get(row)
        flagged.add(event if event is not None else _judged(cols.flagged_bodies[i], pack, plist[int(prof[row])]))


def _judged(body: bytes | str, pack: Pack, p: _Profile) -> EgressEvent:
    """An event not allowed, validated and judged on its own, as the finding groups need it."""
    event = EgressEvent.model_validate_json(body)
    event.decision = evaluate(event, pack)
    decision = event.decision
    if (decision.action if decision is not None else "unverified") != p.action:
        raise _Untrusted("an event's decision differs from its profile's")
    return event


def _sensors(acc: _Acc) -> list[SensorCoverage]:
    return [
        SensorCoverage(
            sensor_id=_clean(sid, 120),
            sensor_class=_sensor_class(s, sid),
            events=s.events,
            kinds=dict(sorted(s.kinds.items())),
            starts=s.starts,
            stops=s.stops,
            gaps=s.gaps,
            dropped=s.dropped,
            config_digests=sorted(_clean(c, 100) for c in s.config_digests),
        )
        for sid, s in sorted(acc.sensors.items())
    ]


MATCH_METHOD = (
    "auditor.probe.coverage (the probe's ProxyIndex and is_external_flow) applied in the report's single pass over the store: "
    "pod flows to external addresses matched to a proxy record of the same address or name and port within ±5 s; "
    "flows the probe marked `bypass` never count as matched"
)


def _coverage(acc: _Acc, sensors: list[SensorCoverage], threshold: Decimal, pack: Pack) -> CoverageReport:
    proxy_available = any(s.sensor_class == "proxy" and s.events - s.kinds.get("sensor", 0) > 0 for s in sensors)
    probe_available = any(s.sensor_class == "probe" and s.events - s.kinds.get("sensor", 0) > 0 for s in sensors)
    external, matched = acc.external_flows, acc.matched_flows
    method = MATCH_METHOD if probe_available else "unavailable: no probe events"
    matched_share = Share.of(matched, external) if probe_available and proxy_available else None
    if probe_available and not proxy_available:
        method = "unavailable: no proxy events, so no flow can be matched to an inspected request"
    drops = sum(s.dropped for s in sensors)
    gaps = sum(s.gaps for s in sensors)
    judged = sum(acc.actions.values())
    unverified = acc.actions.get("unverified", 0)
    inspected_share = Share.of(judged - unverified, judged + drops)
    candidates = [s for s in (inspected_share, matched_share) if s is not None]
    score = min(candidates, key=lambda s: Decimal(s.numerator) / Decimal(s.denominator)) if candidates else None
    meets = score is not None and score.at_least(threshold)
    basis = _score_basis(inspected_share, matched_share, probe_available=probe_available, proxy_available=proxy_available)

    statements: list[str] = []
    if not proxy_available:
        statements.append("Proxy coverage unavailable: no proxy (L7) events in the window, so no request content was inspected.")
    if not probe_available:
        statements.append(
            "Probe coverage unavailable: no probe (L3/L4) events in the window, so traffic that bypassed the proxy could not be seen."
        )
    to_proxy = f"{_count(acc.proxy_flows, 'pod flow', 'pod flows')} to the audit proxy itself"
    if matched_share is not None:
        statements.append(
            f"Proxy match: {matched:,} of {_count(external, 'pod flow', 'pod flows')} the probe saw to addresses outside the "
            f"cluster matched a connection the proxy made ({matched_share.percent}); the rest went around it. "
            f"Not part of this measure: {to_proxy}, whose requests count under inspected evidence."
        )
    elif probe_available and proxy_available:
        statements.append(
            "Proxy match not measured: the probe saw no pod flow to an address outside the cluster, so there was nothing "
            f"to match ({to_proxy})."
        )
    if inspected_share is not None:
        statements.append(
            f"{inspected_share.percent} of judged traffic was decided on inspected evidence "
            f"({unverified:,} events unverified, {drops:,} events dropped by sensors)."
        )
    if acc.bodies_seen:
        skipped = ", ".join(f"{n:,} {r}" for r, n in sorted(acc.bodies_skipped.items())) or "none"
        statements.append(f"{acc.bodies_inspected:,} of {acc.bodies_seen:,} bodies inspected; not inspected: {skipped}.")
    if acc.tls_not_opened:
        statements.append(f"{_count(acc.tls_not_opened, 'TLS connection', 'TLS connections')} could not be opened: judged by destination only, never counted clean.")
    if drops:
        statements.append(f"Sensors dropped {drops:,} events; they count as uninspected.")
    if gaps:
        statements.append(f"{gaps} monitoring gaps were recorded (a sensor ended without a stop record).")
    thr_percent = _percent(threshold)
    if score is None:
        statements.append(f"No coverage could be measured; the required minimum is {thr_percent}.")
    else:
        statements.append(
            f"Coverage {score.percent} ({basis}) {'meets' if meets else 'is below'} the required minimum of {thr_percent}."
        )
    return CoverageReport(
        threshold=str(threshold),
        threshold_percent=thr_percent,
        score=score,
        meets_threshold=meets,
        proxy_available=proxy_available,
        probe_available=probe_available,
        sensors=sensors,
        events_by_sensor={s.sensor_id: s.events for s in sensors},
        score_basis=basis,
        external_flows=external,
        proxy_flows=acc.proxy_flows,
        proxy_matched_flows=matched,
        proxy_matched_share=matched_share,
        matched_method=method,
        unmatched_destinations=dict(acc.unmatched.most_common(20)),
        http_requests=acc.http_requests,
        bodies_seen=acc.bodies_seen,
        bodies_inspected=acc.bodies_inspected,
        bodies_skipped=dict(sorted(acc.bodies_skipped.items())),
        inspected_share=inspected_share,
        judged_events=judged,
        unverified_events=unverified,
        tls_not_opened=acc.tls_not_opened,
        drops=drops,
        gaps=gaps,
        statements=statements,
    )


def _score_basis(inspected: Share | None, matched: Share | None, *, probe_available: bool, proxy_available: bool) -> str:
    """Which measure the coverage score is, in words: the lower of the two, or the only one measured."""
    if inspected is None:
        return "nothing measured"
    if matched is None:
        why = ("without probe events" if not probe_available else "without proxy events" if not proxy_available
               else "measured, as the probe saw no external pod flow")
        return f"inspected evidence only; no proxy match {why}"
    lower = "proxy match" if Decimal(matched.numerator) * inspected.denominator < Decimal(inspected.numerator) * matched.denominator \
        else "inspected evidence"
    return f"{lower}, the lower of proxy match and inspected evidence"


def _contract_text(pack: Pack, ref: str) -> str:
    """The contract line a rule or endpoint cites, quoted verbatim."""
    for line in pack.contract:
        if line.id == ref:
            return line.text
    return ref


def _contract(
    acc: _Acc, pack: Pack, findings: list[FindingEntry], event_to_finding: dict[str, str], coverage: CoverageReport
) -> Contract:
    endpoints = []
    for ep in pack.endpoints:
        a = acc.endpoints.get(ep.id, _EndpointAcc())
        status: LineStatus
        if a.actions.get("violation"):
            status = "fail"
        elif a.actions.get("unverified"):
            status = "unverified"
        elif a.events:
            status = "pass"
        else:
            status = "not-seen"
        ep_findings = sorted({f.id for f in findings if _host_in(ep.hosts, f.destination)})
        endpoints.append(
            EndpointLine(
                id=ep.id, hosts=list(ep.hosts), ports=sorted(ep.ports), scopes=sorted(ep.scopes),
                contract=_contract_text(pack, ep.contract), status=status, reached=a.events > 0,
                sources=sorted(a.sources), events=a.events, bytes_up=a.bytes_up, bytes_down=a.bytes_down,
                methods=dict(sorted(a.methods.items())), actions=dict(sorted(a.actions.items())),
                finding_ids=ep_findings[:MAX_EVENT_IDS],
            )
        )
    kinds = []
    for spec in pack.metadata_kinds:
        k = acc.kinds.get(spec.id, _KindAcc())
        kinds.append(
            MetadataKindLine(
                id=spec.id, description=spec.description, contract=_contract_text(pack, spec.contract),
                status="pass" if k.count else "not-seen", count=k.count,
                routes=sorted(k.routes), field_paths=sorted({path for route in k.routes for path in kind_paths(route, spec.id)}),
            )
        )
    classes = [_forbidden_line(acc, pack, spec, coverage, event_to_finding) for spec in pack.forbidden_classes]
    if acc.inbound:
        inbound = InboundLine(status="fail", count=acc.inbound, statement=f"{_count(acc.inbound, 'connection was', 'connections were')} opened from outside the cluster.",
                              finding_ids=sorted({event_to_finding[i] for i in acc.inbound_ids if i in event_to_finding}),
                              event_ids=list(acc.inbound_ids))
    elif coverage.probe_available:
        inbound = InboundLine(status="pass", count=0, statement="The probe saw no connection opened from outside the cluster.",
                              finding_ids=[], event_ids=[])
    else:
        inbound = InboundLine(status="unverified", count=0,
                              statement="Not verifiable: only the probe sees inbound connections, and there are no probe events.",
                              finding_ids=[], event_ids=[])
    return Contract(endpoints=endpoints, metadata_kinds=kinds, forbidden_classes=classes, inbound=inbound, login_registries=sorted(acc.login_registries),
                    login_answers_unread=acc.login_answers_unread)


def _forbidden_line(
    acc: _Acc, pack: Pack, spec: ForbiddenClassSpec, coverage: CoverageReport, event_to_finding: dict[str, str]
) -> ForbiddenClassLine:
    """A class fails only where it went somewhere the contract does not allow (a
    violation). Where the policy could not decide the destination (unverified), the line
    cannot pass either. Taken where the contract allows it (the customer's own bucket),
    it is kept, as the contract wants, and the line says where."""
    violations = acc.forbidden_counts.get((spec.id, "violation"), 0)
    undecided = acc.forbidden_counts.get((spec.id, "unverified"), 0)
    kept = acc.forbidden_counts.get((spec.id, "allowed"), 0)
    where = sorted(acc.kept_where.get(spec.id, ()))
    ids = acc.forbidden.get(spec.id, [])
    uninspected = coverage.bodies_seen - coverage.bodies_inspected + coverage.tls_not_opened
    status: LineStatus
    if violations:
        status = "fail"
        statement = f"Sent where the contract does not allow it in {_count(violations, 'event', 'events')}."
        if undecided:
            statement += f" {_count(undecided, 'more event', 'more events')} went where the policy could not decide."
    elif undecided:
        status = "unverified"
        statement = (f"Seen in {_count(undecided, 'event', 'events')} whose destination the policy could not decide "
                     "(unverified): never counted as kept.")
    elif not coverage.proxy_available:
        status, statement = "unverified", "Not verifiable: no request content was inspected (no proxy events)."
    elif uninspected:
        status = "unverified"
        statement = (f"Never seen going where the contract does not allow it in {coverage.bodies_inspected} inspected bodies; "
                     f"{uninspected} bodies or connections could not be inspected.")
    else:
        status = "pass"
        statement = f"Never seen going where the contract does not allow it in {coverage.bodies_inspected} inspected bodies."
    if kept:
        statement += f" Kept where the contract allows it: {_count(kept, 'event', 'events')}, to {'; '.join(where)}."
    return ForbiddenClassLine(
        id=spec.id, description=spec.description, contract=_contract_text(pack, spec.contract),
        labels=list(spec.labels), status=status, count=violations, unverified=undecided, kept=kept, kept_where=where,
        statement=statement, finding_ids=sorted({event_to_finding[i] for i in ids if i in event_to_finding}),
        event_ids=list(ids),
    )


def _host_in(patterns: list[str], destination: str) -> bool:
    return _Matcher(patterns)(destination.lower().split(":")[0].rstrip("."))


def _finding_entry(f: Finding, pack: Pack, events: dict[str, EgressEvent]) -> FindingEntry:
    rule = pack.rules.get(f.rule_id)
    sampled = [ev for eid in f.event_ids if (ev := events.get(eid)) is not None]
    locations = sorted({loc for ev in sampled if (loc := _location(ev))})
    requests = list(dict.fromkeys(_request_line(ev) for ev in sampled if ev.http is not None))[:MAX_EXCERPTS]
    return FindingEntry(
        id=f.id,
        rule_id=f.rule_id,
        action=f.action,
        severity=f.severity,
        likelihood=f.likelihood,
        message=_clean(f.message, 500),
        remediation=_clean(f.remediation, 500),
        contract=rule.contract_text if rule is not None else "",
        controls=list(f.controls),
        destination=_clean(f.destination, 255),
        first_seen=f.first_seen,
        last_seen=f.last_seen,
        count=f.count,
        event_ids=[_clean(e, 64) for e in f.event_ids[:MAX_EVENT_IDS]],
        excerpts=[_clean(x, 200) for x in f.excerpts[:MAX_EXCERPTS]],
        sources=sorted(_clean(s, 200) for s in f.sources[:20]),
        locations=locations[:10],
        requests=requests,
    )


def _request_line(event: EgressEvent) -> str:
    """`METHOD /path?query` as evidence: query values of secrets are already redacted by the sensor, and again here."""
    http = event.http
    assert http is not None
    query = f"?{redact_query(http.query)}" if http.query else ""
    return _clean(f"{http.method} {http.path}{query}", 240)


_ORDER = {"violation": 0, "unverified": 1, "allowed": 2}


def _destinations(acc: _Acc) -> list[DestinationRow]:
    rows = []
    for (name, port), d in acc.destinations.items():
        decision = min(d.actions, key=lambda a: _ORDER[a])
        rows.append(
            DestinationRow(
                destination=name, port=port, decision=decision, actions=dict(sorted(d.actions.items())),
                events=sum(d.actions.values()), bytes_up=d.bytes_up, bytes_down=d.bytes_down,
                sources=sorted(d.sources), rule_ids=sorted(d.rule_ids),
            )
        )
    rows.sort(key=lambda r: (_ORDER[r.decision], -r.events, r.destination, r.port or 0))
    return rows


_INTERVALS = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 60


def _timeline(acc: _Acc, start: datetime | None, end: datetime | None) -> Timeline:
    if start is None or end is None or not len(acc.times):
        return Timeline(interval_seconds=0, buckets=[])
    span = max(1, int((end - start).total_seconds()) + 1)
    interval = next((i for i in _INTERVALS if span / i <= MAX_BUCKETS), _INTERVALS[-1])
    origin = _us(start) // (interval * 1_000_000) * (interval * 1_000_000)
    width = interval * 1_000_000
    buckets = max(1, min((_us(end) - origin) // width + 1, 10_000))
    at = np.clip((np.frombuffer(acc.times, dtype=np.int64) - origin) // width, 0, buckets - 1)  # early: first, late: last
    codes = np.frombuffer(acc.codes, dtype=np.int8).astype(np.int64)
    counts = np.bincount(at * 3 + codes, minlength=buckets * 3).reshape(buckets, 3).tolist()
    return Timeline(
        interval_seconds=interval,
        buckets=[
            TimelineBucket(start=_EPOCH + timedelta(microseconds=origin + i * width), allowed=c[0], violation=c[1], unverified=c[2])
            for i, c in enumerate(counts)
        ],
    )


def _clusters(pack: Pack) -> list[str]:
    """The site overlays name the cluster(s) the audit is about."""
    return list(pack.site.ids)


def _verdict(acc: _Acc, findings: list[FindingEntry], coverage: CoverageReport, integrity: Integrity, *, store_empty: bool) -> Verdict:
    """FAIL on evidence of a breach or of tampering; INCONCLUSIVE when the evidence is
    not enough to say; PASS only when nothing is wrong and enough was seen."""
    fail: list[str] = []
    inconclusive: list[str] = []
    if not integrity.chains_ok:
        first = integrity.problems[0] if integrity.problems else "unknown problem"
        fail.append(f"The evidence store's hash chain is broken ({first}), so its records cannot be trusted.")
    violations = acc.actions.get("violation", 0)
    if violations:
        worst = next((f for f in findings if f.action == "violation"), None)
        what = f"; worst: {worst.rule_id} to {worst.destination}" if worst else ""
        fail.append(f"{_count(violations, 'event violates', 'events violate')} the contract ({sum(1 for f in findings if f.action == 'violation'):,} findings{what}).")
    if store_empty:
        inconclusive.append("The evidence store is empty: there is nothing to attest.")
    elif acc.traffic == 0:
        inconclusive.append("The window holds no traffic events: there is nothing to attest.")
    else:
        if not coverage.proxy_available:
            inconclusive.append("Proxy coverage is unavailable: no request content was inspected.")
        if not coverage.probe_available:
            inconclusive.append("Probe coverage is unavailable: traffic that bypassed the proxy could not be seen.")
        if not coverage.meets_threshold:
            score = coverage.score.percent if coverage.score else "unmeasured"
            inconclusive.append(f"Coverage {score} is below the required {coverage.threshold_percent}.")
        if coverage.gaps:
            inconclusive.append(f"{coverage.gaps} monitoring gaps fall in the window: what happened during them is unknown.")
    if fail:
        status: Status = "FAIL"
        reasons = fail + inconclusive
    elif inconclusive:
        status = "INCONCLUSIVE"
        reasons = inconclusive
    else:
        status = "PASS"
        unverified = acc.actions.get("unverified", 0)
        caveat = f" ({unverified:,} events could not be inspected and are listed as unverified, never as clean)" if unverified else ""
        reasons = [
            f"No violation in {acc.traffic:,} traffic events from {len(acc.sensors)} sensors; coverage "
            f"{coverage.score.percent if coverage.score else ''} ({coverage.score_basis}) meets the required {coverage.threshold_percent}{caveat}; "
            "every hash chain verifies."
        ]
    return Verdict(status=status, reason=reasons[0], reasons=reasons, exit_code=EXIT_CODES[status])


def _limitations(coverage: CoverageReport, contract: Contract) -> list[str]:
    out = [
        "The proxy judges only traffic sent through it; the probe sees traffic that goes around it as flows, DNS answers and TLS server names, never content.",
        "Connections whose TLS the proxy could not open (pinned certificates, passthrough hosts, clients that reject the proxy CA) are judged by destination only and counted as unverified, never as clean.",
        "Bodies over the inspection cap are hashed and scanned incrementally; a body that could not be decoded within the limits is counted as not inspected.",
        "Data encrypted by the application before it is sent (inside a JSON field, for example) is recognised by entropy and shape, not by meaning.",
        "Each request is judged on its own: data cut so thin that every request carries one value of a row, or a slice of random bytes under 1 KiB, is not recognised from any one of them (pieces of known canary tokens are).",
        "The probe sees only the nodes it runs on; traffic from a node without a probe is invisible to it.",
        "The probe does not verify TCP checksums (capture offload leaves them wrong), so a decoy segment with a bad checksum or too short a TTL, sent ahead of the real one at the same sequence number, can show it a server name the server never reads.",
        "Events are judged with the rule pack at report time; the pack digest above identifies exactly which rules were applied.",
        "Event times come from the sensors' clocks.",
        "The report holds digests, sizes, labels, field paths and redacted excerpts, never raw payloads; secrets are redacted.",
    ]
    if contract.login_answers_unread and not contract.login_registries:
        out.insert(0, "No registry could be read from the agent's get_login answers: image pulls were checked against the rule pack's registry only.")
    if not coverage.probe_available:
        out.insert(0, "No probe evidence: bypass of the proxy, DNS tunnelling and inbound connections could not be observed in this window.")
    if not coverage.proxy_available:
        out.insert(0, "No proxy evidence: no request body was inspected in this window, so no content claim can be made.")
    return out


def iter_finding_groups(findings: list[FindingEntry]) -> Iterator[tuple[str, list[FindingEntry]]]:
    """Findings grouped by rule, worst rule first: how the HTML and JUnit lay them out."""
    groups: dict[str, list[FindingEntry]] = defaultdict(list)
    for f in findings:
        groups[f.rule_id].append(f)
    yield from sorted(groups.items(), key=lambda kv: (-SEVERITY_ORDER[kv[1][0].severity], kv[0]))
