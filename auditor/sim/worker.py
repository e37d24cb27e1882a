"""The simulated hybrid worker: runs a scenario's steps as real HTTPS clients would.

Through a proxy it behaves like gretel-client with a lowercase `https_proxy`: `requests`
with explicit proxies, `trust_env=False`, and the proxy's CA. A step marked `direct`, and
every step when no proxy is given, connects itself: names resolve through the simulated
DNS (from the pod's or node's address), and the connection goes to the answer.

Pod traffic leaves from `pod_ip` and node traffic (image pulls) from `node_ip`, so the
sensors can attribute each connection to its scope by client address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from string import Formatter
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import requests
import urllib3
from pydantic import BaseModel, ConfigDict, Field
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as u3conn

from auditor.errors import AuditorError
from auditor.sim import names, payloads
from auditor.sim.dns import query_a
from auditor.sim.scenarios import ACTOR_SCOPE, SCENARIOS, Expectation, Step

# The shape `auditor canary` makes (`ba-canary-` + 24 hex digits); pass the site's own with `canary=`.
DEFAULT_CANARY = "ba-canary-5e1f0c3a9d7b2468ace13579"
_TIMEOUT = 5.0
_CONTENT_TYPES = {"model-archive": "application/gzip", "report-json": "application/gzip",
                  "training-csv": "text/csv"}


class WorkerConfig(BaseModel):
    """Everything the worker needs to know about the world it runs in."""

    model_config = ConfigDict(extra="forbid")

    proxy_url: str | None = None  # an https_proxy URL, e.g. http://127.0.0.1:8080
    proxy_ca: Path | None = None  # the proxy's CA (what the pods get as gretelConfig.caOverride)
    sim_ca: Path  # the simulation's CA, trusted by direct connections
    dns_server: tuple[str, int]
    port_map: dict[str, int] = Field(default_factory=dict)  # listener IP -> port, for direct connections to :443
    foreign_ip: str
    pod_ip: str = names.POD_IP
    node_ip: str = names.NODE_IP
    canary: str = DEFAULT_CANARY


class DnsLookup(BaseModel):
    """A lookup the worker made through the simulated DNS (direct connections and the tunnel)."""

    name: str
    source_ip: str
    rcode: str
    answers: list[str] = Field(default_factory=list)


class Hop(BaseModel):
    """A redirect the client followed (ECR blob -> S3 layer bucket)."""

    url: str
    status: int


class StepResult(BaseModel):
    """What one step sent and what came back; never the body itself, only its digest and size."""

    id: str
    started: datetime  # UTC, to line a step up with the events the sensors recorded for it
    actor: str
    scope: Literal["pod", "node"]
    kind: str
    via: Literal["proxy", "direct"]
    method: str | None = None
    url: str | None = None
    host: str | None = None
    http_host: str | None = None
    request_bytes: int = 0
    request_sha256: str | None = None
    status: int | None = None
    response_bytes: int = 0
    hops: list[Hop] = Field(default_factory=list)  # redirects followed before the final response
    dns: list[DnsLookup] = Field(default_factory=list)
    ok: bool = True
    error: str | None = None
    expect: Expectation | None = None


class ScenarioResult(BaseModel):
    name: str
    proxy_url: str | None
    steps: list[StepResult]
    duration_ms: int

    @property
    def ok(self) -> bool:
        """Every step of the real call sequence succeeded (injected violations may be refused)."""
        return all(s.ok for s in self.steps)

    @property
    def injected(self) -> list[StepResult]:
        return [s for s in self.steps if s.expect is not None]

    @property
    def dns_lookups(self) -> list[DnsLookup]:
        return [d for s in self.steps for d in s.dns]


# --- payloads --------------------------------------------------------------------------------


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _model_logs(ctx: dict[str, str]) -> bytes:
    lines = [
        {"msg": "Training data loaded", "ctx": {"record_count": len(payloads.TRAINING_ROWS),
                                                "field_count": len(payloads.TRAINING_COLUMNS)}, "stage": "pre"},
        {"msg": "Starting training", "ctx": {"num_epochs": 100}, "stage": "train"},
        {"msg": "Epoch complete", "ctx": {"epoch": 50, "num_epochs": 100}, "stage": "train"},
        {"msg": "Generating sample records", "ctx": {"num_records": 5000, "current_valid_count": 5000}, "stage": "run"},
        {"msg": "Model training complete, artifacts written to model.tar.gz", "ctx": {}, "stage": "post"},
    ]
    logs = [{"ts": _ts(), **line, "seq": i} for i, line in enumerate(lines, 1)]
    return json.dumps({"uid": ctx["model_id"], "logs": logs}).encode()


def _model_logs_leaky(ctx: dict[str, str]) -> bytes:
    rows = payloads.training_csv(6).decode()
    line = {"ts": _ts(), "msg": f"ValueError: could not convert string to float in rows:\n{rows}",
            "ctx": {"record_count": 6}, "seq": 6, "stage": "pre"}
    return json.dumps({"uid": ctx["model_id"], "logs": [line]}).encode()


def _workflow_logs(ctx: dict[str, str]) -> bytes:
    msgs = [("info", "Task synthesize started", "start"), ("info", "Read 1 file: train.csv", None),
            ("info", "Wrote synthetic/train_synthetic.csv", None), ("info", "Task synthesize completed", "end")]
    return json.dumps({"logs": [{"ts": _ts(), "level": lvl, "msg": msg, "marker": marker} for lvl, msg, marker in msgs]}).encode()


def _connection(ctx: dict[str, str], *, plaintext: bool) -> bytes:
    doc: dict[str, Any] = {
        "project_id": ctx["project_id"], "name": "acme-s3", "type": "s3",
        "config": {"bucket": names.CUSTOMER_BUCKET, "path": "sources/"},
        "connection_target_type": "source", "auth_strategy": "access_key",
    }
    if plaintext:
        doc["credentials"] = payloads.plaintext_credentials()
    else:
        doc["encrypted_credentials"] = payloads.encrypted_credentials()
    return json.dumps(doc).encode()


def _workflow(ctx: dict[str, str]) -> bytes:
    return json.dumps({"name": "nightly-synthetics", "project_id": ctx["project_id"],
                       "config": payloads.workflow_config(ctx["project_id"]),
                       "config_text": payloads.workflow_config_text(ctx["project_id"]), "runner_mode": "hybrid"}).encode()


def _workflow_run(ctx: dict[str, str]) -> bytes:
    return json.dumps({"workflow_id": ctx["workflow_id"], "name": "nightly-synthetics-run",
                       "config": payloads.workflow_config(ctx["project_id"]),
                       "config_text": payloads.workflow_config_text(ctx["project_id"])}).encode()


BODIES: dict[str, Callable[[dict[str, str]], bytes]] = {
    "model-config": lambda ctx: json.dumps(payloads.model_config(ctx["project_name"])).encode(),
    "model-logs": _model_logs,
    "model-logs-leaky": _model_logs_leaky,
    "workflow-logs": _workflow_logs,
    "connection": lambda ctx: _connection(ctx, plaintext=False),
    "connection-plaintext": lambda ctx: _connection(ctx, plaintext=True),
    "workflow": _workflow,
    "workflow-run": _workflow_run,
    "model-archive": lambda ctx: payloads.model_archive(),
    "report-json": lambda ctx: payloads.report_json_gz(),
    "training-csv": lambda ctx: payloads.training_csv(),
}


# --- templates -------------------------------------------------------------------------------


def _derive_worker_key(ctx: dict[str, str]) -> str:
    """The agent reads the worker's key out of the job's base64 JSON worker token, as the real one does."""
    return str(json.loads(base64.standard_b64decode(ctx["worker_token"]))["model_key"])


_DERIVED: dict[str, tuple[str, Callable[[dict[str, str]], str]]] = {"worker_key": ("worker_token", _derive_worker_key)}


class _MissingVar(Exception):
    pass


def _fill(template: str, ctx: dict[str, str]) -> str:
    for _, field, _, _ in Formatter().parse(template):
        if field and field not in ctx:
            source, derive = _DERIVED.get(field, ("", None))
            if derive is not None and source in ctx:
                ctx[field] = derive(ctx)
            else:
                raise _MissingVar(field)
    return template.format_map(ctx)


def _fill_json(doc: Any, ctx: dict[str, str]) -> Any:
    if isinstance(doc, str):
        return _fill(doc, ctx)
    if isinstance(doc, dict):
        return {k: _fill_json(v, ctx) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_fill_json(v, ctx) for v in doc]
    return doc


def _dig(doc: Any, path: str) -> str | None:
    for part in path.split("."):
        if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            return None
    return None if doc is None else str(doc)


# --- AWS Signature V4, as an AWS SDK signs an S3 request ----------------------------------------

_SIM_ACCESS_KEY = "AKIAQSIMULATEDWORKER"
_SIM_SECRET_KEY = "simulated/worker/secret/key/for/the/customer/bucket"


def sigv4_headers(method: str, url: str, body: bytes, *, region: str = names.REGION) -> dict[str, str]:
    """Headers an AWS SDK sends to S3, signed with the simulation's own key, so the sensors see
    (and must redact) a real S3 authorisation rather than a stand-in."""
    parts = urlsplit(url)
    now = datetime.now(UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    host = parts.hostname or ""
    canonical_headers = f"host:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n"
    signed = "host;x-amz-content-sha256;x-amz-date"
    query = "&".join(sorted(parts.query.split("&"))) if parts.query else ""
    canonical = "\n".join([method, quote(parts.path or "/"), query, canonical_headers, signed, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{_SIM_SECRET_KEY}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={_SIM_ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={signature}",
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
    }


# --- transport -------------------------------------------------------------------------------

Connector = Callable[[str, int], tuple[str, int]]


def _direct_pool(connector: Connector) -> type[HTTPSConnectionPool]:
    """A urllib3 pool whose connections ask `connector` where to connect, keeping SNI and Host."""

    class _Connection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            ip, port = connector(self._dns_host, self.port)
            try:
                return u3conn.create_connection((ip, port), self.timeout, source_address=self.source_address,
                                                socket_options=self.socket_options)
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {ip}:{port} timed out") from exc
            except OSError as exc:
                raise NewConnectionError(self, f"Failed to establish a new connection to {ip}:{port}: {exc}") from exc

    class _Pool(HTTPSConnectionPool):
        ConnectionCls = _Connection

    return _Pool


class _ScopedAdapter(HTTPAdapter):
    """Binds every connection (to the proxy or the destination) to the scope's source address."""

    def __init__(self, source_ip: str, connector: Connector | None) -> None:
        self._source_ip = source_ip
        self._connector = connector
        super().__init__(pool_connections=8, pool_maxsize=4, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["source_address"] = (self._source_ip, 0)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        if self._connector is not None:
            self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme,
                                                       "https": _direct_pool(self._connector)}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        proxy_kwargs["source_address"] = (self._source_ip, 0)
        return super().proxy_manager_for(proxy, **proxy_kwargs)


class SimWorker:
    """Runs steps; keeps one session per (scope, route) so connections are reused like a real client's."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._cache: dict[tuple[str, str], list[str]] = {}
        self._lookups: list[DnsLookup] = []
        self._sessions: dict[tuple[str, str], requests.Session] = {}

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    def resolve(self, name: str, source_ip: str) -> list[str]:
        """A stub resolver pointed at the simulated DNS; answers cached per source (TTL ignored: runs are short)."""
        key = (name, source_ip)
        if key not in self._cache:
            rcode, answers = query_a(self.config.dns_server, name, source_ip=source_ip)
            self._lookups.append(DnsLookup(name=name, source_ip=source_ip, rcode=rcode, answers=answers))
            self._cache[key] = answers
        return self._cache[key]

    def _connector(self, source_ip: str) -> Connector:
        def connect(host: str, port: int) -> tuple[str, int]:
            try:
                ip = str(ip_address(host))
            except ValueError:
                answers = self.resolve(host, source_ip)
                if not answers:
                    raise OSError(f"{host}: NXDOMAIN from {self.config.dns_server[0]}") from None
                ip = answers[0]
            return ip, self.config.port_map.get(ip, port) if port == 443 else port

        return connect

    def _session(self, scope: str, via: str) -> requests.Session:
        key = (scope, via)
        if key not in self._sessions:
            source_ip = self.config.pod_ip if scope == "pod" else self.config.node_ip
            session = requests.Session()
            session.trust_env = False
            if via == "proxy":
                assert self.config.proxy_url is not None
                session.proxies = {"https": self.config.proxy_url, "http": self.config.proxy_url}
                session.verify = str(self.config.proxy_ca or self.config.sim_ca)
                adapter = _ScopedAdapter(source_ip, None)
            else:
                session.verify = str(self.config.sim_ca)
                adapter = _ScopedAdapter(source_ip, self._connector(source_ip))
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._sessions[key] = session
        return self._sessions[key]

    def _headers(self, actor: str, ctx: dict[str, str]) -> dict[str, str]:
        if actor == "agent":
            metrics = json.dumps({"image_version": names.IMAGE_VERSION, "app_version": names.APP_VERSION, "service": "agent"})
            return {"Authorization": ctx["api_key"], "X-Gretel-Clusterid": ctx["cluster_guid"],
                    "X-Gretel-AppVersion": names.APP_VERSION, "X-Gretel-ImageVersion": names.IMAGE_VERSION,
                    "X-Gretel-Client-Metrics": metrics, "User-Agent": "OpenAPI-Generator/1.0.0/python"}
        if actor == "sdk":
            return {"Authorization": ctx["api_key"], "User-Agent": "gretel-client/0.30.0 python/3.11",
                    "X-Gretel-Client-Metrics": json.dumps({"service": "sdk", "app_version": "0.30.0"})}
        if actor == "worker":
            return {"User-Agent": "gretel-worker/0.30.0 python-requests/2.32"}
        if actor == "node":
            return {"User-Agent": "containerd/1.7.22"}
        return {"User-Agent": "python-requests/2.32.3"}

    def run_step(self, step: Step, ctx: dict[str, str]) -> StepResult:
        scope = ACTOR_SCOPE[step.actor]
        via: Literal["proxy", "direct"] = "proxy" if self.config.proxy_url and step.route == "proxy" else "direct"
        result = StepResult(id=step.id, started=datetime.now(UTC), actor=step.actor, scope=scope, kind=step.kind, via=via,
                            expect=step.expect)
        before = len(self._lookups)
        try:
            if step.kind == "dns-burst":
                self._dns_burst(step, ctx, scope, result)
            else:
                self._http(step, ctx, scope, via, result)
        except _MissingVar as exc:
            result.ok, result.error = False, f"needs {{{exc.args[0]}}}, which no earlier step captured"
        except (requests.RequestException, OSError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:400]
            result.ok = step.expect is not None  # a refused violation is the auditor working, not a failure
        result.dns = self._lookups[before:]
        return result

    def _dns_burst(self, step: Step, ctx: dict[str, str], scope: str, result: StepResult) -> None:
        parent = _fill(step.parent, ctx)
        source_ip = self.config.pod_ip if scope == "pod" else self.config.node_ip
        for label in payloads.tunnel_labels(step.count):
            name = f"{label}.{parent}"
            rcode, answers = query_a(self.config.dns_server, name, source_ip=source_ip)
            self._lookups.append(DnsLookup(name=name, source_ip=source_ip, rcode=rcode, answers=answers))
            result.request_bytes += len(name)
        result.host = parent

    def _http(self, step: Step, ctx: dict[str, str], scope: str, via: str, result: StepResult) -> None:
        url = _fill(step.url, ctx)
        if step.params:
            url += ("&" if "?" in url else "?") + urlencode({k: _fill(v, ctx) for k, v in step.params.items()})
        headers = self._headers(step.actor, ctx)
        headers.update({k: _fill(v, ctx) for k, v in step.headers.items()})
        body: bytes | None = None
        if step.body is not None:
            try:
                body = BODIES[step.body](ctx)
            except KeyError as exc:
                raise _MissingVar(exc.args[0]) from None
            headers.setdefault("Content-Type", _CONTENT_TYPES.get(step.body, "application/json"))
        elif step.json_body is not None:
            body = json.dumps(_fill_json(step.json_body, ctx)).encode()
            headers.setdefault("Content-Type", "application/json")
        if step.sigv4:
            headers.update(sigv4_headers(step.method, url, body or b""))
        auth = (_fill(step.auth[0], ctx), _fill(step.auth[1], ctx)) if step.auth else None
        result.method, result.url = step.method, url
        result.host, result.http_host = urlsplit(url).hostname, headers.get("Host")
        result.request_bytes = len(body or b"")
        result.request_sha256 = hashlib.sha256(body).hexdigest() if body else None
        session = self._session(scope, via)
        response = session.request(step.method, url, data=body, headers=headers, auth=auth, timeout=_TIMEOUT,
                                   allow_redirects=True)
        result.hops = [Hop(url=r.url, status=r.status_code) for r in response.history]
        result.status = response.status_code
        result.response_bytes = len(response.content)
        if step.expect is None and response.status_code not in step.expect_status:
            wanted = list(step.expect_status)
            result.ok, result.error = False, f"status {response.status_code}, expected {wanted}: {response.text[:200]}"
            return
        if step.verify_digest:
            digest = _fill(step.verify_digest, ctx)
            got = payloads.sha256_digest(response.content)
            if got != digest:
                result.ok, result.error = False, f"body digest {got} is not {digest}"
                return
        if step.capture and response.ok:
            try:
                doc = response.json()
            except ValueError:
                result.ok, result.error = False, "response is not JSON, nothing to capture"
                return
            for var, path in step.capture.items():
                value = _dig(doc, path)
                if value is not None:
                    ctx[var] = value


def initial_context(config: WorkerConfig) -> dict[str, str]:
    return {
        "api": names.API, "artifacts": names.ARTIFACTS, "s3": names.S3_GLOBAL, "s3_regional": names.S3_REGIONAL,
        "customer_bucket_host": names.CUSTOMER_BUCKET_HOST, "customer_bucket": names.CUSTOMER_BUCKET,
        "foreign": names.FOREIGN, "other_registry": names.OTHER_REGISTRY, "foreign_bucket": names.FOREIGN_BUCKET, "foreign_ip": config.foreign_ip,
        "project_name": names.PROJECT_NAME, "cluster_guid": names.CLUSTER_GUID, "api_key": names.API_KEY,
        "agent_email": names.AGENT_EMAIL, "user_email": names.USER_EMAIL, "repo": names.REGISTRY_REPO,
        "image_tag": names.IMAGE_TAG, "canary": config.canary,
    }


def run_steps(name: str, steps: list[Step], config: WorkerConfig) -> ScenarioResult:
    started = time.monotonic()
    worker = SimWorker(config)
    ctx = initial_context(config)
    try:
        results = [worker.run_step(step, ctx) for step in steps]
    finally:
        worker.close()
    return ScenarioResult(name=name, proxy_url=config.proxy_url, steps=results,
                          duration_ms=int((time.monotonic() - started) * 1000))


def scenario_steps(name: str) -> list[Step]:
    if name not in SCENARIOS:
        raise AuditorError(f"unknown scenario {name!r}", fix=f"use one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name]
