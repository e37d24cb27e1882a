"""Load, validate and compose rule packs: the base pack plus site overlays,
compiled into one `Pack` the policy judges against.

Validation is two passes: pydantic checks the shape (types, unknown keys,
ports), then `_check_pack` checks what pydantic cannot see (duplicate ids,
references to rules and contract lines that do not exist, rules the engine
needs). Both report one line with the file, the line and the fix.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from auditor.errors import AuditorError
from auditor.model import Action, LikelihoodName, Severity
from auditor.rules.hosts import host_kind, normalise_host, parse_ipv4
from auditor.rules.source import PathKey, YamlDoc, read_yaml, validation_error
from auditor.rules.spec import (
    BucketSpec,
    ContractLine,
    EndpointSpec,
    ForbiddenClassSpec,
    HostAllowSpec,
    MetadataKindSpec,
    OverlayFile,
    PackFile,
    PackInfo,
    template_names,
)
from auditor.rules.storage import Service, parse_bucket_uri

SHIPPED_PACK = "gretel-hybrid.yaml"
SHIPPED_OVERLAY_EXAMPLE = "site-example.yaml"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Rules the engine itself decides with; every base pack must define them.
ENGINE_RULES: dict[str, tuple[Action, ...]] = {
    "net.internal": ("allowed",),
    "net.no-inbound": ("violation",),
    "egress.host-not-allowed": ("violation",),
    "egress.scope": ("violation",),
    "egress.scope-unknown": ("unverified", "violation"),
    "egress.port": ("violation",),
    "egress.plaintext": ("violation",),
    "egress.method": ("violation",),
    "egress.no-destination": ("unverified", "violation"),
    "s3.foreign-bucket": ("violation",),
    "s3.foreign-bucket-write": ("violation",),
    "storage.foreign-bucket": ("violation",),
    "storage.foreign-bucket-write": ("violation",),
    "site.customer-bucket": ("allowed",),
    "site.bucket-method": ("violation",),
    "site.kms": ("allowed",),
    "site.allowed-host": ("allowed",),
    "dns.lookup": ("allowed",),
    "dns.outside-pack": ("violation", "unverified"),
    "payload.metadata": ("allowed",),
    "payload.not-inspected": ("unverified",),
    "payload.unlabelled": ("unverified",),
    "payload.unknown-kind": ("unverified",),
    "policy.unknown-observation": ("unverified",),
    "policy.unknown-label": ("unverified",),
}


class Rule(BaseModel):
    """A rule as the policy and the report use it: the contract line is resolved to its text."""

    model_config = ConfigDict(frozen=True)

    id: str
    action: Action
    severity: Severity
    message: str
    contract: str
    contract_text: str
    contract_section: str
    remediation: str
    controls: list[str]
    likelihood: LikelihoodName | None = None


class PackSource(BaseModel):
    """One file that went into a composed pack, with its digest (evidence of which rules judged)."""

    model_config = ConfigDict(frozen=True)

    kind: str  # "pack" or "overlay"
    path: str
    id: str
    sha256: str


@dataclass(frozen=True, slots=True)
class DenyRoute:
    method: str | None
    glob: str
    regex: re.Pattern[str]
    rule: str


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A compiled endpoint: normalised hosts, parsed networks, sets for fast checks."""

    id: str
    hosts: tuple[str, ...]
    networks: tuple[Network, ...]
    ports: frozenset[int]
    transport: str  # tcp, udp or any
    tls: bool
    scopes: frozenset[str]
    methods: frozenset[str] | None
    paths: tuple[str, ...] | None
    path_regex: re.Pattern[str] | None
    deny: tuple[DenyRoute, ...]
    buckets: frozenset[tuple[Service, str]]
    any_storage_host: bool  # a customer bucket: reachable on any host of its storage service
    boundary: str
    rule: str
    method_rule: str
    contract: str
    description: str
    origin: str

    @property
    def judges_payload(self) -> bool:
        """Bodies to the vendor are judged; bodies to the customer's own storage and KMS are not egress of data."""
        return self.boundary == "vendor"


@dataclass
class Site:
    """What the overlays say about this site, composed (later overlays add to and override earlier ones)."""

    ids: list[str] = field(default_factory=list)
    registry_region: str | None = None
    buckets: list[BucketSpec] = field(default_factory=list)
    kms: list[HostAllowSpec] = field(default_factory=list)
    allow: list[HostAllowSpec] = field(default_factory=list)
    pod_cidrs: list[str] = field(default_factory=list)
    service_cidrs: list[str] = field(default_factory=list)
    node_cidrs: list[str] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    dns_suffixes: list[str] = field(default_factory=lambda: ["cluster.local"])
    proxy: str | None = None
    unknown_scope: str = "unverified"

    @property
    def proxy_host_port(self) -> tuple[str, int] | None:
        if self.proxy is None:
            return None
        text = self.proxy.split("://", 1)[-1].rstrip("/")
        host, _, port = text.rpartition(":")
        return normalise_host(host), int(port)


def glob_regex(globs: Iterable[str]) -> re.Pattern[str]:
    """Path globs: ``*`` is one path segment, ``**`` any number of segments (a trailing
    ``/**`` matches the parent too: ``/projects/*/artifacts/**`` covers ``/projects/p/artifacts``)."""
    parts = []
    for glob in globs:
        out = []
        i = 0
        while i < len(glob):
            if glob.startswith("/**", i) and i + 3 == len(glob):
                out.append("(?:/.*)?")  # a trailing /** also matches the bare parent
                i += 3
            elif glob.startswith("**", i):
                out.append(".*")
                i += 2
            elif glob[i] == "*":
                out.append("[^/]+")
                i += 1
            else:
                out.append(re.escape(glob[i]))
                i += 1
        parts.append("".join(out))
    return re.compile("^(?:" + "|".join(parts) + ")/?$")


class Pack:
    """A composed, validated rule pack. Immutable once built; the policy keeps its caches on it."""

    def __init__(
        self,
        info: PackInfo,
        rules: dict[str, Rule],
        endpoints: list[Endpoint],
        site_endpoints: list[Endpoint],
        contract: list[ContractLine],
        metadata_kinds: list[MetadataKindSpec],
        forbidden_classes: list[ForbiddenClassSpec],
        observations: dict[str, str],
        labels: dict[str, str],
        site: Site,
        sources: list[PackSource],
        region: str,
    ) -> None:
        self.info = info
        self.id = info.id
        self.rules = rules
        self.endpoints = endpoints
        self.site_endpoints = site_endpoints
        self.contract = contract
        self.metadata_kinds = metadata_kinds
        self.metadata_kind_ids = frozenset(k.id for k in metadata_kinds)
        self.forbidden_classes = forbidden_classes
        self.observations = observations
        self.labels = labels
        self.site = site
        self.sources = sources
        self.region = region
        self.digest = "sha256:" + hashlib.sha256(
            "\n".join(f"{s.kind} {s.sha256}" for s in sources).encode()
        ).hexdigest()
        self._build_index()
        self.cache: dict[Any, Any] = {}
        self._scopes: dict[str, str | None] = {}  # source address -> scope_of, for unattributed sources

    def rule(self, rule_id: str) -> Rule:
        try:
            return self.rules[rule_id]
        except KeyError:
            raise AuditorError(f"no rule '{rule_id}' in pack {self.id}", fix="run 'auditor rules show' for the rule ids") from None

    @property
    def all_endpoints(self) -> list[Endpoint]:
        return self.endpoints + self.site_endpoints

    def _build_index(self) -> None:
        self.exact: dict[str, list[Endpoint]] = {}
        self.wildcard: dict[str, list[Endpoint]] = {}
        self.networks: list[tuple[Network, Endpoint]] = []
        self.bucket_grants: dict[tuple[Service, str], list[Endpoint]] = {}
        for ep in self.all_endpoints:
            for host in ep.hosts:
                if host.startswith("*."):
                    self.wildcard.setdefault(host[2:], []).append(ep)
                else:
                    self.exact.setdefault(host, []).append(ep)
            for net in ep.networks:
                self.networks.append((net, ep))
            for key in ep.buckets:
                self.bucket_grants.setdefault(key, []).append(ep)
        site = self.site
        self.internal_networks: list[Network] = [
            ipaddress.ip_network(c, strict=False)
            for c in (*site.pod_cidrs, *site.service_cidrs, *site.node_cidrs, *site.dns_servers)
        ]
        self.scope_networks: list[tuple[Network, str]] = [
            *((ipaddress.ip_network(c, strict=False), "pod") for c in site.pod_cidrs),
            *((ipaddress.ip_network(c, strict=False), "node") for c in site.node_cidrs),
        ]
        self.internal_suffixes = tuple(normalise_host(s) for s in site.dns_suffixes)
        self.internal_hosts: set[str] = set()
        proxy = site.proxy_host_port
        if proxy is not None:
            host = proxy[0]
            if parse_ipv4(host) is not None or ":" in host:
                self.internal_networks.append(ipaddress.ip_network(host))
            else:
                self.internal_hosts.add(host)

    def is_internal(self, ip_or_host: str) -> bool:
        """Inside the cluster: an overlay CIDR, the cluster DNS or proxy, or a name under the cluster DNS suffix."""
        host = normalise_host(ip_or_host)
        if not host:
            return False
        if host_kind(host) == "name":  # cached; ip_address() failing on every name cost ~10 us a call
            return self.is_internal_name(host)
        return self.is_internal_address(ipaddress.ip_address(host))

    def scope_of(self, ip: str) -> str | None:
        """'pod' or 'node' for a source address in the overlay's pod or node CIDRs (attribution without an inventory)."""
        known = self._scopes.get(ip, False)
        if known is not False:
            return known
        host = normalise_host(ip)
        scope = None
        if host_kind(host) != "name":
            addr = ipaddress.ip_address(host)
            scope = next((scope for net, scope in self.scope_networks if addr.version == net.version and addr in net), None)
        if len(self._scopes) > 65536:
            self._scopes.clear()
        self._scopes[ip] = scope
        return scope

    def is_internal_name(self, host: str) -> bool:
        """`is_internal` for a normalised DNS name."""
        if host in self.internal_hosts:
            return True
        return any(host == s or host.endswith("." + s) for s in self.internal_suffixes)

    def is_internal_address(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(addr.version == net.version and addr in net for net in self.internal_networks)

    def __repr__(self) -> str:
        return f"Pack({self.id!r}, rules={len(self.rules)}, endpoints={len(self.endpoints)}+{len(self.site_endpoints)}, digest={self.digest[:19]}…)"


# --- loading --------------------------------------------------------------------------------


def shipped_path(name: str = SHIPPED_PACK) -> Path:
    """A file of the shipped rules (package data `auditor.packs`), found outside a checkout too."""
    ref = resources.files("auditor.packs").joinpath(name)
    with resources.as_file(ref) as path:
        return Path(path)


def _validate(doc: YamlDoc, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise validation_error(doc, exc, model) from None


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _unique(doc: YamlDoc, section: str, items: Sequence[Any], what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        loc: PathKey = (section, i, "id")
        line = doc.line_of(loc)
        if item.id in seen:
            raise AuditorError(
                f"duplicate {what} id '{item.id}' (first defined at line {seen[item.id]})",
                file=doc.file,
                line=line,
                fix=f"give each {what} a unique id",
            )
        seen[item.id] = line


def _check_pack(doc: YamlDoc, spec: PackFile) -> None:
    _unique(doc, "rules", spec.rules, "rule")
    _unique(doc, "endpoints", spec.endpoints, "endpoint")
    _unique(doc, "contract", spec.contract, "contract line")
    _unique(doc, "metadata_kinds", spec.metadata_kinds, "metadata kind")
    _unique(doc, "forbidden_classes", spec.forbidden_classes, "forbidden class")
    rules = {r.id: r for r in spec.rules}
    contract = {c.id for c in spec.contract}

    def need_rule(loc: PathKey, rule_id: str, actions: tuple[str, ...]) -> None:
        rule = rules.get(rule_id)
        if rule is None:
            raise doc.error(loc, f"unknown rule '{rule_id}' {doc.describe(loc[:-1])}", f"define a rule with id '{rule_id}' under 'rules:'")
        if rule.action not in actions:
            raise doc.error(
                loc,
                f"rule '{rule_id}' has action '{rule.action}' but is used where {' or '.join(actions)} is needed {doc.describe(loc[:-1])}",
                f"point at a rule whose action is {' or '.join(actions)}",
            )

    def need_contract(loc: PathKey, ref: str) -> None:
        if ref not in contract:
            raise doc.error(loc, f"unknown contract line '{ref}' {doc.describe(loc[:-1])}", "cite the id of a line under 'contract:'")

    for i, r in enumerate(spec.rules):
        need_contract(("rules", i, "contract"), r.contract)
    for i, k in enumerate(spec.metadata_kinds):
        need_contract(("metadata_kinds", i, "contract"), k.contract)
    for i, c in enumerate(spec.forbidden_classes):
        need_contract(("forbidden_classes", i, "contract"), c.contract)
        for j, label in enumerate(c.labels):
            if label not in spec.labels:
                raise doc.error(
                    ("forbidden_classes", i, "labels", j),
                    f"label '{label}' has no rule under 'labels:' {doc.describe(('forbidden_classes', i))}",
                    f"add '{label}: <rule id>' under 'labels:'",
                )
    for i, ep in enumerate(spec.endpoints):
        need_contract(("endpoints", i, "contract"), ep.contract)
        need_rule(("endpoints", i, "rule"), ep.rule, ("allowed",))
        need_rule(("endpoints", i, "method_rule"), ep.method_rule, ("violation", "unverified"))
        for j, deny in enumerate(ep.deny):
            need_rule(("endpoints", i, "deny", j, "rule"), deny.rule, ("violation", "unverified"))
        for j, host in enumerate(ep.hosts):
            for name in template_names(host):
                if name not in spec.vars:
                    raise doc.error(
                        ("endpoints", i, "hosts", j),
                        f"host '{host}' uses '{{{name}}}' which 'vars:' does not define {doc.describe(('endpoints', i))}",
                        f"add '{name}: <value>' under 'vars:' or write the host out",
                    )
    for section in ("observations", "labels"):
        for name, rule_id in getattr(spec, section).items():
            need_rule((section, name), rule_id, ("allowed", "violation", "unverified"))
    for rule_id, actions in ENGINE_RULES.items():
        if rule_id not in rules:
            raise doc.error(("rules",), f"the engine needs rule '{rule_id}' and the pack does not define it", f"add a rule with id '{rule_id}' and action {actions[0]}")
        if rules[rule_id].action not in actions:
            idx = next(i for i, r in enumerate(spec.rules) if r.id == rule_id)
            raise doc.error(("rules", idx, "action"), f"rule '{rule_id}' must have action {' or '.join(actions)}", f"set 'action: {actions[0]}'")


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^{}]*)\}", lambda m: values[m.group(1)], text)


def _compile_endpoint(spec: EndpointSpec | HostAllowSpec, values: dict[str, str], origin: str, **over: Any) -> Endpoint:
    hosts: list[str] = []
    networks: list[Network] = []
    raw_hosts = spec.hosts if isinstance(spec, EndpointSpec) else [spec.host]
    for raw in raw_hosts:
        text = _expand(raw, values)
        try:
            networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        wildcard = text.startswith("*.")
        host = normalise_host(text[2:] if wildcard else text)
        hosts.append(f"*.{host}" if wildcard else host)
    if isinstance(spec, EndpointSpec):
        networks.extend(ipaddress.ip_network(n, strict=False) for n in spec.ips)
        fields: dict[str, Any] = dict(
            id=spec.id,
            deny=tuple(
                DenyRoute(d.method, d.path, glob_regex([d.path]), d.rule) for d in spec.deny
            ),
            buckets=frozenset(("s3", _expand(b, values)) for b in spec.buckets),
            any_storage_host=False,
            rule=spec.rule,
            method_rule=spec.method_rule,
            contract=spec.contract,
            description=spec.description,
        )
    else:
        fields = dict(id="", deny=(), buckets=frozenset(), any_storage_host=False, rule="site.allowed-host",
                      method_rule="egress.method", contract="site", description=spec.reason)
    fields.update(
        hosts=tuple(hosts),
        networks=tuple(networks),
        ports=frozenset(spec.ports),
        transport=spec.transport,
        tls=spec.tls,
        scopes=frozenset(spec.scopes),
        methods=frozenset(spec.methods) if spec.methods is not None else None,
        paths=tuple(spec.paths) if spec.paths is not None else None,
        path_regex=glob_regex(spec.paths) if spec.paths else None,
        boundary=spec.boundary,
        origin=origin,
    )
    fields.update(over)
    return Endpoint(**fields)


def _bucket_endpoint(bucket: BucketSpec, origin: str) -> Endpoint:
    service, key, _prefix = parse_bucket_uri(bucket.uri, bucket.account)
    hosts: tuple[str, ...] = ()
    if service == "azure" and bucket.account:
        account = bucket.account.lower()
        hosts = (f"{account}.blob.core.windows.net", f"{account}.dfs.core.windows.net")
    return Endpoint(
        id=f"site.bucket:{bucket.uri}",
        hosts=hosts,
        networks=(),
        ports=frozenset({443}),
        transport="tcp",
        tls=True,
        scopes=frozenset(bucket.scopes),
        methods=frozenset(bucket.methods),
        paths=None,
        path_regex=None,
        deny=(),
        buckets=frozenset({(service, key)}),
        any_storage_host=True,
        boundary="customer",
        rule="site.customer-bucket",
        method_rule="site.bucket-method",
        contract="site",
        description=bucket.description or f"customer bucket {bucket.uri}",
        origin=origin,
    )


def _resolve(path: Path | str | None, default: str) -> tuple[Path, str]:
    if path is None:
        p = shipped_path(default)
        return p, str(p)
    return Path(path), str(path)


def load_pack(pack_path: Path | str | None = None, overlays: Sequence[Path | str] = ()) -> Pack:
    """Load the base pack (None: the shipped Gretel Hybrid pack) and compose the overlays in order."""
    path, display = _resolve(pack_path, SHIPPED_PACK)
    doc, raw = read_yaml(path, display)
    if "overlay" in doc.data and "pack" not in doc.data:
        raise doc.error(("overlay",), "this is a site overlay, not a rule pack", "pass it with --overlay, next to the base pack", key=True)
    spec: PackFile = _validate(doc, PackFile)
    _check_pack(doc, spec)
    sources = [PackSource(kind="pack", path=display, id=spec.pack.id, sha256=_sha256(raw))]
    site = Site()
    for overlay in overlays:
        opath, odisplay = _resolve(overlay, SHIPPED_OVERLAY_EXAMPLE)
        odoc, oraw = read_yaml(opath, odisplay)
        if "pack" in odoc.data and "overlay" not in odoc.data:
            raise odoc.error(("pack",), "this is a rule pack, not a site overlay", "pass a file that starts with 'overlay:'", key=True)
        ospec: OverlayFile = _validate(odoc, OverlayFile)
        _check_overlay_templates(odoc, ospec, set(spec.vars) | {"region"})
        _compose_site(site, ospec)
        sources.append(PackSource(kind="overlay", path=odisplay, id=ospec.overlay.id, sha256=_sha256(oraw)))
    values = dict(spec.vars)
    if site.registry_region:
        values["region"] = site.registry_region
    contract = {c.id: c for c in spec.contract}
    site_line = ContractLine(id="site", section="Site overlay", text="The customer's own storage, KMS and hosts named by the site overlay.")
    contract.setdefault("site", site_line)
    rules = {
        r.id: Rule(
            id=r.id,
            action=r.action,
            severity=r.severity,
            message=r.message,
            contract=r.contract,
            contract_text=contract[r.contract].text,
            contract_section=contract[r.contract].section,
            remediation=r.remediation,
            controls=list(r.controls),
            likelihood=r.likelihood,
        )
        for r in spec.rules
    }
    endpoints = [_compile_endpoint(ep, values, display) for ep in spec.endpoints]
    site_endpoints: list[Endpoint] = []
    for b in site.buckets:
        site_endpoints.append(_bucket_endpoint(b, "overlay"))
    for k in site.kms:
        site_endpoints.append(
            _compile_endpoint(k, values, "overlay", id=f"site.kms:{k.host}", rule="site.kms", boundary="customer",
                              description=k.reason or f"customer KMS {k.host}")
        )
    for a in site.allow:
        site_endpoints.append(_compile_endpoint(a, values, "overlay", id=f"site.allow:{a.host}"))
    return Pack(
        info=spec.pack,
        rules=rules,
        endpoints=endpoints,
        site_endpoints=site_endpoints,
        contract=list(contract.values()),
        metadata_kinds=list(spec.metadata_kinds),
        forbidden_classes=list(spec.forbidden_classes),
        observations=dict(spec.observations),
        labels=dict(spec.labels),
        site=site,
        sources=sources,
        region=values.get("region", ""),
    )


def _check_overlay_templates(doc: YamlDoc, spec: OverlayFile, known: set[str]) -> None:
    """An overlay host may use the pack's variables ({region}); any other {name} is a typo."""
    for section in ("kms", "allow"):
        for i, entry in enumerate(getattr(spec, section)):
            for name in template_names(entry.host):
                if name not in known:
                    raise doc.error(
                        (section, i, "host"),
                        f"host '{entry.host}' uses '{{{name}}}', which is not a pack variable {doc.describe((section, i))}",
                        f"use one of {', '.join('{' + k + '}' for k in sorted(known))} or write the host out",
                    )


def _compose_site(site: Site, spec: OverlayFile) -> None:
    site.ids.append(spec.overlay.id)
    if spec.registry_region:
        site.registry_region = spec.registry_region
    if spec.proxy:
        site.proxy = spec.proxy
    if spec.unknown_scope:
        site.unknown_scope = spec.unknown_scope
    site.buckets.extend(spec.buckets)
    site.kms.extend(spec.kms)
    site.allow.extend(spec.allow)
    site.pod_cidrs.extend(spec.cluster.pod_cidrs)
    site.service_cidrs.extend(spec.cluster.service_cidrs)
    site.node_cidrs.extend(spec.cluster.node_cidrs)
    site.dns_servers.extend(spec.cluster.dns.servers)
    if "dns" in spec.cluster.model_fields_set and "suffixes" in spec.cluster.dns.model_fields_set:
        site.dns_suffixes = list(dict.fromkeys([*site.dns_suffixes, *spec.cluster.dns.suffixes]))
