"""Object storage addressing: which bucket a request touches.

s3.amazonaws.com and storage.googleapis.com are shared by every customer, so
allowing the host is not allowing the destination: the bucket is. S3 names the
bucket in the host (virtual-hosted: ``bucket.s3.us-west-2.amazonaws.com``) or in
the first path segment (path-style: ``s3.amazonaws.com/bucket/key``), on the
global, ``s3.<region>``, ``s3-<region>``, dualstack and FIPS endpoints. GCS does
the same on storage.googleapis.com plus its JSON API paths; Azure puts the
account in the host and the container in the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Service = Literal["s3", "gcs", "azure"]

_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
S3_HOST = re.compile(
    rf"^(?:(?P<bucket>[a-z0-9][a-z0-9.\-_]*)\.)?"
    rf"(?P<service>s3(?:-fips)?(?:\.dualstack)?(?:[.-](?P<region>{_REGION}))?|s3-external-1)"
    rf"\.amazonaws\.com(?:\.cn)?$"
)
_GCS_HOSTS = ("storage.googleapis.com", "www.googleapis.com")
_GCS_VIRTUAL = re.compile(r"^(?P<bucket>[a-z0-9][a-z0-9._-]*)\.storage\.googleapis\.com$")
_GCS_JSON = re.compile(r"^/(?:upload/|download/)?storage/v1/b/(?P<bucket>[^/?]+)")
_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.(?:blob|dfs)\.core\.windows\.net$")
_BUCKET_URI = re.compile(r"^(s3|gs|azure)://([^/?#]+)(/[^?#]*)?$")


@dataclass(frozen=True, slots=True)
class StorageHost:
    """What a host says about object storage, before the path is known."""

    service: Service
    service_host: str  # the endpoint without a virtual-hosted bucket: s3.us-west-2.amazonaws.com
    host_bucket: str | None  # bucket named by the host (virtual-hosted), or None for path-style
    account: str | None = None  # Azure storage account


@lru_cache(maxsize=65536)
def storage_host(host: str) -> StorageHost | None:
    """Classify a normalised host as an object storage endpoint, or None."""
    m = S3_HOST.match(host)
    if m:
        bucket = m.group("bucket")
        service_host = host[len(bucket) + 1 :] if bucket else host
        return StorageHost("s3", service_host, bucket)
    if host in _GCS_HOSTS:
        return StorageHost("gcs", host, None)
    m = _GCS_VIRTUAL.match(host)
    if m:
        return StorageHost("gcs", "storage.googleapis.com", m.group("bucket"))
    m = _AZURE_HOST.match(host)
    if m:
        return StorageHost("azure", host, None, account=m.group("account"))
    return None


def bucket_of(info: StorageHost, path: str | None) -> str | None:
    """The bucket key a request touches: the host's bucket, else the path's. None when not visible.

    Azure keys are ``account/container`` because container names repeat across accounts.
    """
    if info.host_bucket is not None:
        return info.host_bucket
    if path is None:
        return None
    if info.service == "gcs":
        m = _GCS_JSON.match(path)
        if m:
            return m.group("bucket")
        if info.service_host == "www.googleapis.com":
            return None
    segment = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
    if not segment:
        return None
    if info.service == "azure":
        return f"{info.account}/{segment}"
    return segment


def parse_bucket_uri(uri: str, account: str | None = None) -> tuple[Service, str, str]:
    """``s3://name/prefix`` -> ("s3", "name", "/prefix"); azure keys become ``account/container``."""
    m = _BUCKET_URI.match(uri.strip())
    if not m:
        raise ValueError(f"not a bucket URI: {uri}")
    scheme, name, prefix = m.group(1), m.group(2), m.group(3) or "/"
    if scheme == "s3":
        return "s3", name, prefix
    if scheme == "gs":
        return "gcs", name, prefix
    return "azure", f"{(account or '').lower()}/{name}", prefix


def write_method(method: str | None) -> bool:
    """Methods that put bytes into a bucket (S3 multipart uploads start and finish with POST)."""
    return method in ("PUT", "POST", "PATCH", "DELETE")
