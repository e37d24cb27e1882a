"""What `auditor k8s ...` does, one function per command, so the CLI only parses and prints."""

from __future__ import annotations

from pathlib import Path

from auditor.k8s.cluster import api_client
from auditor.k8s.inventory import InventoryConfig, SnapshotSummary, take_snapshot, with_overlay_cidrs
from auditor.k8s.manifests import Manifests, Mode, build_manifests, load_proxy_ca, options, write_manifests
from auditor.k8s.preflight import PreflightOptions, PreflightResult, preflight


def snapshot(
    out: Path,
    *,
    kubeconfig: Path | None,
    context: str | None,
    namespaces: list[str],
    selectors: list[str],
    node: str | None,
    overlay: Path | None,
    follow: float,
    store: str | None,
) -> SnapshotSummary:
    config = with_overlay_cidrs(InventoryConfig(namespaces=namespaces, label_selectors=selectors, node_name=node), overlay)
    api = api_client(kubeconfig, context)
    try:
        return take_snapshot(api, config, out, follow=follow, store_url=store)
    finally:
        api.close()


def manifests(
    out: Path | None,
    *,
    hybrid_namespace: str,
    namespace: str,
    mode: Mode,
    store_url: str | None,
    image: str,
    ca: Path | None,
    api_servers: list[str],
    service_cidrs: list[str],
) -> tuple[Manifests, list[Path]]:
    opts = options(
        hybrid_namespace=hybrid_namespace, namespace=namespace, mode=mode, store_url=store_url, image=image,
        api_server_cidrs=api_servers, service_cidrs=service_cidrs,
    )
    result = build_manifests(opts, load_proxy_ca(ca) if ca else None)
    return result, write_manifests(result, out) if out else []


def run_preflight(
    *,
    kubeconfig: Path | None,
    context: str | None,
    hybrid_namespace: str,
    namespace: str,
    store_url: str | None,
    api_servers: list[str],
) -> PreflightResult:
    api = api_client(kubeconfig, context)
    try:
        return preflight(api, PreflightOptions(hybrid_namespace=hybrid_namespace, namespace=namespace, store_url=store_url,
                                               api_server_cidrs=api_servers))
    finally:
        api.close()
