"""A Gretel Hybrid cluster on 127.0.0.1 (fake API server, real `kubernetes` client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gretel_install import install
from k8s_fakeapi import FakeApiServer, FakeCluster
from kubernetes import client

from auditor.k8s.cluster import api_client
from auditor.k8s.manifests import ManifestOptions, Manifests, build_manifests


@pytest.fixture(scope="session")
def manifests() -> Manifests:
    return build_manifests(ManifestOptions(store_url="postgresql://auditor@store.boundary-auditor.svc:5432/auditor"))


@pytest.fixture
def cluster(manifests: Manifests) -> FakeCluster:
    c = FakeCluster()
    c.load(install(manifests))
    return c


@pytest.fixture
def server(cluster: FakeCluster) -> Iterator[FakeApiServer]:
    srv = FakeApiServer(cluster).start()
    yield srv
    srv.stop()


@pytest.fixture
def kubeconfig(server: FakeApiServer, tmp_path: Path) -> Path:
    return server.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    a = api_client(kubeconfig)
    yield a
    a.close()
