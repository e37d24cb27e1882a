"""Is this Gretel Hybrid installation ready to be audited? Each check passes or fails with
the fix; a check that cannot be decided yet (no worker running, no store given) warns.

Exit code: 0 all pass, 1 any fail, 2 warnings only. Secrets are read only for the
variables checked (proxy, CA); nothing else from them is kept or printed.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import urllib3
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, Field
from rich.table import Table
from rich.text import Text

from auditor.errors import AuditorError
from auditor.k8s.cluster import server_of
from auditor.k8s.inventory import GRETEL_NAMESPACE, workload_of
from auditor.k8s.manifests import CA_SECRET, NAME, PROBE, PROXY, PROXY_LABEL

Status = Literal["pass", "fail", "warn"]
WORKER_SELECTOR = "app=gretel-jobs-worker"
PROXY_VARS = ("https_proxy", "http_proxy")
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class Check(BaseModel):
    id: str
    title: str
    status: Status
    detail: str
    fix: str | None = None


class PreflightOptions(BaseModel):
    hybrid_namespace: str = GRETEL_NAMESPACE
    namespace: str = NAME  # where the sensors run
    proxy_port: int = Field(default=8080, ge=1, le=65535)
    store_url: str | None = None
    api_server_cidrs: list[str] = Field(default_factory=list)
    dns_namespace: str = "kube-system"
    dns_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})


class PreflightResult(BaseModel):
    server: str
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        statuses = {c.status for c in self.checks}
        return 1 if "fail" in statuses else 2 if "warn" in statuses else 0


# --- selectors --------------------------------------------------------------------------------


def selector_matches(selector: client.V1LabelSelector | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics: None selects nothing, {} selects everything."""
    if selector is None:
        return False
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions or []:
        values = set(expr.values or [])
        present = expr.key in labels
        ok = {
            "In": present and labels.get(expr.key) in values,
            "NotIn": not present or labels.get(expr.key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(expr.operator, False)
        if not ok:
            return False
    return True


# --- reading env the way the kubelet composes it ----------------------------------------------


@dataclass
class _Reader:
    """Secrets and config maps, read once each; a refusal is remembered, not raised."""

    core: client.CoreV1Api
    namespace: str
    cache: dict[tuple[str, str], dict[str, str] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def data(self, kind: Literal["secret", "configmap"], name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in self.cache:
            try:
                if kind == "secret":
                    raw = self.core.read_namespaced_secret(name, self.namespace).data or {}
                    self.cache[key] = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in raw.items()}
                else:
                    self.cache[key] = dict(self.core.read_namespaced_config_map(name, self.namespace).data or {})
            except ApiException as exc:
                self.problems.append(f"cannot read {kind} {self.namespace}/{name}: HTTP {exc.status}")
                self.cache[key] = None
        return self.cache[key]


def effective_env(container: client.V1Container, reader: _Reader) -> dict[str, str]:
    """envFrom first, then env (which wins), as the kubelet does."""
    env: dict[str, str] = {}
    for source in container.env_from or []:
        prefix = source.prefix or ""
        data = None
        if source.secret_ref is not None and source.secret_ref.name:
            data = reader.data("secret", source.secret_ref.name)
        elif source.config_map_ref is not None and source.config_map_ref.name:
            data = reader.data("configmap", source.config_map_ref.name)
        for k, v in (data or {}).items():
            env[prefix + k] = v
    for var in container.env or []:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from is not None:
            ref = var.value_from.secret_key_ref or var.value_from.config_map_key_ref
            if ref is not None and ref.name:
                kind: Literal["secret", "configmap"] = "secret" if var.value_from.secret_key_ref else "configmap"
                value = (reader.data(kind, ref.name) or {}).get(ref.key)
                if value is not None:
                    env[var.name] = value
        else:
            env[var.name] = ""
    return env


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class _Hybrid:
    pods: list[client.V1Pod]
    agents: list[client.V1Pod]
    controllers: list[client.V1Pod]
    workers: list[client.V1Pod]


def _role(pod: client.V1Pod) -> str | None:
    labels = pod.metadata.labels or {}
    if labels.get("app") == "gretel-jobs-worker":
        return "worker"
    component = labels.get("app.kubernetes.io/component")
    workload = workload_of(pod.metadata) or ""
    if component == "agent" or workload.endswith("/agent") or workload.endswith("-agent"):
        return "agent"
    if workload.endswith("argo-controller"):
        return None
    if component == "controller" or workload.endswith("/controller") or workload.endswith("-controller"):
        return "controller"
    return None


def _name(pod: client.V1Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def _check_pods(core: client.CoreV1Api, opts: PreflightOptions) -> tuple[Check, _Hybrid]:
    ns = opts.hybrid_namespace
    pods = [p for p in core.list_namespaced_pod(ns).items or [] if p.status and p.status.phase in ("Running", "Pending")]
    workers = [p for p in core.list_namespaced_pod(ns, label_selector=WORKER_SELECTOR).items or [] if p.status and p.status.phase == "Running"]
    hybrid = _Hybrid(pods=pods, agents=[p for p in pods if _role(p) == "agent"],
                     controllers=[p for p in pods if _role(p) == "controller"], workers=workers)
    detail = f"{len(pods)} pods in {ns}: {len(hybrid.agents)} agent, {len(hybrid.controllers)} controller, {len(workers)} worker ({WORKER_SELECTOR})"
    if not hybrid.agents:
        return Check(id="hybrid-pods", title="Gretel Hybrid pods found", status="fail", detail=detail,
                     fix=f"install Gretel's chart (gretel-data-plane) in namespace {ns}, or pass --hybrid-namespace"), hybrid
    not_running = [p for p in hybrid.agents if p.status.phase != "Running"]
    if not_running:
        return Check(id="hybrid-pods", title="Gretel Hybrid pods found", status="fail",
                     detail=detail + f"; agent not running: {', '.join(_name(p) for p in not_running)}",
                     fix="kubectl -n " + ns + " describe pod " + not_running[0].metadata.name), hybrid
    return Check(id="hybrid-pods", title="Gretel Hybrid pods found", status="pass", detail=detail), hybrid


def _proxy_problem(env: dict[str, str], opts: PreflightOptions) -> str | None:
    missing = [v for v in PROXY_VARS if not env.get(v)]
    if missing:
        upper = [v.upper() for v in missing if env.get(v.upper())]
        if upper:
            return f"only uppercase {', '.join(upper)} set (the Gretel client reads only lowercase)"
        return f"{', '.join(missing)} not set"
    for var in PROXY_VARS:
        host = urlsplit(env[var] if "://" in env[var] else f"http://{env[var]}").hostname or ""
        if not (host == PROXY or host.startswith(f"{PROXY}.{opts.namespace}")):
            return f"{var}={env[var]} does not point at the auditor proxy ({PROXY}.{opts.namespace})"
    return None


def _check_proxy_env(hybrid: _Hybrid, reader: _Reader, opts: PreflightOptions, values_fix: str) -> list[Check]:
    checks: list[Check] = []
    for role, pods in (("agent", hybrid.agents + hybrid.controllers), ("workers", hybrid.workers)):
        title = f"proxy variables (lowercase) in {role} pods"
        problems: list[str] = []
        for pod in pods:
            for c in pod.spec.containers or []:
                problem = _proxy_problem(effective_env(c, reader), opts)
                if problem:
                    problems.append(f"{_name(pod)}[{c.name}]: {problem}")
        if role == "workers" and not pods:
            secret = _worker_env_secret(reader, hybrid)
            data = reader.data("secret", secret) if secret else None
            if data is None:
                checks.append(Check(id="proxy-env-workers", title=title, status="warn",
                                    detail="no worker pod running and no worker-env-secret readable to inspect",
                                    fix="re-run preflight while a Gretel job runs, or grant get on secrets in " + opts.hybrid_namespace))
                continue
            problem = _proxy_problem(data, opts)
            if problem:
                problems.append(f"secret {opts.hybrid_namespace}/{secret} (gretelWorkers.env): {problem}")
            pods_desc = f"secret {secret} (no worker running)"
        else:
            pods_desc = f"{len(pods)} pods"
        if problems:
            checks.append(Check(id=f"proxy-env-{role}", title=title, status="fail", detail="; ".join(problems[:5]), fix=values_fix))
        else:
            checks.append(Check(id=f"proxy-env-{role}", title=title, status="pass", detail=f"https_proxy and http_proxy point at the proxy in {pods_desc}"))
    return checks


def _worker_env_secret(reader: _Reader, hybrid: _Hybrid) -> str | None:
    """The chart's `<prefix>worker-env-secret`, named in the agent's GRETEL_WORKER_SECRET_NAME."""
    for pod in hybrid.agents:
        for c in pod.spec.containers or []:
            name = effective_env(c, reader).get("GRETEL_WORKER_SECRET_NAME")
            if name:
                return name
    return "worker-env-secret"


def _pems(text: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        return []


def _mounted_file(pod: client.V1Pod, container: client.V1Container, path: str, reader: _Reader) -> tuple[str | None, str | None]:
    """(file content, problem) for a path inside a secret or config-map volume of the container."""
    volumes = {v.name: v for v in pod.spec.volumes or []}
    for mount in container.volume_mounts or []:
        base = mount.mount_path.rstrip("/") + "/"
        if not path.startswith(base):
            continue
        key = mount.sub_path or path[len(base):]
        vol = volumes.get(mount.name)
        if vol is None:
            return None, f"volume {mount.name} is not defined"
        if vol.secret is not None and vol.secret.secret_name:
            data = reader.data("secret", vol.secret.secret_name)
            where = f"secret {vol.secret.secret_name}"
        elif vol.config_map is not None and vol.config_map.name:
            data = reader.data("configmap", vol.config_map.name)
            where = f"config map {vol.config_map.name}"
        else:
            return None, f"{path} is on volume {mount.name}, which is neither a secret nor a config map"
        if data is None:
            return None, f"{where} not readable"
        if key not in data:
            return None, f"{where} has no key {key}"
        return data[key], None
    return None, f"{path} is not under any volume mount"


def _check_ca(hybrid: _Hybrid, reader: _Reader, core: client.CoreV1Api, opts: PreflightOptions, values_fix: str) -> Check:
    title = "proxy CA override mounted (gretelConfig.caOverride)"
    proxy_ca: x509.Certificate | None = None
    try:
        raw = core.read_namespaced_secret(CA_SECRET, opts.namespace).data or {}
        certs = _pems(base64.b64decode(raw.get("mitmproxy-ca-cert.pem", "")).decode("utf-8", "replace"))
        proxy_ca = certs[0] if certs else None
    except ApiException:
        proxy_ca = None
    problems: list[str] = []
    pods = hybrid.agents + hybrid.controllers + hybrid.workers
    for pod in pods:
        for c in pod.spec.containers or []:
            env = effective_env(c, reader)
            for var in CA_VARS:
                path = env.get(var)
                if not path:
                    problems.append(f"{_name(pod)}[{c.name}]: {var} not set")
                    continue
                content, problem = _mounted_file(pod, c, path, reader)
                if problem:
                    problems.append(f"{_name(pod)}[{c.name}]: {var}: {problem}")
                    continue
                certs = _pems(content or "")
                if not certs:
                    problems.append(f"{_name(pod)}[{c.name}]: {var}={path} holds no PEM certificate")
                elif proxy_ca is not None and proxy_ca not in certs:
                    problems.append(f"{_name(pod)}[{c.name}]: {var}={path} does not contain the auditor proxy's CA")
    if problems:
        return Check(id="ca-override", title=title, status="fail", detail="; ".join(problems[:5]), fix=values_fix)
    against = "the proxy CA" if proxy_ca is not None else "a PEM CA (proxy CA secret not readable to compare)"
    return Check(id="ca-override", title=title, status="pass" if proxy_ca is not None else "warn",
                 detail=f"SSL_CERT_FILE and REQUESTS_CA_BUNDLE mounted with {against} in {len(pods)} pods",
                 fix=None if proxy_ca is not None else f"grant get on secret {opts.namespace}/{CA_SECRET} to compare the CA")


def _ports(rule: client.V1NetworkPolicyEgressRule) -> list[tuple[str, str]]:
    """(protocol, port) pairs; a port range is written 'a-b' so it never equals one port."""
    out = []
    for p in rule.ports or []:
        port = "any" if p.port is None else str(p.port)
        if p.end_port is not None and str(p.end_port) != port:
            port = f"{port}-{p.end_port}"
        out.append((p.protocol or "TCP", port))
    return out


def _within(cidr: str, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    block = ipaddress.ip_network(cidr, strict=False)
    return any(block.version == n.version and block.subnet_of(n) for n in nets)  # type: ignore[arg-type]


def _peer_selects(peer: client.V1NetworkPolicyPeer, policy_ns: str, ns: str, pod_labels: dict[str, str]) -> bool:
    if peer.ip_block is not None:
        return False
    ns_ok = selector_matches(peer.namespace_selector, {"kubernetes.io/metadata.name": ns}) if peer.namespace_selector is not None else policy_ns == ns
    pod_ok = selector_matches(peer.pod_selector, pod_labels) if peer.pod_selector is not None else True
    return ns_ok and pod_ok


def _rule_kind(rule: client.V1NetworkPolicyEgressRule, policy_ns: str, opts: PreflightOptions) -> str | None:
    """'dns', 'proxy', 'api-server', or None when the rule allows more than those."""
    ports = _ports(rule)
    peers = rule.to or []
    if not peers or not ports:
        return None
    proxy_labels = {PROXY_LABEL: PROXY}
    if all(port == "53" for _, port in ports) and all(_peer_selects(p, policy_ns, opts.dns_namespace, opts.dns_labels) for p in peers):
        return "dns"
    if all(proto == "TCP" and port in (str(opts.proxy_port), "proxy") for proto, port in ports) and all(
        _peer_selects(p, policy_ns, opts.namespace, proxy_labels) for p in peers
    ):
        return "proxy"
    api_nets = [ipaddress.ip_network(c, strict=False) for c in opts.api_server_cidrs]
    if api_nets and all(proto == "TCP" and port in ("443", "6443") for proto, port in ports):
        blocks = [p.ip_block for p in peers]
        if all(b is not None and _within(b.cidr, api_nets) for b in blocks):
            return "api-server"
    return None


def _check_policy(net: client.NetworkingV1Api, hybrid: _Hybrid, opts: PreflightOptions, policy_fix: str) -> Check:
    title = "egress NetworkPolicy: hybrid pods reach only DNS and the proxy"
    policies = [p for p in net.list_namespaced_network_policy(opts.hybrid_namespace).items or []
                if "Egress" in (p.spec.policy_types or []) or p.spec.egress is not None]
    problems: list[str] = []
    for pod in hybrid.pods:
        labels = pod.metadata.labels or {}
        selecting = [p for p in policies if selector_matches(p.spec.pod_selector, labels)]
        if not selecting:
            problems.append(f"{_name(pod)} is selected by no egress policy (all egress allowed)")
    for policy in policies:
        if not any(selector_matches(policy.spec.pod_selector, p.metadata.labels or {}) for p in hybrid.pods):
            continue
        for i, rule in enumerate(policy.spec.egress or []):
            if _rule_kind(rule, opts.hybrid_namespace, opts) is None:
                ports = ", ".join(f"{proto}/{port}" for proto, port in _ports(rule)) or "any port"
                dest = "anywhere" if not rule.to else "peers other than cluster DNS and the proxy"
                problems.append(f"policy {policy.metadata.name} egress rule {i + 1} allows {ports} to {dest}")
    if not hybrid.pods:
        problems.append(f"no hybrid pods in {opts.hybrid_namespace} to check")
    if problems:
        return Check(id="egress-policy", title=title, status="fail", detail="; ".join(problems[:5]), fix=policy_fix)
    names = ", ".join(sorted({p.metadata.name for p in policies}))
    return Check(id="egress-policy", title=title, status="pass", detail=f"{len(hybrid.pods)} pods isolated by {names}")


def _check_probe(apps: client.AppsV1Api, core: client.CoreV1Api, opts: PreflightOptions, apply_fix: str) -> Check:
    title = "probe DaemonSet ready on every node"
    try:
        ds = apps.read_namespaced_daemon_set(PROBE, opts.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return Check(id="probe-daemonset", title=title, status="fail", detail=f"daemonset {opts.namespace}/{PROBE} not found", fix=apply_fix)
        raise
    nodes = core.list_node().items or []
    st = ds.status
    desired, ready = (st.desired_number_scheduled, st.number_ready) if st else (0, 0)
    detail = f"{ready} of {desired} probe pods ready; {len(nodes)} nodes"
    if desired < len(nodes):
        missing = len(nodes) - desired
        return Check(id="probe-daemonset", title=title, status="fail", detail=detail + f"; {missing} nodes get no probe",
                     fix="keep the DaemonSet's toleration {operator: Exists} and remove any nodeSelector, then re-apply")
    if ready < desired:
        return Check(id="probe-daemonset", title=title, status="fail", detail=detail,
                     fix=f"kubectl -n {opts.namespace} get pods -l {PROXY_LABEL}={PROBE} -o wide; describe the ones not ready")
    return Check(id="probe-daemonset", title=title, status="pass", detail=detail)


def _check_store(opts: PreflightOptions) -> Check:
    from auditor.store.base import open_store

    title = "evidence store reachable"
    if not opts.store_url:
        return Check(id="store", title=title, status="warn", detail="no store given", fix="pass --store-url URL (the one the sensors write to)")
    try:
        st = open_store(opts.store_url, create=False)
        try:
            n = st.count()
        finally:
            st.close()
    except AuditorError as exc:
        return Check(id="store", title=title, status="fail", detail=exc.reason, fix=exc.fix or "check --store-url")
    except Exception as exc:  # any driver error is the answer to this check, not a crash
        return Check(id="store", title=title, status="fail", detail=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                     fix="check the URL, credentials and that the store is reachable from here")
    return Check(id="store", title=title, status="pass", detail=f"{n} records")


def preflight(api: client.ApiClient, opts: PreflightOptions) -> PreflightResult:
    """Run every check against the cluster behind `api`."""
    core, apps, net = client.CoreV1Api(api), client.AppsV1Api(api), client.NetworkingV1Api(api)
    values_fix = "helm upgrade the Gretel chart with the gretel-values.yaml from `auditor k8s manifests` (lowercase https_proxy/http_proxy in env and gretelWorkers.env, the proxy CA in gretelConfig.caOverride), then restart the agent"
    apply_fix = "auditor k8s manifests --out deploy/ && kubectl apply -f deploy/boundary-auditor.yaml"
    checks: list[Check] = []

    def guarded(check_id: str, title: str, fn: Callable[[], Check | list[Check]]) -> None:
        try:
            out = fn()
        except ApiException as exc:
            fix = "grant the preflight user get/list on it" if exc.status == 403 else "check the cluster"
            checks.append(Check(id=check_id, title=title, status="fail", detail=f"HTTP {exc.status} {exc.reason}", fix=fix))
            return
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            checks.append(Check(id=check_id, title=title, status="fail", detail=f"API call failed: {type(exc).__name__}",
                                fix="check that the API server is reachable and re-run"))
            return
        checks.extend(out if isinstance(out, list) else [out])

    try:
        first, hybrid = _check_pods(core, opts)
    except ApiException as exc:
        first = Check(id="hybrid-pods", title="Gretel Hybrid pods found", status="fail", detail=f"HTTP {exc.status} {exc.reason}",
                      fix="grant list on pods in " + opts.hybrid_namespace)
        hybrid = _Hybrid([], [], [], [])
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise AuditorError(f"kubernetes API at {server_of(api)} unreachable: {type(exc).__name__}",
                           fix="check --kubeconfig/--context and that the API server is reachable") from None
    checks.append(first)
    reader = _Reader(core, opts.hybrid_namespace)
    guarded("proxy-env", "proxy variables", lambda: _check_proxy_env(hybrid, reader, opts, values_fix))
    guarded("ca-override", "CA override", lambda: _check_ca(hybrid, reader, core, opts, values_fix))
    guarded("egress-policy", "egress NetworkPolicy", lambda: _check_policy(net, hybrid, opts, apply_fix))
    guarded("probe-daemonset", "probe DaemonSet", lambda: _check_probe(apps, core, opts, apply_fix))
    checks.append(_check_store(opts))
    return PreflightResult(server=server_of(api), checks=checks)


_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow"}


def preflight_table(result: PreflightResult) -> Table:
    table = Table(title=f"Preflight of {result.server}", show_lines=True)
    for col in ("check", "result", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in result.checks:
        table.add_row(Text(c.title), Text(c.status.upper(), style=_STYLE[c.status]), Text(c.detail), Text(c.fix or ""))
    passed = sum(c.status == "pass" for c in result.checks)
    table.caption = f"{passed} of {len(result.checks)} checks pass"
    return table
