"""Deploy the sensors into a cluster: probe DaemonSet, proxy Deployment + Service + CA
Secret, least-privilege RBAC, an egress NetworkPolicy that leaves the hybrid pods only
DNS and the proxy, and the values for Gretel's chart that route them through it.

Every object is checked by loading it into the official client's typed models and
serialising it back: a misspelt or misplaced field disappears in that round trip, and
the difference is reported, so what is printed is what the API server will accept.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kubernetes import client
from pydantic import BaseModel, Field, ValidationError, field_validator

from auditor.errors import AuditorError
from auditor.k8s.inventory import GRETEL_NAMESPACE

Mode = Literal["audit", "enforce"]
NAME = "boundary-auditor"
PROXY = f"{NAME}-proxy"
PROBE = f"{NAME}-probe"
CA_SECRET = f"{NAME}-proxy-ca"
STORE_SECRET = f"{NAME}-store"
EGRESS_POLICY = f"{NAME}-egress"
DEFAULT_IMAGE = "boundary-auditor:0.1.0"
DEFAULT_STORE = "sqlite:////var/lib/boundary-auditor/evidence.db"
PROXY_LABEL = "app.kubernetes.io/name"
PROBE_CAPABILITIES = ["NET_ADMIN", "NET_RAW"]
CA_MOUNT = "/etc/boundary-auditor/proxy-ca"
CONFDIR = "/home/auditor/.auditor/proxy"

# kind -> the typed model ApiClient.deserialize loads it into
_MODELS: dict[str, str] = {
    "Namespace": "V1Namespace",
    "ServiceAccount": "V1ServiceAccount",
    "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding",
    "Secret": "V1Secret",
    "ConfigMap": "V1ConfigMap",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "DaemonSet": "V1DaemonSet",
    "NetworkPolicy": "V1NetworkPolicy",
}


class ManifestOptions(BaseModel):
    hybrid_namespace: str = GRETEL_NAMESPACE
    namespace: str = NAME
    mode: Mode = "audit"
    store_url: str | None = None
    image: str = DEFAULT_IMAGE
    proxy_port: int = Field(default=8080, ge=1, le=65535)
    api_server_cidrs: list[str] = Field(default_factory=list)
    service_cidrs: list[str] = Field(default_factory=list)
    dns_namespace: str = "kube-system"
    dns_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})

    @field_validator("hybrid_namespace", "namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise ValueError(f"'{value}' is not a namespace name (lowercase letters, digits, '-')")
        return value

    @field_validator("api_server_cidrs", "service_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for v in values:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(f"'{v}' is not an IP address or CIDR") from None
        return values


_OPTION_NAMES = {
    "hybrid_namespace": "--namespace", "namespace": "--auditor-namespace", "api_server_cidrs": "--api-server",
    "service_cidrs": "--service-cidr", "store_url": "--store-url", "mode": "--mode", "image": "--image",
}


def options(**fields: Any) -> ManifestOptions:
    """ManifestOptions from command-line values; a bad one is one line naming it."""
    try:
        return ManifestOptions(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = _OPTION_NAMES.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else "an option"
        raise AuditorError(f"{name}: {first['msg'].removeprefix('Value error, ')}", fix="correct the option's value") from None


class ProxyCA(BaseModel):
    cert_pem: str
    key_pem: str


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PEM) as literal blocks, so the YAML reads like the file it holds."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


class Manifests(BaseModel):
    objects: list[dict[str, Any]]
    gretel_values: dict[str, Any]
    notes: list[str] = Field(default_factory=list)

    def manifests_yaml(self) -> str:
        return yaml.dump_all(self.objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)

    def values_yaml(self) -> str:
        head = "# Gretel Hybrid chart (gretel-data-plane) values: route the hybrid pods through the auditor's proxy\n"
        return head + yaml.dump(self.gretel_values, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def proxy_url(opts: ManifestOptions) -> str:
    return f"http://{PROXY}.{opts.namespace}.svc.cluster.local:{opts.proxy_port}"


def new_proxy_ca(days: int = 365) -> ProxyCA:
    """An RSA CA in mitmproxy's layout; `auditor proxy ca` makes the same shape."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Boundary Auditor"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Boundary Auditor proxy CA"),
    ])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    return ProxyCA(cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem=key_pem.decode())


def load_proxy_ca(path: Path) -> ProxyCA:
    """A mitmproxy CA file (`mitmproxy-ca.pem`: key and certificate), or a directory holding one."""
    file = path / "mitmproxy-ca.pem" if path.is_dir() else path
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise AuditorError("no proxy CA here", file=str(file), fix="create it with `auditor proxy ca`, or leave --ca out to make a new one") from None
    try:
        cert = x509.load_pem_x509_certificate(text.encode())
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except ValueError:
        raise AuditorError(
            "not a CA file with both a PEM private key and a certificate", file=str(file),
            fix="pass mitmproxy's mitmproxy-ca.pem (key and certificate in one file)",
        ) from None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    return ProxyCA(cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem=key_pem.decode())


def _locked_down() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False, "capabilities": {"drop": ["ALL"]}}


def _labels(component: str) -> dict[str, str]:
    return {PROXY_LABEL: f"{NAME}-{component}", "app.kubernetes.io/part-of": NAME, "app.kubernetes.io/component": component}


def _meta(name: str, namespace: str | None, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(component)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _sensor_env(opts: ManifestOptions, *, per_node: bool = False) -> list[dict[str, Any]]:
    """What the sensors read: the store (from a Secret), and the inventory to attribute with;
    a probe watches only the pods of its own node."""
    node = [{"name": "AUDITOR_K8S_NODE", "value": "$(NODE_NAME)"}] if per_node else []
    return [
        {"name": "AUDITOR_STORE", "valueFrom": {"secretKeyRef": {"name": STORE_SECRET, "key": "url"}}},
        {"name": "AUDITOR_K8S_INVENTORY", "value": "in-cluster"},
        {"name": "AUDITOR_K8S_NAMESPACES", "value": opts.hybrid_namespace},
        {"name": "AUDITOR_SENSOR_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "HOME", "value": "/home/auditor"},
        *node,
    ]


def _store_volume(opts: ManifestOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A node-local directory when the store is the default SQLite file; nothing for PostgreSQL."""
    if opts.store_url is not None:
        return [], []
    return (
        [{"name": "evidence", "hostPath": {"path": "/var/lib/boundary-auditor", "type": "DirectoryOrCreate"}}],
        [{"name": "evidence", "mountPath": "/var/lib/boundary-auditor"}],
    )


def _build(opts: ManifestOptions, ca: ProxyCA) -> list[dict[str, Any]]:
    ns = opts.namespace
    store_url = opts.store_url or DEFAULT_STORE
    store_volumes, store_mounts = _store_volume(opts)
    tmp = ({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, {"name": "tmp", "mountPath": "/tmp"})
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {
                "name": ns,
                # the probe needs hostNetwork and two capabilities: only the privileged level admits it
                "labels": _labels("namespace") | {"pod-security.kubernetes.io/enforce": "privileged"},
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, ns, "rbac"), "automountServiceAccountToken": True},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _meta(f"{NAME}-inventory", None, "rbac"),
            "rules": [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(f"{NAME}-inventory", None, "rbac"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{NAME}-inventory"},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}],
        },
        {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(STORE_SECRET, ns, "store"),
            "stringData": {"url": store_url},
        },
        {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(CA_SECRET, ns, "proxy"),
            # mitmproxy's confdir layout (`auditor proxy ca` writes the same files)
            "stringData": {"mitmproxy-ca.pem": ca.key_pem + ca.cert_pem, "mitmproxy-ca-cert.pem": ca.cert_pem},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(PROXY, ns, "proxy"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {PROXY_LABEL: PROXY}},
                "template": {
                    "metadata": {"labels": _labels("proxy")},
                    "spec": {
                        "serviceAccountName": NAME,
                        "securityContext": {
                            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        # `auditor proxy` keeps its CA in a private confdir (0700/0600): copy the Secret there
                        "initContainers": [{
                            "name": "proxy-ca",
                            "image": opts.image,
                            "command": ["sh", "-c", f"cp {CA_MOUNT}/mitmproxy-ca.pem {CA_MOUNT}/mitmproxy-ca-cert.pem {CONFDIR}/ && chmod 600 {CONFDIR}/*"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
                            "securityContext": _locked_down(),
                            "volumeMounts": [
                                {"name": "proxy-ca", "mountPath": CA_MOUNT, "readOnly": True},
                                {"name": "confdir", "mountPath": CONFDIR},
                            ],
                        }],
                        "containers": [{
                            "name": "proxy",
                            "image": opts.image,
                            "command": ["auditor"],
                            "args": [
                                "proxy", "--listen", f"0.0.0.0:{opts.proxy_port}", "--mode", opts.mode,
                                "--store", "$(AUDITOR_STORE)", "--confdir", CONFDIR, "--sensor-id", "proxy-$(AUDITOR_SENSOR_ID)",
                                "--kubernetes",  # attribute clients to pods and nodes with the live inventory
                            ],
                            "env": _sensor_env(opts),
                            "ports": [{"name": "proxy", "containerPort": opts.proxy_port, "protocol": "TCP"}],
                            "readinessProbe": {"tcpSocket": {"port": opts.proxy_port}, "periodSeconds": 5},
                            "livenessProbe": {"tcpSocket": {"port": opts.proxy_port}, "periodSeconds": 20},
                            "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
                            "securityContext": _locked_down(),
                            "volumeMounts": [{"name": "confdir", "mountPath": CONFDIR}, tmp[1], *store_mounts],
                        }],
                        "volumes": [
                            {"name": "proxy-ca", "secret": {"secretName": CA_SECRET, "defaultMode": 0o440}},
                            {"name": "confdir", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                            tmp[0], *store_volumes,
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service", "metadata": _meta(PROXY, ns, "proxy"),
            "spec": {
                "type": "ClusterIP",
                "selector": {PROXY_LABEL: PROXY},
                "ports": [{"name": "proxy", "port": opts.proxy_port, "targetPort": "proxy", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(PROBE, ns, "probe"),
            "spec": {
                "selector": {"matchLabels": {PROXY_LABEL: PROBE}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": _labels("probe")},
                    "spec": {
                        "serviceAccountName": NAME,
                        "hostNetwork": True,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        # every node, whatever its taints: a node without a probe is unwatched egress
                        "tolerations": [{"operator": "Exists"}],
                        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "probe",
                            "image": opts.image,
                            "command": ["auditor"],
                            "args": ["probe", "--iface", "any", "--store", "$(AUDITOR_STORE)", "--sensor-id", "probe-$(NODE_NAME)"],
                            "env": _sensor_env(opts, per_node=True),
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
                            "securityContext": {
                                # root inside for the capture socket, but only NET_RAW and NET_ADMIN
                                "runAsUser": 0,
                                "privileged": False,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"], "add": list(PROBE_CAPABILITIES)},
                            },
                            "volumeMounts": [tmp[1], *store_mounts],
                        }],
                        "volumes": [tmp[0], *store_volumes],
                    },
                },
            },
        },
        egress_policy(opts),
    ]
    return objects


def egress_policy(opts: ManifestOptions) -> dict[str, Any]:
    """Every pod of the hybrid namespace may reach cluster DNS and the proxy, nothing else:
    what goes around the proxy is dropped, and the probe shows the attempts."""
    egress: list[dict[str, Any]] = [
        {
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.dns_namespace}},
                "podSelector": {"matchLabels": dict(opts.dns_labels)},
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.namespace}},
                "podSelector": {"matchLabels": {PROXY_LABEL: PROXY}},
            }],
            "ports": [{"protocol": "TCP", "port": opts.proxy_port}],
        },
    ]
    if opts.api_server_cidrs:
        # the agent and controller create worker Jobs through the Kubernetes API
        egress.append({
            "to": [{"ipBlock": {"cidr": c}} for c in opts.api_server_cidrs],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
        })
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(EGRESS_POLICY, opts.hybrid_namespace, "egress"),
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
    }


def gretel_values(opts: ManifestOptions, ca: ProxyCA) -> dict[str, Any]:
    """Gretel's chart takes env maps (into common-env-secret and worker-env-secret) and the CA
    in gretelConfig.caOverride. Lowercase only: the Gretel client reads only lowercase."""
    url = proxy_url(opts)
    no_proxy = ["localhost", "127.0.0.1", ".svc", ".cluster.local", "kubernetes.default.svc", *opts.service_cidrs, *opts.api_server_cidrs]
    env = {"https_proxy": url, "http_proxy": url, "no_proxy": ",".join(no_proxy)}
    return {"env": dict(env), "gretelWorkers": {"env": dict(env)}, "gretelConfig": {"caOverride": ca.cert_pem}}


def validate_object(obj: dict[str, Any], api: client.ApiClient | None = None) -> Any:
    """Load one object into the client's typed model; a field the model drops is an error."""
    kind = obj.get("kind")
    model = _MODELS.get(str(kind))
    name = (obj.get("metadata") or {}).get("name", "?")
    if model is None:
        raise AuditorError(f"manifest object {kind}/{name} has no typed model to check it against", fix="use one of " + ", ".join(_MODELS))
    api = api or client.ApiClient()
    try:
        typed = api.deserialize(json.dumps(obj), model, "application/json")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AuditorError(
            f"{kind}/{name} does not load into {model}: {exc.title}.{where}: {first['msg']} (got {first.get('input')!r})",
            fix="correct that field",
        ) from None
    except (ValueError, TypeError) as exc:
        raise AuditorError(f"{kind}/{name} does not load into {model}: {str(exc).splitlines()[0]}", fix="correct the object") from None
    back = api.sanitize_for_serialization(typed)
    lost = _lost_paths(obj, back)
    if lost:
        raise AuditorError(f"{kind}/{name}: fields unknown to {model}: {', '.join(lost[:5])}", fix="remove or rename them")
    return typed


def _lost_paths(original: Any, back: Any, path: str = "") -> list[str]:
    """Paths present in `original` that the typed round trip did not keep."""
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [path or "."]
        out: list[str] = []
        for k, v in original.items():
            sub = f"{path}.{k}" if path else str(k)
            if k not in back:
                if v not in (None, {}, []):
                    out.append(sub)
            else:
                out.extend(_lost_paths(v, back[k], sub))
        return out
    if isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [path]
        return [p for i, (a, b) in enumerate(zip(original, back)) for p in _lost_paths(a, b, f"{path}[{i}]")]
    return []


def build_manifests(opts: ManifestOptions, ca: ProxyCA | None = None) -> Manifests:
    """Every object, validated, plus the chart values and what the operator must still decide."""
    ca = ca or new_proxy_ca()
    objects = _build(opts, ca)
    api = client.ApiClient()
    for obj in objects:
        validate_object(obj, api)
    notes: list[str] = []
    if opts.store_url is None:
        notes.append(f"store: each node keeps its own SQLite file ({DEFAULT_STORE}); pass --store-url postgresql://... to collect centrally")
    if not opts.api_server_cidrs:
        notes.append("the egress policy allows no Kubernetes API access: pass --api-server CIDR if the agent and controller need it (they create worker Jobs)")
    return Manifests(objects=objects, gretel_values=gretel_values(opts, ca), notes=notes)


def write_manifests(result: Manifests, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    manifests, values = out / "boundary-auditor.yaml", out / "gretel-values.yaml"
    manifests.write_text(result.manifests_yaml())
    values.write_text(result.values_yaml())
    manifests.chmod(0o600)  # holds the proxy CA's private key
    return [manifests, values]
