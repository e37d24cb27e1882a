"""API objects shaped like a Gretel Hybrid install (chart gretel-data-plane) with the
auditor deployed next to it: what the fake API server is seeded with.

Shapes follow the chart: agent and controller Deployments in `gretel-hybrid`, worker
Job pods labelled `app=gretel-jobs-worker`, service accounts agent / controller /
model-worker, env through `common-env-secret` (top-level `env:`) and
`worker-env-secret` (`gretelWorkers.env`), the CA override in `common-data-secret`
mounted at /gretel/common-data.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from auditor.k8s.manifests import Manifests

NS = "gretel-hybrid"
CHART_LABELS = {"app.kubernetes.io/name": "gretel-data-plane", "app.kubernetes.io/instance": "gretel-hybrid"}
NODES = {"node-a": ("10.0.0.11", "10.42.0.0/24"), "node-b": ("10.0.0.12", "10.42.1.0/24")}


def _b64(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def node(name: str, ip: str, pod_cidr: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"kubernetes.io/hostname": name},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    }


def _container(name: str, env_from: list[dict[str, Any]], image: str = "gretelai/agent:1.0") -> dict[str, Any]:
    return {
        "name": name, "image": image, "envFrom": env_from,
        "volumeMounts": [{"name": "common-data", "mountPath": "/gretel/common-data"}],
    }


def pod(
    name: str,
    ip: str | None,
    *,
    node_name: str = "node-a",
    labels: dict[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    service_account: str = "default",
    phase: str = "Running",
    start: str = "2026-01-01T00:00:00Z",
    finished: str | None = None,
    env_from: list[dict[str, Any]] | None = None,
    host_network: bool = False,
    namespace: str = NS,
    uid: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "labels": labels or {},
                            "creationTimestamp": start}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1" if owner[0] != "Job" else "batch/v1", "kind": owner[0],
                                    "name": owner[1], "uid": f"uid-{owner[1]}", "controller": True}]
    status: dict[str, Any] = {"phase": phase, "startTime": start}
    if ip:
        status["podIP"], status["podIPs"] = ip, [{"ip": ip}]
    if finished:
        status["containerStatuses"] = [{
            "name": "main", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "finishedAt": finished, "startedAt": start}},
        }]
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node_name, "serviceAccountName": service_account, "hostNetwork": host_network,
            "containers": [_container("main", env_from if env_from is not None else [])],
            "volumes": [{"name": "common-data", "secret": {"secretName": "common-data-secret"}}],
        },
        "status": status,
    }


def agent_pod(ip: str = "10.42.0.10") -> dict[str, Any]:
    return pod(
        "agent-7d9f8c6b5-x2k4p", ip, labels=CHART_LABELS | {"app.kubernetes.io/component": "agent", "workload": "agent",
                                                             "pod-template-hash": "7d9f8c6b5"},
        owner=("ReplicaSet", "agent-7d9f8c6b5"), service_account="agent",
        env_from=[{"secretRef": {"name": "common-env-secret"}}, {"secretRef": {"name": "agent-secret"}},
                  {"configMapRef": {"name": "agent-env"}}],
    )


def controller_pod(ip: str = "10.42.0.11") -> dict[str, Any]:
    return pod(
        "controller-5c8d7f9b4-q7wzn", ip, labels=CHART_LABELS | {"app.kubernetes.io/component": "controller",
                                                                  "pod-template-hash": "5c8d7f9b4"},
        owner=("ReplicaSet", "controller-5c8d7f9b4"), service_account="controller",
        env_from=[{"secretRef": {"name": "common-env-secret"}}],
    )


def worker_pod(name: str, ip: str, *, node_name: str = "node-b", phase: str = "Running", start: str = "2026-01-01T00:00:00Z",
               finished: str | None = None) -> dict[str, Any]:
    return pod(
        name, ip, node_name=node_name, labels={"app": "gretel-jobs-worker", "gretel.ai/job-type": "model"},
        owner=("Job", name.rsplit("-", 1)[0]), service_account="model-worker", phase=phase, start=start, finished=finished,
        env_from=[{"secretRef": {"name": "common-env-secret"}}, {"secretRef": {"name": "worker-env-secret"}}],
    )


def install(manifests: Manifests, *, workers: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The whole cluster: Gretel configured with the auditor's values, the auditor applied."""
    values = manifests.gretel_values
    ca_pem = values["gretelConfig"]["caOverride"]
    common_env = dict(values["env"]) | {
        "SSL_CERT_FILE": "/gretel/common-data/ca-override.pem",
        "REQUESTS_CA_BUNDLE": "/gretel/common-data/ca-override.pem",
        "GRETEL_COMMON_DATA_MOUNT_PATH": "/gretel/common-data",
    }
    secrets = [
        {"metadata": {"name": "common-env-secret", "namespace": NS}, "type": "Opaque", "data": _b64(common_env)},
        {"metadata": {"name": "common-data-secret", "namespace": NS}, "type": "Opaque", "data": _b64({"ca-override.pem": ca_pem})},
        {"metadata": {"name": "worker-env-secret", "namespace": NS}, "type": "Opaque",
         "data": _b64({"GRETEL_ARTIFACT_ENDPOINT": "s3://customer-bucket/"} | values["gretelWorkers"]["env"])},
        {"metadata": {"name": "agent-secret", "namespace": NS}, "type": "Opaque", "data": _b64({"GRETEL_API_KEY": "grtu0123456789abcdef"})},
    ]
    configmaps = [{"metadata": {"name": "agent-env", "namespace": NS},
                   "data": {"GRETEL_WORKER_NAMESPACE": NS, "GRETEL_WORKER_SA": "model-worker",
                            "GRETEL_WORKER_SECRET_NAME": "worker-env-secret", "RUNNER_MODES": "hybrid"}}]
    pods = [agent_pod(), controller_pod()]
    if workers:
        pods.append(worker_pod("gretel-job-8f2a1c-5kq2x", "10.42.1.20"))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in manifests.objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    auditor_secrets = []
    for s in by_kind["Secret"]:
        s = copy.deepcopy(s)
        s["data"] = _b64(s.pop("stringData"))  # the API returns data, never stringData
        auditor_secrets.append(s)
    probe = copy.deepcopy(by_kind["DaemonSet"][0])
    probe["status"] = {"currentNumberScheduled": 2, "desiredNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 2,
                       "numberAvailable": 2, "updatedNumberScheduled": 2}
    return {
        "nodes": [node(n, ip, cidr) for n, (ip, cidr) in NODES.items()],
        "pods": pods,
        "secrets": secrets + auditor_secrets,
        "configmaps": configmaps,
        "networkpolicies": copy.deepcopy(by_kind["NetworkPolicy"]),
        "daemonsets": [probe],
        "servicecidrs": [{"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.43.0.0/16"]}}],
    }
