"""The shapes of a rule pack file and of a site overlay file, as pydantic models.

These models are the file format: unknown keys are errors, so a typo never
silently widens or narrows what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from auditor.model import Action, LikelihoodName, Severity

EndpointScope = Literal["pod", "node"]
Transport = Literal["tcp", "udp", "any"]
Boundary = Literal["vendor", "customer"]
Port = Annotated[int, Field(ge=1, le=65535)]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TEMPLATE = re.compile(r"\{([^{}]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"id '{value}' is not a lower-case word | fix: use letters, digits, '.', '_' or '-' such as 'egress.port'")
    return value


def check_host_pattern(value: str) -> str:
    """A host in a rule: a name, '*.' plus a name (exactly one more label), or a template like {region}."""
    text = value.strip()
    if not text:
        raise ValueError("empty host | fix: name a host such as api.example.com, or remove the entry")
    if "://" in text or "/" in text:
        raise ValueError(f"host '{value}' has a scheme or path | fix: write only the host name, such as api.example.com")
    body = text[2:] if text.startswith("*.") else text
    if "*" in body:
        raise ValueError(
            f"wildcard in host '{value}' is not the whole leftmost label | fix: write '*.example.com' (matches exactly one more label)"
        )
    if ":" in body and not _is_ip_text(body):
        raise ValueError(f"host '{value}' carries a port | fix: put the port in 'ports:' and only the name in 'hosts:'")
    return text


def _is_ip_text(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def _check_methods(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = []
    for value in values:
        method = value.upper()
        if method not in HTTP_METHODS:
            raise ValueError(f"unknown HTTP method '{value}' | fix: use one of {', '.join(sorted(HTTP_METHODS))}")
        out.append(method)
    return out


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address or CIDR | fix: write e.g. 10.42.0.0/16 or 203.0.113.7") from None
    return value.strip()


def template_names(text: str) -> list[str]:
    return _TEMPLATE.findall(text)


# --- the base pack ---------------------------------------------------------------------------


class PackInfo(_Strict):
    id: str
    version: str
    title: str
    source: str
    description: str = ""

    _id = field_validator("id")(_check_id)


class ContractLine(_Strict):
    """A line of the vendor's contract, quoted verbatim, that rules cite."""

    id: str
    section: str
    text: str = Field(min_length=1)

    _id = field_validator("id")(_check_id)


class MetadataKindSpec(_Strict):
    id: str
    contract: str
    description: str = ""

    _id = field_validator("id")(_check_id)


class ForbiddenClassSpec(_Strict):
    id: str
    contract: str
    labels: list[str] = Field(min_length=1)
    description: str = ""

    _id = field_validator("id")(_check_id)


class DenyRouteSpec(_Strict):
    """A route an endpoint forbids even though its host and method are allowed."""

    method: str | None = None
    path: str = Field(min_length=1)
    rule: str

    @field_validator("method")
    @classmethod
    def _method(cls, value: str | None) -> str | None:
        checked = _check_methods([value] if value is not None else None)
        return checked[0] if checked else None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path glob '{value}' does not start with '/' | fix: write e.g. /projects/*/artifacts")
        return value


class EndpointSpec(_Strict):
    """One destination the contract allows: host(s), ports, who, and what."""

    id: str
    hosts: list[str] = Field(default_factory=list)
    ips: list[str] = Field(default_factory=list)
    ports: list[Port] = Field(default_factory=lambda: [443], min_length=1)
    transport: Transport = "tcp"
    tls: bool = True
    scopes: list[EndpointScope] = Field(min_length=1)
    methods: list[str] | None = None
    paths: list[str] | None = None
    deny: list[DenyRouteSpec] = Field(default_factory=list)
    buckets: list[str] = Field(default_factory=list)
    boundary: Boundary = "vendor"
    rule: str
    method_rule: str = "egress.method"
    contract: str
    description: str = ""

    _id = field_validator("id")(_check_id)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        return [check_host_pattern(v) for v in values]

    @field_validator("ips")
    @classmethod
    def _ips(cls, values: list[str]) -> list[str]:
        return [_check_network(v) for v in values]

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[str] | None) -> list[str] | None:
        return _check_methods(values)

    @model_validator(mode="after")
    def _somewhere(self) -> EndpointSpec:
        if not self.hosts and not self.ips:
            raise ValueError("endpoint names no host and no IP | fix: add 'hosts: [name]' or 'ips: [CIDR]'")
        return self


class RuleSpec(_Strict):
    id: str
    action: Action
    severity: Severity
    message: str = Field(min_length=1)
    contract: str
    remediation: str = Field(min_length=1)
    controls: list[str] = Field(min_length=1)
    likelihood: LikelihoodName | None = None

    _id = field_validator("id")(_check_id)


class PackFile(_Strict):
    pack: PackInfo
    vars: dict[str, str] = Field(default_factory=dict)
    contract: list[ContractLine] = Field(min_length=1)
    metadata_kinds: list[MetadataKindSpec] = Field(default_factory=list)
    forbidden_classes: list[ForbiddenClassSpec] = Field(default_factory=list)
    endpoints: list[EndpointSpec] = Field(min_length=1)
    observations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(min_length=1)


# --- the site overlay ------------------------------------------------------------------------


class OverlayInfo(_Strict):
    id: str
    description: str = ""

    _id = field_validator("id")(_check_id)


def _uri_or_mapping(value: Any, key: str) -> Any:
    return {key: value} if isinstance(value, str) else value


class BucketSpec(_Strict):
    """One of the customer's own buckets: s3://name, gs://name, azure://container (with account)."""

    uri: str = Field(min_length=1)
    account: str | None = None  # Azure storage account: the container lives at <account>.blob.core.windows.net
    methods: list[str] = Field(default_factory=lambda: ["GET", "HEAD", "PUT", "POST", "DELETE"])
    scopes: list[EndpointScope] = Field(default_factory=lambda: ["pod", "node"], min_length=1)
    description: str = ""

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        m = re.match(r"^(s3|gs|azure)://([^/?#]+)(/[^?#]*)?$", value.strip())
        if not m:
            raise ValueError(f"bucket '{value}' is not s3://, gs:// or azure:// | fix: write e.g. s3://my-bucket/ or gs://my-bucket/")
        return value.strip()

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[str]) -> list[str]:
        return _check_methods(values) or []

    @model_validator(mode="after")
    def _azure_account(self) -> BucketSpec:
        if self.uri.startswith("azure://") and not self.account:
            raise ValueError(
                f"bucket '{self.uri}' needs its storage account | fix: add 'account: <name>' (the <name>.blob.core.windows.net host)"
            )
        return self


class HostAllowSpec(_Strict):
    """A host the site allows beyond the contract (KMS, an internal mirror, ...)."""

    host: str
    ports: list[Port] = Field(default_factory=lambda: [443], min_length=1)
    transport: Transport = "tcp"
    tls: bool = True
    scopes: list[EndpointScope] = Field(default_factory=lambda: ["pod", "node"], min_length=1)
    methods: list[str] | None = None
    paths: list[str] | None = None
    boundary: Boundary = "vendor"
    reason: str = ""

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value.strip() and _is_cidr_text(value):
            return _check_network(value)
        return check_host_pattern(value)

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: list[str] | None) -> list[str] | None:
        return _check_methods(values)


def _is_cidr_text(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
        return True
    except ValueError:
        return False


class ClusterDnsSpec(_Strict):
    servers: list[str] = Field(default_factory=list)
    suffixes: list[str] = Field(default_factory=lambda: ["cluster.local"])

    @field_validator("servers")
    @classmethod
    def _servers(cls, values: list[str]) -> list[str]:
        return [_check_network(v) for v in values]

    @field_validator("suffixes")
    @classmethod
    def _suffixes(cls, values: list[str]) -> list[str]:
        for v in values:
            check_host_pattern(v)
            if v.startswith("*"):
                raise ValueError(f"DNS suffix '{v}' has a wildcard | fix: write the suffix alone, such as cluster.local")
        return values


class ClusterSpec(_Strict):
    pod_cidrs: list[str] = Field(default_factory=list)
    service_cidrs: list[str] = Field(default_factory=list)
    node_cidrs: list[str] = Field(default_factory=list)
    dns: ClusterDnsSpec = Field(default_factory=ClusterDnsSpec)

    @field_validator("pod_cidrs", "service_cidrs", "node_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return [_check_network(v) for v in values]


class OverlayFile(_Strict):
    overlay: OverlayInfo
    registry_region: str | None = None
    buckets: list[BucketSpec] = Field(default_factory=list)
    kms: list[HostAllowSpec] = Field(default_factory=list)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    proxy: str | None = None
    allow: list[HostAllowSpec] = Field(default_factory=list)
    unknown_scope: Literal["unverified", "pod", "node"] | None = None

    @field_validator("buckets", mode="before")
    @classmethod
    def _bucket_strings(cls, values: Any) -> Any:
        return [_uri_or_mapping(v, "uri") for v in values] if isinstance(values, list) else values

    @field_validator("kms", "allow", mode="before")
    @classmethod
    def _host_strings(cls, values: Any) -> Any:
        return [_uri_or_mapping(v, "host") for v in values] if isinstance(values, list) else values

    @field_validator("registry_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z]{2}(-[a-z]+)+-\d+$", value):
            raise ValueError(f"registry_region '{value}' is not an AWS region | fix: write e.g. us-west-2")
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        m = re.match(r"^(?:https?://)?(\[[0-9a-fA-F:.]+\]|[^/:\s]+):(\d{1,5})/?$", value.strip())
        if not m or not 1 <= int(m.group(2)) <= 65535:
            raise ValueError(f"proxy '{value}' is not host:port | fix: write e.g. http://10.43.12.7:3128")
        return value.strip()
