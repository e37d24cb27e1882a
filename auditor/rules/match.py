"""Match one destination name against a pack: exact host, wildcard (exactly one
more label), IP and CIDR, port, TLS, method, path glob, scope, and for object
storage the bucket.

Results are lists of hits, ``(rule_id, reason)``. What does not depend on the
path is cached per (host, port, scope, plaintext, method, bucket) on the pack,
so a stream of events to the same few hosts costs a dict lookup each.
"""

from __future__ import annotations

import ipaddress
import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

from auditor.model import SEVERITY_ORDER
from auditor.rules.hosts import MAX_HOST, host_kind, normalise_host
from auditor.rules.pack import Endpoint, Pack
from auditor.rules.storage import StorageHost, bucket_of, storage_host, write_method

Hit = tuple[str, str]  # (rule id, reason)

ACTION_RANK = {"allowed": 0, "unverified": 1, "violation": 2}
_CACHE_LIMIT = 50_000
_BOTH_SCOPES = frozenset({"pod", "node"})


@dataclass(frozen=True, slots=True)
class NameInfo:
    """What the pack says about a host before any request detail: its candidates."""

    host: str
    is_ip: bool
    internal: bool
    endpoints: tuple[Endpoint, ...]
    storage: StorageHost | None
    path_dependent: bool  # some candidate has deny routes or path globs


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of an event that decide a destination's verdict."""

    port: int | None
    scope: str  # pod, node, or unknown
    plaintext: bool  # HTTP without TLS, or a flow known not to be TLS
    method: str | None
    path: str | None  # normalised, without the query
    transport: str = "tcp"


def normalise_path(path: str | None) -> str | None:
    """Percent-decoded, dot segments resolved, no duplicate slashes, no query: one spelling per route."""
    if path is None:
        return None
    raw = path
    if "?" in raw or "#" in raw:
        raw = raw.split("?", 1)[0].split("#", 1)[0]
    if "%" in raw:
        raw = unquote(raw)
    if not raw.startswith("/"):
        raw = "/" + raw
    if "//" in raw or "/." in raw:
        raw = posixpath.normpath(raw)
        if raw.startswith("//"):
            raw = "/" + raw.lstrip("/")
    return raw


def name_info(pack: Pack, raw_host: str) -> NameInfo:
    """Candidates for a host (normalised here), cached on the pack."""
    key = ("name", raw_host)
    cached = pack.cache.get(key)
    if cached is not None:
        return cached
    host = normalise_host(raw_host)
    kind = host_kind(host)
    endpoints: list[Endpoint] = []
    if kind == "name":
        endpoints.extend(pack.exact.get(host, ()))
        parent = host.split(".", 1)[1] if "." in host else None
        if parent is not None:
            endpoints.extend(pack.wildcard.get(parent, ()))
        internal = pack.is_internal_name(host)
    else:
        addr = ipaddress.ip_address(host)
        endpoints.extend(ep for net, ep in pack.networks if addr.version == net.version and addr in net)
        endpoints.extend(pack.exact.get(host, ()))
        internal = pack.is_internal_address(addr)
    info = NameInfo(
        host=host,
        is_ip=kind != "name",
        internal=internal,
        endpoints=tuple(dict.fromkeys(endpoints)),
        storage=storage_host(host) if kind == "name" else None,
        path_dependent=any(ep.deny or ep.path_regex is not None for ep in endpoints),
    )
    if len(raw_host) <= MAX_HOST:
        if len(pack.cache) > _CACHE_LIMIT:
            pack.cache.clear()
        pack.cache[key] = info
    return info


def _rank(pack: Pack, hits: list[Hit]) -> tuple[int, int]:
    worst = (0, 0)
    for rule_id, _ in hits:
        rule = pack.rules[rule_id]
        worst = max(worst, (ACTION_RANK[rule.action], SEVERITY_ORDER[rule.severity]))
    return worst


def check_endpoint(pack: Pack, ep: Endpoint, host: str, req: Request, note: str = "") -> list[Hit]:
    """Everything about a request this endpoint forbids, or its allow rule."""
    fails: list[Hit] = []
    if req.scope in ("pod", "node"):
        if req.scope not in ep.scopes:
            fails.append(("egress.scope", f"{host} is for {' and '.join(sorted(ep.scopes))}s; this came from a {req.scope}"))
    elif ep.scopes != _BOTH_SCOPES:
        fails.append(("egress.scope-unknown", f"{host} is for {' and '.join(sorted(ep.scopes))}s; the source is not attributed"))
    if req.port is not None and req.port not in ep.ports:
        fails.append(("egress.port", f"{host} on port {req.port}; the endpoint allows {', '.join(map(str, sorted(ep.ports)))}"))
    if ep.transport != "any" and req.transport != ep.transport and req.transport in ("tcp", "udp", "other"):
        over = "another IP protocol" if req.transport == "other" else req.transport.upper()
        fails.append(("egress.port", f"{host} over {over}; the endpoint is {ep.transport.upper()} only"))
    if ep.tls and req.plaintext:
        fails.append(("egress.plaintext", f"{host} without TLS; the endpoint requires HTTPS"))
    if req.method is not None and ep.methods is not None and req.method not in ep.methods:
        fails.append((ep.method_rule, f"{req.method} to {host}; the endpoint allows {', '.join(sorted(ep.methods))}"))
    if fails:
        return fails
    where = f"{host}:{req.port}" if req.port is not None else host
    what = f"{req.method} {where}" if req.method else where
    return [(ep.rule, f"{what} matches endpoint {ep.id}{note}")]


def check_path(ep: Endpoint, host: str, method: str | None, path: str | None) -> list[Hit]:
    """Deny routes and path globs: per request, never cached (paths carry ids)."""
    if path is None:
        return []
    for deny in ep.deny:
        if (deny.method is None or deny.method == method) and deny.regex.match(path):
            return [(deny.rule, f"{method or 'request'} {path} on {host} is the forbidden route {deny.glob}")]
    if ep.path_regex is not None and not ep.path_regex.match(path):
        return [(ep.method_rule, f"{path} on {host} is outside the endpoint's paths {', '.join(ep.paths or ())}")]
    return []


def _best(pack: Pack, results: list[tuple[list[Hit], Endpoint | None]]) -> tuple[list[Hit], Endpoint | None]:
    """Among the endpoints a name matches, the most permissive verdict wins (an overlay adds, never takes away)."""
    return min(results, key=lambda r: _rank(pack, r[0]))


def _foreign(storage: StorageHost, method: str | None) -> str:
    """The rule for somebody else's bucket: S3 has its own (it is one of the contract's hosts)."""
    prefix = "s3" if storage.service == "s3" else "storage"
    return f"{prefix}.foreign-bucket-write" if write_method(method) else f"{prefix}.foreign-bucket"


def _storage(pack: Pack, info: NameInfo, req: Request) -> tuple[list[Hit], Endpoint | None]:
    storage = info.storage
    assert storage is not None
    host = info.host
    bucket = bucket_of(storage, req.path)
    plain = [ep for ep in info.endpoints if not ep.buckets]
    if bucket is not None:
        grants = [
            ep for ep in pack.bucket_grants.get((storage.service, bucket), ())
            if ep.any_storage_host or ep in info.endpoints
        ]
        if grants or plain:
            results = [(check_endpoint(pack, ep, host, req, f" (bucket {bucket})"), ep) for ep in grants + plain]
            return _best(pack, results)
        elsewhere = pack.bucket_grants.get((storage.service, bucket), ())
        if elsewhere:
            hosts = sorted({h for ep in elsewhere for h in ep.hosts})
            return [("egress.host-not-allowed", f"bucket '{bucket}' is allowed only via {', '.join(hosts)}, not {host}")], None
        rule = _foreign(storage, req.method)
        verb = f"{req.method} to" if req.method else "connection to"
        return [(rule, f"{verb} bucket '{bucket}' on {host}: neither the registry layer bucket nor a customer bucket in the overlay")], None
    if req.method is not None:
        if info.endpoints:
            rule = _foreign(storage, req.method)
            return [(rule, f"{req.method} {req.path or '/'} on {host} names no bucket (an account-level storage call)")], None
        return [("egress.host-not-allowed", f"{host} is not in the pack and the request names no bucket")], None
    # Flow or TLS without HTTP: the bucket is not visible; the proxy's event for the same
    # connection judges the bucket, so here only host, port and scope count.
    note = " (bucket not visible at this layer)"
    if info.endpoints:
        return _best(pack, [(check_endpoint(pack, ep, host, req, note), ep) for ep in info.endpoints])
    site = [ep for (service, _), eps in pack.bucket_grants.items() if service == storage.service for ep in eps if ep.any_storage_host]
    if storage.service == "azure":
        site = [ep for ep in site if host in ep.hosts]
    if site:
        return _best(pack, [(check_endpoint(pack, ep, host, req, note), ep) for ep in site])
    return [("egress.host-not-allowed", f"{host} is {storage.service} storage the pack does not allow")], None


def judge_name(pack: Pack, raw_host: str, req: Request) -> tuple[list[Hit], Endpoint | None]:
    """The verdict for one name (or IP) the destination went by, and the endpoint that decided it."""
    info = name_info(pack, raw_host)
    if info.internal:
        return [("net.internal", f"{info.host} is cluster-internal")], None
    bucket_part = bucket_of(info.storage, req.path) if info.storage is not None else None
    key = ("verdict", info.host, req.port, req.scope, req.plaintext, req.method, req.transport, bucket_part)
    cached = pack.cache.get(key)
    if cached is None:
        if info.storage is not None:
            cached = _storage(pack, info, req)
        elif info.endpoints:
            cached = _best(pack, [(check_endpoint(pack, ep, info.host, req), ep) for ep in info.endpoints])
        else:
            what = "an IP address no endpoint names" if info.is_ip else "not one of the pack's endpoints"
            cached = ([("egress.host-not-allowed", f"{info.host} is {what}")], None)
        if len(info.host) <= MAX_HOST:
            if len(pack.cache) > _CACHE_LIMIT:
                pack.cache.clear()
            pack.cache[key] = cached
    hits, ep = cached
    if ep is not None and info.path_dependent and pack.rules[hits[0][0]].action == "allowed":
        denied = check_path(ep, info.host, req.method, req.path)
        if denied:
            return denied, ep
    return hits, ep
