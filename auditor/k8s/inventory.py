"""IP → pod or node over time, kept current by list + watch of the Kubernetes API.

Pod IPs are reused within minutes, so the inventory never maps an IP to "the" pod:
it keeps *holdings* (this pod held this IP from `start` until `end`) and answers
"who held 10.42.1.7 at 09:14:03?". Node IPs mark node scope; host-network pods
share their node's IP, so traffic from them is node traffic. An API outage is a
hole in that history: it is kept as a `Gap` here and chained as sensor events, so
an event that falls in it says attribution was blind then.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, Field, ValidationError

from auditor.errors import AuditorError
from auditor.k8s.cluster import server_of
from auditor.model import Scope, sensor_event, utcnow
from auditor.store.writer import BatchWriter

log = logging.getLogger(__name__)

HolderKind = Literal["pod", "node"]
CidrSource = Literal["api", "overlay", "none"]
SNAPSHOT_FORMAT = "boundary-auditor/k8s-inventory"
GRETEL_NAMESPACE = "gretel-hybrid"
ALL_NAMESPACES = "*"


class Holding(BaseModel):
    """One pod or node holding one IP over [start, end)."""

    ip: str
    kind: HolderKind
    name: str
    namespace: str | None = None
    uid: str
    workload: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    node: str | None = None
    host_network: bool = False
    start: datetime
    end: datetime | None = None
    end_inferred: bool = False  # the end was found at a relist, not seen: the object went while unwatched

    def covers(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)


class Gap(BaseModel):
    """A time the inventory had no view of the API for one resource."""

    resource: str
    start: datetime
    end: datetime | None = None
    attempts: int = 1
    reason: str


class InventoryConfig(BaseModel):
    """What to watch. Gretel's defaults: every pod of the `gretel-hybrid` namespace (agent,
    controller, `app=gretel-jobs-worker` jobs), and all nodes."""

    namespaces: list[str] = Field(default_factory=lambda: [GRETEL_NAMESPACE])  # ["*"] watches all
    label_selectors: list[str] = Field(default_factory=list)  # one list+watch each; none = all pods
    node_name: str | None = None  # a probe on one node watches only that node's pods
    pod_cidrs: list[str] = Field(default_factory=list)  # from the overlay, used when the API has none
    service_cidrs: list[str] = Field(default_factory=list)
    node_cidrs: list[str] = Field(default_factory=list)
    history_hours: int = Field(default=168, ge=1)  # a live watcher forgets holdings that ended longer ago
    watch_timeout: int = Field(default=300, ge=1)
    connect_timeout: float = Field(default=5.0, gt=0)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    sensor_id: str = "k8s-inventory"


class InventorySnapshot(BaseModel):
    """Everything attribution needs, as a file: importers attribute after the fact with it."""

    format: Literal["boundary-auditor/k8s-inventory"] = SNAPSHOT_FORMAT
    version: Literal[1] = 1
    taken_at: datetime
    server: str | None = None
    config: InventoryConfig
    pod_cidrs: list[str] = Field(default_factory=list)
    service_cidrs: list[str] = Field(default_factory=list)
    node_cidrs: list[str] = Field(default_factory=list)
    cidr_sources: dict[str, CidrSource] = Field(default_factory=dict)
    holdings: list[Holding] = Field(default_factory=list)
    gaps: list[Gap] = Field(default_factory=list)


@dataclass
class Resolution:
    """Who an IP was at a time: the holding, the scope it implies, and what is uncertain."""

    scope: Scope
    holding: Holding | None = None
    node: str | None = None
    notes: list[str] = field(default_factory=list)


def _networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _in(ip: str, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets if n.version == addr.version)


def workload_of(meta: client.V1ObjectMeta) -> str | None:
    """`deployment/agent`, `job/<name>`, `daemonset/x`: the owner a reviewer knows, not the ReplicaSet."""
    owners = meta.owner_references or []
    owner = next((o for o in owners if o.controller), owners[0] if owners else None)
    if owner is None:
        return f"pod/{meta.name}" if meta.name else None
    kind, name = owner.kind.lower(), owner.name
    if kind == "replicaset":
        template_hash = (meta.labels or {}).get("pod-template-hash")
        if template_hash and name.endswith(f"-{template_hash}"):
            return f"deployment/{name[: -len(template_hash) - 1]}"
        return f"replicaset/{name}"
    return f"{kind}/{name}"


def _pod_ips(pod: client.V1Pod) -> list[str]:
    status = pod.status
    if status is None:
        return []
    ips = [p.ip for p in (status.pod_ips or []) if p.ip]
    if not ips and status.pod_ip:
        ips = [status.pod_ip]
    return ips


def _finished_at(pod: client.V1Pod) -> datetime | None:
    """When a completed pod let its IP go: the last container's finish time."""
    statuses = (pod.status.container_statuses if pod.status else None) or []
    times = [
        cs.state.terminated.finished_at
        for cs in statuses
        if cs.state and cs.state.terminated and cs.state.terminated.finished_at
    ]
    return max(times) if times else None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Inventory:
    """Holdings by IP, safe to read from a sensor's thread while watchers write."""

    def __init__(
        self,
        *,
        pod_cidrs: Iterable[str] = (),
        service_cidrs: Iterable[str] = (),
        node_cidrs: Iterable[str] = (),
        cidr_sources: dict[str, CidrSource] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._by_ip: dict[str, list[Holding]] = {}
        self._open: dict[tuple[str, str, str], Holding] = {}  # (kind, uid, ip)
        self._open_by_ip: dict[str, dict[tuple[str, str, str], Holding]] = {}
        self._open_by_obj: dict[tuple[str, str], dict[str, Holding]] = {}
        self._scopes: dict[tuple[str, str], set[str]] = {}  # (kind, uid) -> watch streams that saw it
        self.gaps: list[Gap] = []
        self.nodes_listed = False
        self.set_cidrs(pod=list(pod_cidrs), service=list(service_cidrs), node=list(node_cidrs), sources=cidr_sources)

    # --- CIDRs ---------------------------------------------------------------------------

    def set_cidrs(
        self,
        *,
        pod: list[str] | None = None,
        service: list[str] | None = None,
        node: list[str] | None = None,
        sources: dict[str, CidrSource] | None = None,
    ) -> None:
        with self._lock:
            if pod is not None:
                self.pod_cidrs = sorted(set(pod))
            if service is not None:
                self.service_cidrs = sorted(set(service))
            if node is not None:
                self.node_cidrs = sorted(set(node))
            merged: dict[str, CidrSource] = dict(getattr(self, "cidr_sources", {})) | (sources or {})
            for kind, cidrs in (("pod", self.pod_cidrs), ("service", self.service_cidrs), ("node", self.node_cidrs)):
                if merged.get(kind, "none") == "none":
                    merged[kind] = "overlay" if cidrs else "none"
            self.cidr_sources = merged
            self._pod_nets = _networks(self.pod_cidrs)
            self._service_nets = _networks(self.service_cidrs)
            self._node_nets = _networks(self.node_cidrs)

    # --- writes from the watchers ---------------------------------------------------------

    def _open_holding(self, h: Holding) -> None:
        self._open[(h.kind, h.uid, h.ip)] = h
        self._open_by_ip.setdefault(h.ip, {})[(h.kind, h.uid, h.ip)] = h
        self._open_by_obj.setdefault((h.kind, h.uid), {})[h.ip] = h

    def _end_holding(self, h: Holding, end: datetime, inferred: bool) -> None:
        key = (h.kind, h.uid, h.ip)
        self._open.pop(key, None)
        self._open_by_ip.get(h.ip, {}).pop(key, None)
        self._open_by_obj.get((h.kind, h.uid), {}).pop(h.ip, None)
        h.end, h.end_inferred = max(end, h.start), inferred

    def _add(self, new: Holding, stream: str) -> None:
        self._scopes.setdefault((new.kind, new.uid), set()).add(stream)
        current = self._open.get((new.kind, new.uid, new.ip))
        if current is not None:
            current.labels, current.workload, current.node = new.labels, new.workload, new.node
            if new.end is not None:
                self._end_holding(current, new.end, False)
            return
        for known in self._by_ip.get(new.ip, []):
            if known.uid == new.uid and known.kind == new.kind and known.start == new.start:
                return  # already recorded and closed: a relist sees a finished pod again
        exclusive = new.kind == "node" or not new.host_network
        if exclusive and new.end is None:
            for other in list(self._open_by_ip.get(new.ip, {}).values()):
                if other.uid == new.uid or other.kind != new.kind or other.host_network != new.host_network:
                    continue
                # Two pods (or two nodes) cannot hold one IP at once: the IP was reused, so the
                # older holding ended when the newer began, whether or not we saw it go.
                if other.start < new.start:
                    self._end_holding(other, new.start, True)
                else:
                    new.end, new.end_inferred = other.start, True
        self._by_ip.setdefault(new.ip, []).append(new)
        if new.end is None:
            self._open_holding(new)

    def _close(self, kind: str, uid: str, at: datetime, *, inferred: bool = False, keep_ips: set[str] | None = None) -> None:
        for ip, holding in list(self._open_by_obj.get((kind, uid), {}).items()):
            if keep_ips is None or ip not in keep_ips:
                self._end_holding(holding, at, inferred)

    def prune(self, before: datetime) -> int:
        """Forget holdings that ended before `before`, so a long-running sensor's memory stays bounded."""
        dropped = 0
        with self._lock:
            for ip in list(self._by_ip):
                kept = [h for h in self._by_ip[ip] if h.end is None or h.end >= before]
                dropped += len(self._by_ip[ip]) - len(kept)
                if kept:
                    self._by_ip[ip] = kept
                else:
                    del self._by_ip[ip]
            self.gaps = [g for g in self.gaps if g.end is None or g.end >= before]
        return dropped

    def observe_pod(self, pod: client.V1Pod, stream: str, at: datetime) -> None:
        """A pod as listed or watched at `at`: opens, updates or closes its holdings."""
        meta, spec = pod.metadata, pod.spec
        if meta is None or not meta.uid:
            return
        ips = _pod_ips(pod)
        start = _utc(pod.status.start_time if pod.status else None) or _utc(meta.creation_timestamp) or at
        phase = pod.status.phase if pod.status else None
        end: datetime | None = None
        if phase in ("Succeeded", "Failed"):
            end = max(_utc(_finished_at(pod)) or at, start)
        with self._lock:
            self._close("pod", meta.uid, at, keep_ips=set(ips))
            for ip in ips:
                self._add(
                    Holding(
                        ip=ip, kind="pod", name=meta.name or meta.uid, namespace=meta.namespace, uid=meta.uid,
                        workload=workload_of(meta), labels=dict(meta.labels or {}),
                        node=spec.node_name if spec else None, host_network=bool(spec and spec.host_network),
                        start=start, end=end,
                    ),
                    stream,
                )

    def remove_pod(self, pod: client.V1Pod, at: datetime) -> None:
        if pod.metadata and pod.metadata.uid:
            with self._lock:
                self._close("pod", pod.metadata.uid, at)

    def observe_node(self, node: client.V1Node, stream: str, at: datetime) -> None:
        meta = node.metadata
        if meta is None or not meta.uid:
            return
        addresses = [a.address for a in ((node.status.addresses if node.status else None) or []) if a.type in ("InternalIP", "ExternalIP")]
        start = _utc(meta.creation_timestamp) or at
        with self._lock:
            self._close("node", meta.uid, at, keep_ips=set(addresses))
            for ip in addresses:
                self._add(
                    Holding(ip=ip, kind="node", name=meta.name or meta.uid, uid=meta.uid, labels=dict(meta.labels or {}),
                            node=meta.name, start=start),
                    stream,
                )
            self.nodes_listed = True

    def remove_node(self, node: client.V1Node, at: datetime) -> None:
        if node.metadata and node.metadata.uid:
            with self._lock:
                self._close("node", node.metadata.uid, at)

    def reconcile(self, stream: str, kind: HolderKind, present: set[str], at: datetime) -> int:
        """After a relist: objects this stream knew that are gone ended while unwatched. Returns how many."""
        ended = 0
        with self._lock:
            for (k, uid), streams in list(self._scopes.items()):
                if k != kind or stream not in streams or uid in present:
                    continue
                streams.discard(stream)
                if not streams:
                    ended += bool(self._open_by_obj.get((kind, uid)))
                    self._close(kind, uid, at, inferred=True)
        return ended

    def open_gap(self, resource: str, at: datetime, reason: str) -> Gap:
        gap = Gap(resource=resource, start=at, reason=reason)
        with self._lock:
            self.gaps.append(gap)
        return gap

    # --- reads ---------------------------------------------------------------------------

    def resolve(self, ip: str, at: datetime) -> Resolution:
        """Who held `ip` at `at`; CIDRs decide the scope when no holding does."""
        at = _utc(at) or at
        with self._lock:
            holdings = list(self._by_ip.get(ip, ()))
            covering = [h for h in holdings if h.start <= at and (h.end is None or at < h.end)]
            gaps = [g for g in self.gaps if g.start <= at and (g.end is None or at < g.end)] if self.gaps else []
        notes = [
            f"kubernetes inventory blind for {g.resource} from {g.start.isoformat()}"
            + (f" to {g.end.isoformat()}" if g.end else " (still)")
            for g in gaps
        ]
        pods = [h for h in covering if h.kind == "pod" and not h.host_network]
        if pods:
            best = max(pods, key=lambda h: h.start)
            if len(pods) > 1:
                notes.append(f"ip {ip} claimed by several pods at once: {', '.join(f'{h.namespace}/{h.name}' for h in pods)}")
            if best.end_inferred and best.end is not None:
                notes.append(f"pod {best.namespace}/{best.name} end time inferred ({best.end.isoformat()})")
            return Resolution(scope="pod", holding=best, node=best.node, notes=notes)
        nodes = [h for h in covering if h.kind == "node"]
        host_pods = [h for h in covering if h.kind == "pod" and h.host_network]
        if nodes or host_pods:
            node_name = nodes[0].name if nodes else host_pods[0].node
            if host_pods:
                names = ", ".join(sorted(f"{h.namespace}/{h.name}" for h in host_pods))
                notes.append(f"node ip {ip} shared by host-network pods: {names}")
            return Resolution(scope="node", holding=nodes[0] if nodes else None, node=node_name, notes=notes)
        if holdings:
            spans = "; ".join(
                f"{h.kind} {h.namespace + '/' if h.namespace else ''}{h.name} {h.start.isoformat()}–{h.end.isoformat() if h.end else 'now'}"
                for h in holdings[-3:]
            )
            notes.append(f"ip {ip} known but not held at {at.isoformat()} ({spans})")
        with self._lock:
            pod_nets, node_nets, svc_nets = self._pod_nets, self._node_nets, self._service_nets
            nodes_listed = self.nodes_listed
        if _in(ip, pod_nets):
            notes.append(f"ip {ip} is in the pod CIDR but no watched pod held it")
            return Resolution(scope="pod", notes=notes)
        if _in(ip, node_nets):
            return Resolution(scope="node", notes=notes)
        if _in(ip, svc_nets):
            notes.append(f"ip {ip} is a service IP, not a workload")
            return Resolution(scope="unknown", notes=notes)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return Resolution(scope="unknown", notes=notes)
        if addr.is_loopback or addr.is_link_local:
            return Resolution(scope="unknown", notes=notes)
        if pod_nets and nodes_listed and not holdings:
            return Resolution(scope="external", notes=notes)
        return Resolution(scope="unknown", notes=notes)

    def holdings(self) -> list[Holding]:
        with self._lock:
            return [h.model_copy() for hs in self._by_ip.values() for h in hs]

    def snapshot(self, config: InventoryConfig, server: str | None = None) -> InventorySnapshot:
        with self._lock:
            return InventorySnapshot(
                taken_at=utcnow(), server=server, config=config,
                pod_cidrs=self.pod_cidrs, service_cidrs=self.service_cidrs, node_cidrs=self.node_cidrs,
                cidr_sources=dict(self.cidr_sources),
                holdings=sorted(self.holdings(), key=lambda h: (h.ip, h.start)),
                gaps=[g.model_copy() for g in self.gaps],
            )

    @classmethod
    def from_snapshot(cls, snap: InventorySnapshot) -> Inventory:
        inv = cls(pod_cidrs=snap.pod_cidrs, service_cidrs=snap.service_cidrs, node_cidrs=snap.node_cidrs,
                  cidr_sources=snap.cidr_sources)
        with inv._lock:
            for h in snap.holdings:
                inv._by_ip.setdefault(h.ip, []).append(h.model_copy())
                if h.kind == "node":
                    inv.nodes_listed = True
            inv.gaps = [g.model_copy() for g in snap.gaps]
        return inv


def save_snapshot(snap: InventorySnapshot, path: Path) -> None:
    path.write_text(snap.model_dump_json(indent=1) + "\n")


def load_snapshot(path: Path) -> InventorySnapshot:
    """A snapshot file; a wrong or damaged file is one line naming the fix."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AuditorError("no such inventory snapshot", file=str(path), fix="write one with `auditor k8s snapshot -o FILE`") from None
    try:
        return InventorySnapshot.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise AuditorError(
            f"not a Kubernetes inventory snapshot: {where}: {first['msg']}",
            file=str(path), fix="write it again with `auditor k8s snapshot -o FILE`",
        ) from None


# --- list + watch ---------------------------------------------------------------------------


@dataclass
class _Stream:
    """One list+watch: pods of one namespace and selector, or all nodes."""

    key: str
    resource: Literal["pods", "nodes"]
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    gap: Gap | None = None
    failures: int = 0
    synced: threading.Event = field(default_factory=threading.Event)


def _pod_streams(core: client.CoreV1Api, cfg: InventoryConfig) -> list[_Stream]:
    field_selector = f"spec.nodeName={cfg.node_name}" if cfg.node_name else None
    selectors: list[str | None] = list(cfg.label_selectors) or [None]
    streams = []
    for ns in cfg.namespaces:
        for sel in selectors:
            kwargs: dict[str, Any] = {}
            if sel:
                kwargs["label_selector"] = sel
            if field_selector:
                kwargs["field_selector"] = field_selector
            if ns == ALL_NAMESPACES:
                fn = core.list_pod_for_all_namespaces
            else:
                fn, kwargs["namespace"] = core.list_namespaced_pod, ns
            key = f"pods ns={ns}" + (f" labels={sel}" if sel else "") + (f" fields={field_selector}" if field_selector else "")
            streams.append(_Stream(key=key, resource="pods", fn=fn, kwargs=kwargs))
    return streams


class InventoryWatcher:
    """Keeps an Inventory current: relist on 410 Gone, reconnect with backoff, chain outages.

    An outage chains an `error` record when it starts and a `gap` record (from, to,
    attempts, reason) when the API answers again, through the sensor's BatchWriter and
    under its sensor id, when one is given.
    """

    def __init__(
        self,
        inventory: Inventory,
        api: client.ApiClient,
        config: InventoryConfig,
        writer: BatchWriter | None = None,
    ) -> None:
        self.inventory = inventory
        self.api = api
        self.config = config
        self.writer = writer
        self.relists = 0
        self.reconnects = 0
        self.events = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: dict[str, watch.Watch] = {}
        self._services_discovered = False
        core = client.CoreV1Api(api)
        self._streams = _pod_streams(core, config) + [_Stream(key="nodes", resource="nodes", fn=core.list_node, kwargs={})]

    @property
    def server(self) -> str:
        return server_of(self.api)

    def start(self) -> None:
        """Background threads, one per stream; never blocks the sensor on the API."""
        for stream in self._streams:
            t = threading.Thread(target=self._run, args=(stream,), name=f"k8s-{stream.key}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_synced(self, timeout: float) -> bool:
        """True once every stream has listed at least once."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            for s in self._streams:
                while not s.synced.wait(0.05):
                    if deadline.is_set() or self._stop.is_set():
                        return False
            return True
        finally:
            timer.cancel()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for w in list(self._watches.values()):
            w.stop()
        for t in self._threads:
            t.join(timeout)
        now = utcnow()
        for s in self._streams:
            if s.gap is not None:
                self._end_gap(s, now, "until the inventory stopped")

    def sync_once(self) -> None:
        """List everything once, without watching: what `auditor k8s snapshot` does."""
        for stream in self._streams:
            try:
                self._relist(stream)
            except ApiException as exc:
                raise AuditorError(
                    f"kubernetes API refused to list {stream.key}: HTTP {exc.status} {exc.reason}",
                    fix="check the kubeconfig's credentials and that its account may list pods and nodes (see `auditor k8s manifests` RBAC)",
                ) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise AuditorError(
                    f"kubernetes API at {self.server} unreachable: {type(exc).__name__}",
                    fix="check --kubeconfig/--context and that the API server is reachable",
                ) from None

    # --- CIDR discovery --------------------------------------------------------------------

    def discover_service_cidrs(self) -> None:
        """ServiceCIDR objects (networking.k8s.io/v1, Kubernetes 1.33+) when the API serves them."""
        self._services_discovered = True
        try:
            result = client.NetworkingV1Api(self.api).list_service_cidr(_request_timeout=self.config.connect_timeout)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.info("service CIDRs not discoverable (%s); using the overlay's", exc)
            return
        cidrs = [c for item in result.items or [] if item.spec for c in (item.spec.cidrs or [])]
        if cidrs:
            self.inventory.set_cidrs(service=cidrs, sources={"service": "api"})

    def _discover_pod_cidrs(self, nodes: list[client.V1Node]) -> None:
        cidrs = [c for n in nodes if n.spec for c in (n.spec.pod_cidrs or ([n.spec.pod_cidr] if n.spec.pod_cidr else []))]
        if cidrs:
            self.inventory.set_cidrs(pod=cidrs, sources={"pod": "api"})

    # --- the loop ---------------------------------------------------------------------------

    def _relist(self, stream: _Stream) -> str:
        at = utcnow()
        items: list[Any] = []
        cont: str | None = None
        while True:
            kwargs = dict(stream.kwargs, limit=500, _request_timeout=(self.config.connect_timeout, self.config.watch_timeout))
            if cont:
                kwargs["_continue"] = cont
            result = stream.fn(**kwargs)
            items.extend(result.items or [])
            cont = result.metadata.var_continue if result.metadata else None
            if not cont:
                break
        inv = self.inventory
        if stream.resource == "pods":
            for pod in items:
                inv.observe_pod(pod, stream.key, at)
            inv.reconcile(stream.key, "pod", {p.metadata.uid for p in items if p.metadata}, at)
        else:
            for node in items:
                inv.observe_node(node, stream.key, at)
            inv.reconcile(stream.key, "node", {n.metadata.uid for n in items if n.metadata}, at)
            inv.nodes_listed = True
            self._discover_pod_cidrs(items)
            if not self._services_discovered:
                self.discover_service_cidrs()
        stream.synced.set()
        return str(result.metadata.resource_version if result.metadata else "")

    def _apply(self, stream: _Stream, event: dict[str, Any]) -> None:
        kind, obj, at = event.get("type"), event.get("object"), utcnow()
        if kind not in ("ADDED", "MODIFIED", "DELETED") or obj is None:
            return
        self.events += 1
        if stream.resource == "pods":
            if kind == "DELETED":
                self.inventory.remove_pod(obj, at)
            else:
                self.inventory.observe_pod(obj, stream.key, at)
        elif kind == "DELETED":
            self.inventory.remove_node(obj, at)
        else:
            self.inventory.observe_node(obj, stream.key, at)
            if obj.spec and (obj.spec.pod_cidrs or obj.spec.pod_cidr):
                self._discover_pod_cidrs([obj])

    def _run(self, stream: _Stream) -> None:
        rv: str | None = None
        last_gone = 0.0
        while not self._stop.is_set():
            w: watch.Watch | None = None
            try:
                if rv is None:
                    rv = self._relist(stream)
                    self._healthy(stream)
                    self.inventory.prune(utcnow() - timedelta(hours=self.config.history_hours))
                w = watch.Watch()
                self._watches[stream.key] = w
                for event in w.stream(
                    stream.fn,
                    resource_version=rv,
                    timeout_seconds=self.config.watch_timeout,
                    allow_watch_bookmarks=True,
                    _request_timeout=(self.config.connect_timeout, self.config.watch_timeout + 5),
                    **stream.kwargs,
                ):
                    self._healthy(stream)
                    self._apply(stream, event)
                    if self._stop.is_set():
                        break
                rv = w.resource_version or rv
                self._healthy(stream)
            except ApiException as exc:
                if exc.status == 410:  # the resourceVersion expired: the watch cannot resume, relist
                    self.relists += 1
                    rv = None
                    if time.monotonic() - last_gone < 1.0:  # Gone again at once: do not spin on the API
                        self._stop.wait(self.config.backoff_initial)
                    last_gone = time.monotonic()
                    continue
                rv = None  # after an outage, relist: it reconciles what changed meanwhile and proves the API is back
                self._failed(stream, f"HTTP {exc.status} {exc.reason}")
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                rv = None
                self._failed(stream, f"{type(exc).__name__}: {exc}"[:300])
            except Exception as exc:  # a watcher thread must not die silently: record it and retry
                log.exception("kubernetes watch of %s failed", stream.key)
                rv = None
                self._failed(stream, f"unexpected {type(exc).__name__}: {exc}"[:300])
            finally:
                self._watches.pop(stream.key, None)

    def _backoff(self, failures: int) -> float:
        base = min(self.config.backoff_max, self.config.backoff_initial * (2 ** min(failures - 1, 16)))
        return base * (0.5 + random.random() / 2)

    def _failed(self, stream: _Stream, reason: str) -> None:
        stream.failures += 1
        now = utcnow()
        if stream.gap is None:
            stream.gap = self.inventory.open_gap(stream.key, now, reason)
            self._chain(
                sensor_event(
                    self._sensor_id, "error",
                    detail=f"kubernetes API unavailable for {stream.key} at {self.server}: {reason}; attribution continues from the last known state",
                )
            )
        else:
            stream.gap.attempts += 1
            stream.gap.reason = reason
        self.reconnects += 1
        self._stop.wait(self._backoff(stream.failures))

    def _healthy(self, stream: _Stream) -> None:
        stream.failures = 0
        if stream.gap is not None:
            self._end_gap(stream, utcnow(), "until the API answered again")

    def _end_gap(self, stream: _Stream, at: datetime, how: str) -> None:
        gap = stream.gap
        if gap is None:
            return
        stream.gap = None
        gap.end = at
        self._chain(
            sensor_event(
                self._sensor_id, "gap",
                detail=(
                    f"kubernetes API unavailable for {gap.resource} from {gap.start.isoformat()} to {at.isoformat()} "
                    f"({how}; {gap.attempts} failed attempts, last: {gap.reason}); objects that came and went then are not attributed"
                ),
            )
        )

    @property
    def _sensor_id(self) -> str:
        """Outages go in the chain of the sensor whose attribution they blind."""
        return self.writer.sensor_id if self.writer is not None else self.config.sensor_id

    def _chain(self, event: Any) -> None:
        if self.writer is not None:
            self.writer.submit(event)


# --- entry points for sensors and the CLI ---------------------------------------------------------


def with_overlay_cidrs(config: InventoryConfig, overlay: Path | None) -> InventoryConfig:
    """Fill the fallback CIDRs from a site overlay's `cluster:` section (used when the API has none)."""
    if overlay is None:
        return config
    from auditor.rules.source import read_yaml, validation_error
    from auditor.rules.spec import OverlayFile

    doc, _ = read_yaml(overlay)
    try:
        site = OverlayFile.model_validate(doc.data)
    except ValidationError as exc:
        raise validation_error(doc, exc, OverlayFile) from None
    return config.model_copy(update={
        "pod_cidrs": config.pod_cidrs or site.cluster.pod_cidrs,
        "service_cidrs": config.service_cidrs or site.cluster.service_cidrs,
        "node_cidrs": config.node_cidrs or site.cluster.node_cidrs,
    })


def new_inventory(config: InventoryConfig) -> Inventory:
    return Inventory(pod_cidrs=config.pod_cidrs, service_cidrs=config.service_cidrs, node_cidrs=config.node_cidrs)


def start_inventory(
    api: client.ApiClient, config: InventoryConfig, writer: BatchWriter | None = None, *, sync_timeout: float = 10.0
) -> InventoryWatcher:
    """What a sensor calls: list, then keep watching in the background. The sensor reads
    `watcher.inventory` (see `auditor.k8s.attribute.attribute`) and calls `watcher.stop()`."""
    watcher = InventoryWatcher(new_inventory(config), api, config, writer)
    watcher.start()
    if not watcher.wait_synced(sync_timeout):
        log.warning("kubernetes inventory not synced after %.0f s; attributing what is known so far", sync_timeout)
    return watcher


def config_from_env(env: dict[str, str]) -> InventoryConfig | None:
    """The sensors' in-cluster settings (set by `auditor k8s manifests`): AUDITOR_K8S_INVENTORY
    turns the inventory on, AUDITOR_K8S_NAMESPACES lists namespaces, AUDITOR_K8S_NODE narrows
    a probe to its own node's pods."""
    if not env.get("AUDITOR_K8S_INVENTORY"):
        return None
    namespaces = [n.strip() for n in env.get("AUDITOR_K8S_NAMESPACES", GRETEL_NAMESPACE).split(",") if n.strip()]
    return InventoryConfig(
        namespaces=namespaces or [GRETEL_NAMESPACE],
        node_name=env.get("AUDITOR_K8S_NODE") or None,
    )


class SnapshotSummary(BaseModel):
    path: str
    pods: int
    nodes: int
    holdings: int
    gaps: int
    relists: int
    cidr_sources: dict[str, CidrSource]


def take_snapshot(
    api: client.ApiClient,
    config: InventoryConfig,
    out: Path,
    *,
    follow: float = 0.0,
    store_url: str | None = None,
) -> SnapshotSummary:
    """List once (or list and watch for `follow` seconds, chaining outages into the store),
    then write the snapshot importers attribute with."""
    inventory = new_inventory(config)
    watcher: InventoryWatcher
    if follow <= 0:
        watcher = InventoryWatcher(inventory, api, config)
        watcher.sync_once()
    else:
        from auditor.store.base import open_store

        store = open_store(store_url) if store_url else None
        writer = BatchWriter(store, config.sensor_id) if store is not None else None
        try:
            if writer is not None:
                writer.start(detail=f"kubernetes inventory of {', '.join(config.namespaces)} at {server_of(api)}")
            watcher = InventoryWatcher(inventory, api, config, writer)
            watcher.start()
            watcher.wait_synced(min(follow, 30.0))
            try:
                threading.Event().wait(follow)
            except KeyboardInterrupt:
                log.info("stopped early; writing what was seen")
            watcher.stop()
        finally:
            if writer is not None:
                writer.stop(detail="snapshot written")
            if store is not None:
                store.close()
    snap = inventory.snapshot(config, server_of(api))
    save_snapshot(snap, out)
    return SnapshotSummary(
        path=str(out),
        pods=len({h.uid for h in snap.holdings if h.kind == "pod"}),
        nodes=len({h.uid for h in snap.holdings if h.kind == "node"}),
        holdings=len(snap.holdings), gaps=len(snap.gaps), relists=watcher.relists, cidr_sources=snap.cidr_sources,
    )
