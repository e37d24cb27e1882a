"""One way to reach the Kubernetes API: in-cluster service account, else a kubeconfig.

Every k8s module takes an `ApiClient` built here, so tests point the real client at a
local server through an ordinary kubeconfig file.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from auditor.errors import AuditorError

_SERVICE_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def in_cluster() -> bool:
    """True inside a pod with a mounted service account (the sensors' case)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and _SERVICE_TOKEN.exists()


def api_client(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from an explicit kubeconfig, else the in-cluster account, else ~/.kube/config."""
    try:
        if kubeconfig is None and context is None and in_cluster():
            conf = client.Configuration()
            config.load_incluster_config(client_configuration=conf)
            return client.ApiClient(conf)
        if kubeconfig is not None and not kubeconfig.exists():
            raise AuditorError("no such kubeconfig file", file=str(kubeconfig), fix="pass --kubeconfig PATH or set KUBECONFIG")
        return config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context, persist_config=False
        )
    except ConfigException as exc:
        where = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG", "~/.kube/config")
        raise AuditorError(
            f"cannot load Kubernetes credentials: {exc}",
            file=where,
            fix="pass --kubeconfig PATH (and --context NAME), or run inside the cluster with a service account",
        ) from None


def server_of(api: client.ApiClient) -> str:
    """The API server URL, for reports and snapshots."""
    return str(api.configuration.host)
