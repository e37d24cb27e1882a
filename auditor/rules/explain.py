"""Say why: which rule decides a destination and what the pack allows.

`explain` runs the real policy on a synthetic event, so what it prints is what
`auditor check` would decide for the same request. The rich renderables live
here so the CLI stays a thin shell.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field
from rich.console import Group
from rich.table import Table
from rich.text import Text

from auditor.errors import AuditorError
from auditor.model import Decision, Destination, EgressEvent, HttpInfo, Source
from auditor.rules.hosts import split_host_port
from auditor.rules.match import name_info, normalise_path
from auditor.rules.pack import Endpoint, Pack, Rule
from auditor.rules.policy import evaluate
from auditor.rules.spec import HTTP_METHODS
from auditor.rules.storage import bucket_of

EXIT_FOR_ACTION = {"allowed": 0, "violation": 1, "unverified": 2}
_STYLE = {"allowed": "green", "violation": "red", "unverified": "yellow"}


class Explanation(BaseModel):
    """The decision for one hypothetical request, with everything that led to it."""

    target: str
    host: str
    port: int
    method: str | None
    path: str | None
    scope: str
    internal: bool
    storage: str | None = None  # "s3 bucket prod-...", when the host is object storage
    candidates: list[str] = Field(default_factory=list)  # endpoint ids the host matches
    decision: Decision
    rules: list[Rule] = Field(default_factory=list)  # every rule that fired, worst first


def explain(
    pack: Pack, target: str, *, method: str | None = None, path: str | None = None, scope: str | None = None
) -> list[Explanation]:
    """Judge HOST[:PORT] with an optional method, path and scope; without a scope, for a pod and for a node."""
    host_text, port = split_host_port(target)
    if not host_text.strip():
        raise AuditorError(f"no host in '{target}'", fix="give HOST or HOST:PORT, such as api.gretel.cloud:443")
    if method is not None and method.upper() not in HTTP_METHODS:
        raise AuditorError(f"unknown HTTP method '{method}'", fix=f"use one of {', '.join(sorted(HTTP_METHODS))}")
    if path is not None and not path.startswith("/"):
        raise AuditorError(f"path '{path}' does not start with '/'", fix="write the path as it appears in the request, e.g. /bucket/key")
    if scope is not None and scope not in ("pod", "node"):
        raise AuditorError(f"unknown scope '{scope}'", fix="use --scope pod or --scope node")
    port = port if port is not None else 443
    http_method = method.upper() if method else ("GET" if path else None)
    out = []
    for who in [scope] if scope else ["pod", "node"]:
        event = EgressEvent(
            sensor_id="explain",
            kind="http" if http_method else "tls",
            source=Source(scope=who),  # type: ignore[arg-type]
            destination=Destination(host=host_text, port=port, tls=port != 80),
            http=HttpInfo(method=http_method, scheme="http" if port == 80 else "https", path=path or "/") if http_method else None,
        )
        decision = evaluate(event, pack)
        assert decision is not None
        info = name_info(pack, host_text)
        storage = None
        if info.storage is not None:
            bucket = bucket_of(info.storage, normalise_path(path) if http_method else None)
            storage = f"{info.storage.service} endpoint {info.storage.service_host}, bucket {bucket or 'not named'}"
        out.append(
            Explanation(
                target=target,
                host=info.host,
                port=port,
                method=http_method,
                path=normalise_path(path) if http_method else None,
                scope=who,
                internal=info.internal,
                storage=storage,
                candidates=[ep.id for ep in info.endpoints],
                decision=decision,
                rules=[pack.rules[r] for r in decision.rule_ids],
            )
        )
    return out


def explanations_json(explanations: list[Explanation]) -> str:
    """Machine output: always a list, one entry per scope judged."""
    return "[" + ",".join(ex.model_dump_json() for ex in explanations) + "]"


def explain_exit_code(explanations: list[Explanation]) -> int:
    """0 allowed, 1 violation, 2 unverified: the worst of the scopes asked about."""
    return max(EXIT_FOR_ACTION[e.decision.action] for e in explanations)


def explanation_renderable(ex: Explanation) -> Group:
    action = ex.decision.action
    request = f"{ex.method} {ex.path} " if ex.method else ""
    lines: list[Text | Table] = [
        Text.assemble(
            (action.upper(), f"bold {_STYLE[action]}"),
            f": {request}{ex.host}:{ex.port} from a {ex.scope} -> rule {ex.decision.rule_id} ({ex.decision.severity})",
        )
    ]
    facts = [f"normalised host: {ex.host}"]
    if ex.internal:
        facts.append("cluster-internal (site overlay CIDRs / DNS suffix / proxy)")
    if ex.storage:
        facts.append(f"object storage: {ex.storage}")
    facts.append(f"endpoints naming this host: {', '.join(ex.candidates) or 'none'}")
    lines.extend(Text(f"  {f}") for f in facts)
    lines.append(Text("  why:"))
    lines.extend(Text(f"    - {r}") for r in ex.decision.reasons)
    top = ex.rules[0]
    lines.append(Text(f"  rule {top.id}: {top.message}"))
    lines.append(Text(f"  contract ({top.contract_section}): \"{top.contract_text}\""))
    if top.action != "allowed":
        lines.append(Text(f"  remediation: {top.remediation}"))
        lines.append(Text(f"  controls: {', '.join(top.controls)}"))
    return Group(*lines)


def _who(ep: Endpoint) -> str:
    return ", ".join(f"{s}s" for s in sorted(ep.scopes))


def _what(ep: Endpoint) -> str:
    parts = [", ".join(sorted(ep.methods)) if ep.methods is not None else "any method"]
    if ep.buckets:
        parts.append("buckets " + ", ".join(sorted(b for _, b in ep.buckets)))
    if ep.any_storage_host:
        parts.append("on any host of the service")
    parts.extend(f"not {d.method or 'any'} {d.glob} ({d.rule})" for d in ep.deny)
    if ep.paths:
        parts.append("paths " + ", ".join(ep.paths))
    return "; ".join(parts)


def pack_table(pack: Pack) -> Table:
    """What is allowed, to whom, how, and which contract line says so (quoted in `contract_table`)."""
    table = Table(title=f"{pack.info.title} ({pack.id} {pack.info.version}, {pack.digest[:19]}…)", show_lines=True)
    for col in ("endpoint", "hosts / networks", "ports", "who", "what", "rule", "contract"):
        # Hosts are what people grep for: never wrap them; the other columns give way.
        table.add_column(col, overflow="fold", no_wrap=col in ("hosts / networks", "ports"))
    for ep in pack.all_endpoints:
        rule = pack.rules[ep.rule]
        where = [*ep.hosts, *(str(n) for n in ep.networks)]
        if ep.any_storage_host:
            where = [f"{service} bucket {name} (any {service} endpoint)" for service, name in sorted(ep.buckets)] + where
        ports = ", ".join(map(str, sorted(ep.ports))) + (" TLS" if ep.tls else "")
        table.add_row(
            Text(ep.id), Text("\n".join(where)), ports, _who(ep), Text(_what(ep)), Text(rule.id), Text(rule.contract),
        )
    site = pack.site
    internal = [*site.pod_cidrs, *site.service_cidrs, *site.node_cidrs, *site.dns_servers]
    if site.proxy:
        internal.append(f"proxy {site.proxy}")
    internal.extend(f"*.{s} (and {s})" for s in site.dns_suffixes)
    internal_rule = pack.rules["net.internal"]
    table.add_row("internal", Text("\n".join(internal)), "any", "pods, nodes", "not egress", internal_rule.id, internal_rule.contract)
    return table


def contract_table(pack: Pack) -> Table:
    """The contract lines the endpoints cite, verbatim."""
    cited = dict.fromkeys([*(pack.rules[ep.rule].contract for ep in pack.all_endpoints), pack.rules["net.internal"].contract])
    lines = {c.id: c for c in pack.contract}
    table = Table(title="Why: the contract, verbatim", show_header=True)
    table.add_column("contract", no_wrap=True)
    table.add_column("section")
    table.add_column("text", overflow="fold")
    for cid in cited:
        line = lines[cid]
        table.add_row(cid, line.section, Text(line.text))
    return table


def kinds_table(pack: Pack) -> Table:
    table = Table(title=f"Metadata that may reach the control plane ({len(pack.metadata_kinds)} kinds)")
    table.add_column("kind")
    table.add_column("contract", overflow="fold")
    contract = {c.id: c.text for c in pack.contract}
    for k in pack.metadata_kinds:
        table.add_row(k.id, Text(contract[k.contract]))
    return table


def forbidden_table(pack: Pack) -> Table:
    table = Table(title="Data that must never reach the control plane")
    for col in ("class", "payload labels", "rule(s)", "contract"):
        table.add_column(col, overflow="fold")
    contract = {c.id: c.text for c in pack.contract}
    for c in pack.forbidden_classes:
        rules = sorted({pack.labels[label] for label in c.labels})
        table.add_row(c.id, ", ".join(c.labels), ", ".join(rules), Text(contract[c.contract]))
    return table


def rules_table(pack: Pack) -> Table:
    table = Table(title=f"Rules ({len(pack.rules)})")
    for col in ("rule", "action", "severity", "controls", "message"):
        table.add_column(col, overflow="fold")
    for rule in pack.rules.values():
        table.add_row(rule.id, rule.action, rule.severity, ", ".join(rule.controls), Text(rule.message))
    return table


def endpoint_doc(ep: Endpoint) -> dict[str, object]:
    return {
        "id": ep.id,
        "hosts": list(ep.hosts),
        "networks": [str(n) for n in ep.networks],
        "ports": sorted(ep.ports),
        "transport": ep.transport,
        "tls": ep.tls,
        "scopes": sorted(ep.scopes),
        "methods": sorted(ep.methods) if ep.methods is not None else None,
        "paths": list(ep.paths) if ep.paths is not None else None,
        "deny": [{"method": d.method, "path": d.glob, "rule": d.rule} for d in ep.deny],
        "buckets": [f"{service}:{name}" for service, name in sorted(ep.buckets)],
        "any_storage_host": ep.any_storage_host,
        "boundary": ep.boundary,
        "rule": ep.rule,
        "method_rule": ep.method_rule,
        "contract": ep.contract,
        "description": ep.description,
    }


def pack_json(pack: Pack) -> str:
    """`auditor rules show --json`: the composed pack as data (endpoints, site, rules, vocabulary)."""
    site = pack.site
    doc = {
        "id": pack.id,
        "version": pack.info.version,
        "digest": pack.digest,
        "region": pack.region,
        "sources": [s.model_dump() for s in pack.sources],
        "endpoints": [endpoint_doc(ep) for ep in pack.endpoints],
        "site_endpoints": [endpoint_doc(ep) for ep in pack.site_endpoints],
        "internal": {
            "pod_cidrs": site.pod_cidrs, "service_cidrs": site.service_cidrs, "node_cidrs": site.node_cidrs,
            "dns_servers": site.dns_servers, "dns_suffixes": site.dns_suffixes, "proxy": site.proxy,
        },
        "unknown_scope": site.unknown_scope,
        "metadata_kinds": [k.model_dump() for k in pack.metadata_kinds],
        "forbidden_classes": [c.model_dump() for c in pack.forbidden_classes],
        "observations": pack.observations,
        "labels": pack.labels,
        "contract": [c.model_dump() for c in pack.contract],
        "rules": [r.model_dump() for r in pack.rules.values()],
    }
    return json.dumps(doc, indent=2)


def validate_summary(pack: Pack) -> list[str]:
    """What `auditor rules validate` prints on success: the files, their digests and the counts."""
    lines = [f"{s.kind} {s.id}: {s.path} sha256:{s.sha256[:16]}…" for s in pack.sources]
    lines.append(
        f"OK {pack.id}: {len(pack.endpoints)} endpoints, {len(pack.site_endpoints)} site endpoints, "
        f"{len(pack.rules)} rules, {len(pack.metadata_kinds)} metadata kinds, "
        f"{len(pack.forbidden_classes)} forbidden classes, region {pack.region}; digest {pack.digest}"
    )
    return lines
