"""The manifests load into the official client's typed models and carry the security
settings the issue asks for; the chart values are what Gretel's chart accepts."""

from __future__ import annotations

import copy
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client
from typer.testing import CliRunner

from auditor.cli import app
from auditor.errors import AuditorError
from auditor.k8s.manifests import CA_SECRET, PROXY, ManifestOptions, Manifests, build_manifests, validate_object

# gretel-data-plane's own check of gretelConfig.caOverride (templates/common/common-data-secret.yaml)
CHART_CA_PATTERN = r"^(\s*\n)?(-----BEGIN CERTIFICATE-----\s*\n[a-zA-Z0-9+/\s]+(\s*=\s*){0,2}\n-----END CERTIFICATE-----\s*(\n|$))+$"

MODELS = {
    "Namespace": client.V1Namespace, "ServiceAccount": client.V1ServiceAccount, "ClusterRole": client.V1ClusterRole,
    "ClusterRoleBinding": client.V1ClusterRoleBinding, "Secret": client.V1Secret, "Deployment": client.V1Deployment,
    "Service": client.V1Service, "DaemonSet": client.V1DaemonSet, "NetworkPolicy": client.V1NetworkPolicy,
}


def typed(manifests: Manifests) -> dict[str, list[Any]]:
    """Every object through ApiClient.deserialize, the path API responses take."""
    api = client.ApiClient()
    out: dict[str, list[Any]] = {}
    for obj in manifests.objects:
        model = MODELS[obj["kind"]]
        loaded = api.deserialize(json.dumps(obj), model.__name__, "application/json")
        assert isinstance(loaded, model)
        out.setdefault(obj["kind"], []).append(loaded)
    return out


@pytest.fixture(scope="module")
def enforce() -> Manifests:
    return build_manifests(ManifestOptions(mode="enforce", hybrid_namespace="gretel-prod", store_url="postgresql://a@db:5432/ev"))


def test_every_object_loads_into_its_typed_model(manifests: Manifests) -> None:
    objs = typed(manifests)
    assert sorted(objs) == sorted(MODELS)
    assert len(objs["Secret"]) == 2


def test_probe_daemonset_is_host_network_with_only_two_capabilities(manifests: Manifests) -> None:
    ds: client.V1DaemonSet = typed(manifests)["DaemonSet"][0]
    spec = ds.spec.template.spec
    assert spec.host_network is True
    assert [(t.operator, t.key, t.effect) for t in spec.tolerations] == [("Exists", None, None)]  # every node, every taint
    for c in spec.containers:
        sc = c.security_context
        assert set(sc.capabilities.add) == {"NET_RAW", "NET_ADMIN"}
        assert sc.capabilities.drop == ["ALL"]
        assert sc.read_only_root_filesystem is True
        assert sc.privileged is False and sc.allow_privilege_escalation is False
        assert c.resources.limits["cpu"] and c.resources.limits["memory"]
    assert ds.spec.selector.match_labels.items() <= ds.spec.template.metadata.labels.items()
    env = {e.name: e for e in spec.containers[0].env}
    assert env["AUDITOR_K8S_NODE"].value == "$(NODE_NAME)"  # the probe watches only its node's pods


def test_proxy_is_non_root_read_only_and_serves_the_ca(manifests: Manifests) -> None:
    objs = typed(manifests)
    dep: client.V1Deployment = objs["Deployment"][0]
    pod = dep.spec.template.spec
    assert pod.security_context.run_as_non_root is True
    for c in pod.containers + pod.init_containers:
        sc = c.security_context
        assert sc.read_only_root_filesystem is True and sc.allow_privilege_escalation is False
        assert sc.capabilities.drop == ["ALL"] and not sc.capabilities.add
        assert c.resources.limits["memory"]
    assert any(v.secret and v.secret.secret_name == CA_SECRET for v in pod.volumes)
    args = pod.containers[0].args
    assert args[args.index("--mode") + 1] == "audit"
    svc: client.V1Service = objs["Service"][0]
    assert svc.spec.selector.items() <= dep.spec.template.metadata.labels.items()
    assert svc.spec.ports[0].port == 8080 and svc.metadata.name == PROXY

    ca_secret = next(s for s in objs["Secret"] if s.metadata.name == CA_SECRET)
    cert = x509.load_pem_x509_certificate(ca_secret.string_data["mitmproxy-ca-cert.pem"].encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "PRIVATE KEY" in ca_secret.string_data["mitmproxy-ca.pem"]
    assert manifests.gretel_values["gretelConfig"]["caOverride"] == ca_secret.string_data["mitmproxy-ca-cert.pem"]


def test_rbac_is_get_list_watch_on_pods_and_nodes_only(manifests: Manifests) -> None:
    objs = typed(manifests)
    role: client.V1ClusterRole = objs["ClusterRole"][0]
    assert [(r.api_groups, sorted(r.resources), sorted(r.verbs)) for r in role.rules] == [([""], ["nodes", "pods"], ["get", "list", "watch"])]
    binding: client.V1ClusterRoleBinding = objs["ClusterRoleBinding"][0]
    sa: client.V1ServiceAccount = objs["ServiceAccount"][0]
    assert binding.role_ref.name == role.metadata.name
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", sa.metadata.name, sa.metadata.namespace)]
    for workload in (objs["Deployment"][0], objs["DaemonSet"][0]):
        assert workload.spec.template.spec.service_account_name == sa.metadata.name


def test_egress_policy_allows_only_cluster_dns_and_the_proxy(enforce: Manifests) -> None:
    policy: client.V1NetworkPolicy = typed(enforce)["NetworkPolicy"][0]
    assert policy.metadata.namespace == "gretel-prod"
    assert policy.spec.pod_selector.match_labels is None and policy.spec.pod_selector.match_expressions is None  # every pod
    assert policy.spec.policy_types == ["Egress"]
    dns, proxy = policy.spec.egress
    assert sorted((p.protocol, p.port) for p in dns.ports) == [("TCP", 53), ("UDP", 53)]
    assert dns.to[0].namespace_selector.match_labels == {"kubernetes.io/metadata.name": "kube-system"}
    assert dns.to[0].pod_selector.match_labels == {"k8s-app": "kube-dns"}
    assert [(p.protocol, p.port) for p in proxy.ports] == [("TCP", 8080)]
    assert proxy.to[0].namespace_selector.match_labels == {"kubernetes.io/metadata.name": "boundary-auditor"}
    assert proxy.to[0].pod_selector.match_labels == {"app.kubernetes.io/name": PROXY}
    assert all(peer.ip_block is None for rule in policy.spec.egress for peer in rule.to)


def test_enforce_mode_and_store_reach_the_sensors(enforce: Manifests) -> None:
    objs = typed(enforce)
    args = objs["Deployment"][0].spec.template.spec.containers[0].args
    assert args[args.index("--mode") + 1] == "enforce"
    store = next(s for s in objs["Secret"] if s.metadata.name.endswith("-store"))
    assert store.string_data == {"url": "postgresql://a@db:5432/ev"}
    assert not any(v.host_path for v in objs["DaemonSet"][0].spec.template.spec.volumes)  # no node-local store


def test_gretel_values_are_lowercase_and_the_ca_passes_the_charts_check(manifests: Manifests) -> None:
    values = manifests.gretel_values
    for env in (values["env"], values["gretelWorkers"]["env"]):
        assert all(k == k.lower() for k in env)
        assert env["https_proxy"] == env["http_proxy"] == f"http://{PROXY}.boundary-auditor.svc.cluster.local:8080"
    assert re.match(CHART_CA_PATTERN, values["gretelConfig"]["caOverride"])
    assert yaml.safe_load(manifests.values_yaml()) == values


def test_a_misspelt_or_mistyped_field_is_refused(manifests: Manifests) -> None:
    ds = copy.deepcopy(next(o for o in manifests.objects if o["kind"] == "DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {"privileged": True}
    with pytest.raises(AuditorError, match=r"fields unknown to V1DaemonSet: spec\.template\.spec\.containers\[0\]\.securityContxt"):
        validate_object(ds)
    ds = copy.deepcopy(next(o for o in manifests.objects if o["kind"] == "DaemonSet"))
    ds["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(AuditorError, match="hostNetwork"):
        validate_object(ds)


def test_cli_writes_files_or_prints_and_reuses_an_existing_ca(tmp_path: Path) -> None:
    from auditor.proxy.ca import ensure_ca

    ca = ensure_ca(tmp_path / "ca")
    out = tmp_path / "deploy"
    result = CliRunner().invoke(app, ["k8s", "manifests", "--namespace", "hybrid-a", "--mode", "enforce", "--out", str(out),
                                      "--ca", str(tmp_path / "ca"), "--api-server", "10.96.0.1/32"])
    assert result.exit_code == 0, result.output
    manifests = out / "boundary-auditor.yaml"
    assert stat.S_IMODE(manifests.stat().st_mode) == 0o600  # it holds the CA key
    docs = list(yaml.safe_load_all(manifests.read_text()))
    assert [d["kind"] for d in docs].count("NetworkPolicy") == 1
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "hybrid-a"
    assert policy["spec"]["egress"][2]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]
    values = yaml.safe_load((out / "gretel-values.yaml").read_text())
    assert x509.load_pem_x509_certificate(values["gretelConfig"]["caOverride"].encode()) == x509.load_pem_x509_certificate(ca.pem.encode())

    printed = CliRunner().invoke(app, ["k8s", "manifests", "--store-url", "postgresql://a@db/ev"])
    assert printed.exit_code == 0
    assert len(list(yaml.safe_load_all(printed.stdout))) == 10

    bad = CliRunner().invoke(app, ["k8s", "manifests", "--mode", "block"])
    assert isinstance(bad.exception, AuditorError)
    bad_ns = CliRunner().invoke(app, ["k8s", "manifests", "--namespace", "Gretel_Hybrid"])
    assert "--namespace" in str(bad_ns.exception)


def test_sensor_commands_parse_with_the_auditor_cli(manifests: Manifests) -> None:
    """The container args are real `auditor` commands: every option they use exists."""
    import typer.main

    command = typer.main.get_command(app)
    objs = typed(manifests)
    for workload in (objs["Deployment"][0], objs["DaemonSet"][0]):
        container = workload.spec.template.spec.containers[0]
        assert container.command == ["auditor"]
        args = [a.replace("$(AUDITOR_STORE)", "/tmp/x.db").replace("$(AUDITOR_SENSOR_ID)", "p").replace("$(NODE_NAME)", "n") for a in container.args]
        ctx = command.make_context("auditor", list(args), resilient_parsing=True)
        sub = command.get_command(ctx, args[0])  # type: ignore[attr-defined]
        assert sub is not None, args[0]
        parsed = sub.make_context(args[0], args[1:], parent=ctx)  # raises on an unknown option
        assert parsed.params["store"] == "/tmp/x.db"
