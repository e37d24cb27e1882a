"""Preflight against a Gretel Hybrid install served on 127.0.0.1: the ready install passes,
and each thing that breaks an audit fails its own check, with a fix."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gretel_install import NS
from k8s_fakeapi import FakeCluster
from kubernetes import client
from typer.testing import CliRunner

from auditor.cli import app
from auditor.k8s.manifests import new_proxy_ca
from auditor.k8s.preflight import PreflightOptions, PreflightResult, preflight
from auditor.store.base import open_store

AGENT = "agent-7d9f8c6b5-x2k4p"
WORKER = "gretel-job-8f2a1c-5kq2x"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    path = tmp_path / "evidence.db"
    open_store(str(path)).close()
    return str(path)


def run(api: client.ApiClient, store_url: str | None, **kw: Any) -> PreflightResult:
    return preflight(api, PreflightOptions(store_url=store_url, **kw))


def status(result: PreflightResult) -> dict[str, str]:
    return {c.id: c.status for c in result.checks}


def _obj(cluster: FakeCluster, resource: str, name: str, ns: str = NS) -> dict[str, Any]:
    return copy.deepcopy(cluster.objects[(resource, ns, name)])


def _set_secret(cluster: FakeCluster, name: str, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
    secret = _obj(cluster, "secrets", name)
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    secret["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in change(values).items()}
    cluster.put("secrets", secret)


def test_a_ready_install_passes_every_check(server: object, api: client.ApiClient, store_url: str, kubeconfig: Path) -> None:
    result = run(api, store_url)
    assert status(result) == {
        "hybrid-pods": "pass", "proxy-env-agent": "pass", "proxy-env-workers": "pass", "ca-override": "pass",
        "egress-policy": "pass", "probe-daemonset": "pass", "store": "pass",
    }, [c for c in result.checks if c.status != "pass"]
    assert result.exit_code == 0

    cli = CliRunner().invoke(app, ["k8s", "preflight", "--kubeconfig", str(kubeconfig), "--store-url", store_url, "--json"])
    assert cli.exit_code == 0, cli.output
    assert '"status": "pass"' in cli.output and '"fail"' not in cli.output


def test_without_a_store_it_warns_and_exits_2(server: object, api: client.ApiClient, kubeconfig: Path) -> None:
    result = run(api, None)
    assert status(result)["store"] == "warn" and result.exit_code == 2
    cli = CliRunner().invoke(app, ["k8s", "preflight", "--kubeconfig", str(kubeconfig)])
    assert cli.exit_code == 2
    assert "WARN" in cli.output and "PASS" in cli.output


def _no_agent(c: FakeCluster) -> None:
    c.delete("pods", AGENT, NS)


def _uppercase_proxy(c: FakeCluster) -> None:
    _set_secret(c, "common-env-secret", lambda d: {(k.upper() if k.endswith("_proxy") else k): v for k, v in d.items()})


def _proxy_elsewhere(c: FakeCluster) -> None:
    _set_secret(c, "common-env-secret", lambda d: d | {"https_proxy": "http://squid.corp.example:3128"})


def _workers_unproxied(c: FakeCluster) -> None:
    c.delete("pods", WORKER, NS)  # no worker running: the chart's worker-env-secret is what workers will get
    _set_secret(c, "worker-env-secret", lambda d: {k: v for k, v in d.items() if not k.endswith("_proxy")})


def _ca_not_mounted(c: FakeCluster) -> None:
    agent = _obj(c, "pods", AGENT)
    agent["spec"]["containers"][0]["volumeMounts"] = []
    c.put("pods", agent)


def _other_ca(c: FakeCluster) -> None:
    _set_secret(c, "common-data-secret", lambda d: {"ca-override.pem": new_proxy_ca(days=2).cert_pem})


def _no_policy(c: FakeCluster) -> None:
    c.delete("networkpolicies", "boundary-auditor-egress", NS)


def _allow_all_policy(c: FakeCluster) -> None:
    c.put("networkpolicies", {"metadata": {"name": "allow-all-egress", "namespace": NS},
                              "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})


def _dns_anywhere(c: FakeCluster) -> None:
    policy = _obj(c, "networkpolicies", "boundary-auditor-egress")
    policy["spec"]["egress"][0].pop("to")  # port 53 to any resolver: DNS tunnelling stays open
    c.put("networkpolicies", policy)


def _policy_misses_workers(c: FakeCluster) -> None:
    policy = _obj(c, "networkpolicies", "boundary-auditor-egress")
    policy["spec"]["podSelector"] = {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["gretel-jobs-worker"]}]}
    c.put("networkpolicies", policy)


def _no_probe(c: FakeCluster) -> None:
    c.delete("daemonsets", "boundary-auditor-probe", "boundary-auditor")


def _probe_not_ready(c: FakeCluster) -> None:
    ds = _obj(c, "daemonsets", "boundary-auditor-probe", "boundary-auditor")
    ds["status"]["numberReady"] = 1
    c.put("daemonsets", ds)


def _probe_misses_a_node(c: FakeCluster) -> None:
    ds = _obj(c, "daemonsets", "boundary-auditor-probe", "boundary-auditor")
    ds["status"].update(desiredNumberScheduled=1, numberReady=1)
    c.put("daemonsets", ds)


CASES: list[tuple[str, Callable[[FakeCluster], None], str, str]] = [
    ("no agent", _no_agent, "hybrid-pods", "0 agent"),
    ("uppercase proxy variables only", _uppercase_proxy, "proxy-env-agent", "only uppercase HTTPS_PROXY, HTTP_PROXY"),
    ("proxy variable points elsewhere", _proxy_elsewhere, "proxy-env-agent", "does not point at the auditor proxy"),
    ("worker env without proxy", _workers_unproxied, "proxy-env-workers", "worker-env-secret"),
    ("CA not mounted", _ca_not_mounted, "ca-override", "not under any volume mount"),
    ("a different CA", _other_ca, "ca-override", "does not contain the auditor proxy's CA"),
    ("no egress policy", _no_policy, "egress-policy", "selected by no egress policy"),
    ("an allow-all egress policy", _allow_all_policy, "egress-policy", "allow-all-egress egress rule 1 allows any port to anywhere"),
    ("DNS to any resolver", _dns_anywhere, "egress-policy", "allows UDP/53, TCP/53 to anywhere"),
    ("policy does not select workers", _policy_misses_workers, "egress-policy", f"{NS}/{WORKER} is selected by no egress policy"),
    ("probe not deployed", _no_probe, "probe-daemonset", "not found"),
    ("probe not ready", _probe_not_ready, "probe-daemonset", "1 of 2 probe pods ready"),
    ("probe missing a node", _probe_misses_a_node, "probe-daemonset", "1 nodes get no probe"),
]


@pytest.mark.parametrize(("mutate", "check_id", "detail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_broken_thing_fails_its_check_with_a_fix(
    cluster: FakeCluster, server: object, api: client.ApiClient, store_url: str,
    mutate: Callable[[FakeCluster], None], check_id: str, detail: str,
) -> None:
    mutate(cluster)
    result = run(api, store_url)
    check = next(c for c in result.checks if c.id == check_id)
    assert check.status == "fail", result.checks
    assert detail in check.detail
    assert check.fix
    assert result.exit_code == 1
    assert status(result)["store"] == "pass"


def test_an_unreachable_store_fails(server: object, api: client.ApiClient, tmp_path: Path) -> None:
    result = run(api, str(tmp_path / "missing" / "evidence.db"))
    check = next(c for c in result.checks if c.id == "store")
    assert check.status == "fail" and "no such evidence store" in check.detail
    assert result.exit_code == 1


def test_an_api_server_rule_is_accepted_only_for_the_declared_address(cluster: FakeCluster, server: object, api: client.ApiClient, store_url: str) -> None:
    policy = _obj(cluster, "networkpolicies", "boundary-auditor-egress")
    policy["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"protocol": "TCP", "port": 443}]})
    cluster.put("networkpolicies", policy)
    assert status(run(api, store_url))["egress-policy"] == "fail"
    assert status(run(api, store_url, api_server_cidrs=["10.0.0.1/32"]))["egress-policy"] == "pass"


def test_an_unreachable_cluster_is_one_line_exit_3(tmp_path: Path) -> None:
    from k8s_fakeapi import FakeApiServer

    kc = FakeApiServer(FakeCluster()).kubeconfig(tmp_path / "kc")
    cli = CliRunner().invoke(app, ["k8s", "preflight", "--kubeconfig", str(kc)])
    assert "unreachable" in str(cli.exception)
    missing = CliRunner().invoke(app, ["k8s", "preflight", "--kubeconfig", str(tmp_path / "nope")])
    assert "no such kubeconfig file" in str(missing.exception)
