"""Red flag 10: image pulls from a registry other than the one `get_login` named.

The agent asks api.gretel.cloud (`GET /opt/containers/get_login`) for registry
credentials; the answer also names the registry host, and nodes pull the worker
images from it. The proxy reads that name from the response (never the credentials
beside it) and records it on the get_login event (`HttpInfo.login_registry`). A pull
is then checked against the registries named so far: by the proxy for the pulls it
carries (the distribution API's paths tell a pull), and by the probe for the TLS
connections of nodes that pull around the proxy (the server name tells a registry).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime, timedelta

import orjson

from auditor.model import PROXY_PREFIX
from auditor.rules.hosts import host_kind, normalise_host, split_host_port
from auditor.store.base import Store, chain_keys

OBSERVATION = "registry-not-named"
GET_LOGIN_PATH = "/opt/containers/get_login"
MAX_LOGIN_BODY = 64 * 1024  # a get_login answer is a few hundred bytes; anything bigger is not read
LOOKBACK = timedelta(hours=2)  # the agent asks hourly: the answer in force was recorded within two hours
_FIELD = b'"login_registry":"'  # as canonical JSON stores it: a body without it is not parsed

# The distribution API (OCI / Docker Registry v2): the version check, and manifests,
# blobs and tags of a repository. Nothing else a host serves under /v2/ is a pull.
_PULL_PATH = re.compile(r"^/v2(?:/?(?:[?#]|$)|/.+/(?:manifests|blobs|tags)/)")
# Names only a container registry answers to: ECR (what Gretel uses, dual-stack too) and the public ones.
_REGISTRY_NAME = re.compile(
    r"^(?:[0-9]{12}\.dkr\.ecr(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?|[0-9]{12}\.dkr-ecr(?:-fips)?\.[a-z0-9-]+\.on\.aws"
    r"|(?:registry-1\.)?docker\.io|index\.docker\.io|ghcr\.io|quay\.io|public\.ecr\.aws|mcr\.microsoft\.com|registry\.gitlab\.com"
    r"|(?:[a-z0-9-]+\.)?gcr\.io|[a-z0-9-]+-docker\.pkg\.dev|[a-z0-9-]+\.azurecr\.io|registry\.k8s\.io|nvcr\.io)$"
)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


def registry_host(value: str) -> str | None:
    """The host a registry reference names (`https://user@host:port/path`, `host/repo`,
    `[v6]:port`, `host`), normalised; None for anything that is not a host."""
    rest = value.strip().split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _ = split_host_port(rest)
    host = normalise_host(host)
    return host if _HOSTNAME.match(host) or host_kind(host) != "name" else None


def is_get_login(method: str, path: str) -> bool:
    """The agent's request for registry credentials (a query or trailing slash aside)."""
    return method == "GET" and path.split("?", 1)[0].rstrip("/") == GET_LOGIN_PATH


def login_registry(method: str, path: str, status: int | None, body: bytes | None) -> str | None:
    """The registry host a successful get_login answer names, or None when this is not
    one or it names none. Only `registry` (under `data`, or at the top) is read."""
    if not is_get_login(method, path) or status != 200 or not body or len(body) > MAX_LOGIN_BODY:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    named = data.get("registry") if isinstance(data, dict) else None
    if named is None:
        named = doc.get("registry")
    return registry_host(named) if isinstance(named, str) else None


def is_pull(method: str, path: str) -> bool:
    """A request of the distribution API that reads an image (or checks the API version)."""
    return method in ("GET", "HEAD") and bool(_PULL_PATH.match(path))


def is_registry_name(host: str) -> bool:
    """A server name (a port allowed) only a container registry answers to: what the
    probe can tell of a pull, without the path."""
    return bool(_REGISTRY_NAME.match(normalise_host(split_host_port(host)[0])))


def unnamed(host: str | None, named: Collection[str]) -> bool:
    """Once get_login has named at least one registry: `host` is not among them."""
    if not named or not host:
        return False
    return registry_host(host) not in named


def note(named: Collection[str]) -> str:
    return "get_login named " + ", ".join(sorted(named)[:4])


def named_in(store: Store, since: datetime, until: datetime | None = None) -> dict[str, datetime]:
    """The registries that allowed get_login answers named within [since, until), read
    from the proxies' stored events: host -> when first named. How a sensor that starts
    (or restarts) between two answers knows the one in force."""
    out: dict[str, datetime] = {}
    for *_, stored in store.event_rows(since, until, **chain_keys(PROXY_PREFIX)):
        body = stored if isinstance(stored, bytes) else stored.encode()
        if _FIELD not in body:
            continue
        try:
            doc = orjson.loads(body)
            http, decision = doc.get("http") or {}, doc.get("decision") or {}
            host = registry_host(http["login_registry"]) if doc.get("kind") == "http" and decision.get("action") == "allowed" else None
            at = datetime.fromisoformat(doc["time"])
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            continue  # not an event this sensor wrote: nothing it can trust
        if host is not None and (host not in out or at < out[host]):
            out[host] = at
    return out
