"""What each simulated host answers: the Gretel API, artifacts, ECR, S3 and a foreign collector.

Routes and shapes follow `gretel-hybrid-traffic.md` (Gretel's public client and chart);
where Gretel's code is not public (log shipping) the route is marked as inferred.
Each app is a plain function of a request to a response over one shared `SimState`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, quote, urlsplit

from auditor.sim import names, payloads

_PRESIGN_TTL = timedelta(minutes=15)
_MAX_STORED_OBJECTS = 256


@dataclass
class SimRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    host: str  # the name the request was answered as (Host header when it names a sim host)

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


@dataclass
class SimResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, doc: object, **headers: str) -> SimResponse:
        return cls(status, json.dumps(doc, separators=(",", ":")).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def xml(cls, status: int, code: str, message: str) -> SimResponse:
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
        return cls(status, body.encode(), {"Content-Type": "application/xml"})


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SimState:
    """Everything the simulated control plane remembers; guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._counter = 0
        self._secret = hashlib.sha256(b"boundary-auditor-sim-presign").digest()
        self.registry_password = base64.b64encode(payloads.keystream("ecr-token", 48)).decode()
        self.projects: dict[str, dict[str, object]] = {}
        self.invites: dict[str, dict[str, object]] = {}
        self.models: dict[str, dict[str, object]] = {}
        self.jobs: list[dict[str, object]] = []
        self.workflows: dict[str, dict[str, object]] = {}
        self.runs: dict[str, dict[str, object]] = {}
        self.connections: dict[str, dict[str, object]] = {}
        self.log_lines: list[dict[str, object]] = []
        self.objects: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[str, bytes] = {
            payloads.sha256_digest(payloads.image_config()): payloads.image_config(),
            payloads.sha256_digest(payloads.image_layer()): payloads.image_layer(),
        }
        for digest, data in self.blobs.items():
            self.objects[(names.LAYER_BUCKET, self.layer_key(digest))] = data
        self.objects[(names.CUSTOMER_BUCKET, f"sources/{names.PROJECT_NAME}/train.csv")] = payloads.training_csv()
        self.objects[("gretel-base-models", "actgan/v1/base.tar.gz")] = payloads.base_model_blob()
        # The agent's organisation has one pending invite to the demo project.
        project = self._new_project(names.PROJECT_NAME, "Hybrid demo project", owner=names.USER_EMAIL)
        invite_id = self.new_id("invite")
        self.invites[invite_id] = {
            "_id": invite_id, "project_guid": project["guid"], "level": 3, "status": "pending",
            "invited_by": {"email": names.USER_EMAIL},
        }

    def new_id(self, kind: str) -> str:
        """Deterministic ids: the n-th id of a simulation is the same in every run."""
        self._counter += 1
        return hashlib.sha256(f"{kind}:{self._counter}".encode()).hexdigest()[:24]

    def _new_project(self, name: str, description: str, owner: str) -> dict[str, object]:
        pid = self.new_id("project")
        project: dict[str, object] = {
            "_id": pid, "uid": pid, "guid": f"proj_{pid}", "name": name, "display_name": name,
            "description": description, "runner_mode": "hybrid", "cluster_guid": names.CLUSTER_GUID,
            "owner": owner, "created": _iso(_now()),
        }
        self.projects[pid] = project
        return project

    def find_project(self, ref: str) -> dict[str, object] | None:
        for project in self.projects.values():
            if ref in (project["_id"], project["name"], project["guid"]):
                return project
        return None

    @staticmethod
    def layer_key(digest: str) -> str:
        return f"3f2e9a-074762682575-7c1d0b5e/{digest.removeprefix('sha256:')}"

    def presign(self, host: str, path: str, *, service: str = "s3") -> str:
        """An S3-style presigned URL that this simulation (alone) can check."""
        now = _now()
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        expires = str(int(_PRESIGN_TTL.total_seconds()))
        sig = hmac.new(self._secret, f"{host}\n{path}\n{stamp}\n{expires}".encode(), hashlib.sha256).hexdigest()
        credential = quote(f"ASIAQSIMULATED7EXAMPLE/{now:%Y%m%d}/{names.REGION}/{service}/aws4_request", safe="")
        query = (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={credential}&X-Amz-Date={stamp}"
            f"&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
        )
        return f"https://{host}{path}?{query}"

    def presign_valid(self, host: str, path: str, query: str) -> bool:
        params = parse_qs(query)
        try:
            stamp, expires, sig = params["X-Amz-Date"][0], params["X-Amz-Expires"][0], params["X-Amz-Signature"][0]
            issued = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except (KeyError, ValueError):
            return False
        want = hmac.new(self._secret, f"{host}\n{path}\n{stamp}\n{expires}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, sig) and _now() <= issued + timedelta(seconds=int(expires))

    def store_object(self, bucket: str, key: str, data: bytes) -> None:
        if len(self.objects) >= _MAX_STORED_OBJECTS:
            self.objects.pop(next(iter(self.objects)))
        self.objects[(bucket, key)] = data


def _object(data: bytes) -> SimResponse:
    return SimResponse(200, data, {"Content-Type": "application/octet-stream", "ETag": f'"{hashlib.md5(data).hexdigest()}"'})


Route = Callable[[SimState, SimRequest, re.Match[str]], SimResponse]


def _not_found(message: str = "Not Found") -> SimResponse:
    return SimResponse.json(404, {"message": message, "context": {}, "error_id": "not_found"})


def _route(table: list[tuple[str, re.Pattern[str], Route]], state: SimState, req: SimRequest) -> SimResponse:
    allowed: set[str] = set()
    for method, pattern, handler in table:
        match = pattern.fullmatch(req.path)
        if match is None:
            continue
        if method != req.method:
            allowed.add(method)
            continue
        with state.lock:
            return handler(state, req, match)
    if allowed:
        return SimResponse.json(405, {"message": "Method Not Allowed"}, Allow=", ".join(sorted(allowed)))
    return _not_found()


# --- api.gretel.cloud -------------------------------------------------------------------------


def _body_dict(req: SimRequest) -> dict[str, object] | None:
    try:
        doc = req.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _billing(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    return SimResponse.json(200, {"data": {"billing": {"me": {
        "email": names.AGENT_EMAIL,
        "service_limits": {"max_jobs_active": 4, "max_job_runtime": 86400},
        "plan": "enterprise",
    }}}})


def _invites(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    pending = [dict(i) for i in state.invites.values() if i["status"] == "pending"]
    return SimResponse.json(200, {"data": {"invites": pending, "timestamp": _iso(_now())}})


def _accept_invite(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    invite = state.invites.get(m["invite"])
    if invite is None:
        return _not_found("Invite not found")
    invite["status"] = "accepted"
    return SimResponse.json(200, {"data": {"invite": invite}})


def _get_project(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    project = state.find_project(m["project"])
    if project is None:
        return _not_found("Project not found")
    return SimResponse.json(200, {"data": {"project": project}})


def _create_project(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    body = _body_dict(req)
    if body is None or not isinstance(body.get("name"), str):
        return SimResponse.json(400, {"message": "name is required"})
    existing = state.find_project(str(body["name"]))
    project = existing or state._new_project(str(body["name"]), str(body.get("description", "")), names.USER_EMAIL)
    project["runner_mode"] = body.get("runner_mode", "cloud")
    return SimResponse.json(200, {"data": {"id": project["_id"], "project": project}})


def _project_invite(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    if state.find_project(m["project"]) is None:
        return _not_found("Project not found")
    return SimResponse.json(200, {"data": {}})


def _cloud_artifact(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    """Gretel Cloud's upload path (forbidden in hybrid mode): a presigned PUT to the artifacts host."""
    project = state.find_project(m["project"])
    if project is None:
        return _not_found("Project not found")
    key = f"{project['_id']}/uploads/gretel_{state.new_id('artifact')}_data.csv"
    return SimResponse.json(200, {"data": {"key": key, "url": state.presign(names.ARTIFACTS, f"/{key}"),
                                           "method": "PUT"}})


def _worker_token(model_id: str, model_key: str) -> str:
    return base64.standard_b64encode(json.dumps({"model_key": model_key, "model_id": model_id}).encode()).decode()


def _create_model(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    project = state.find_project(m["project"])
    if project is None:
        return _not_found("Project not found")
    config = _body_dict(req)
    if config is None or "models" not in config:
        return SimResponse.json(400, {"message": "model config must be a JSON object with 'models'"})
    runner_mode = req.param("runner_mode") or "cloud"
    model_id = state.new_id("model")
    model_key = "grtw" + hashlib.sha256(f"worker:{model_id}".encode()).hexdigest()[:40]
    model = {
        "uid": model_id, "model_key": model_key, "name": config.get("name"), "status": "created",
        "runner_mode": runner_mode, "project_id": project["_id"], "model_type": "actgan",
        "config": config, "created_by": names.USER_EMAIL, "status_history": {"created": _iso(_now())},
    }
    state.models[model_id] = model
    if runner_mode == "hybrid":
        state.jobs.append({
            "run_id": None, "model_id": model_id, "job_type": "train", "model_type": "actgan",
            "instance_type": "cpu-standard", "project_id": project["_id"],
            "container_image": f"{names.REGISTRY}/{names.REGISTRY_REPO}:{names.IMAGE_TAG}",
            "worker_token": _worker_token(model_id, model_key),
        })
    public = {k: v for k, v in model.items() if k != "model_key"}
    return SimResponse.json(200, {"data": {"model": public}})


def _receive_one(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    modes = req.params.get("runner_modes", [])
    wanted = set(req.params.get("project_ids", []))
    job = None
    if "hybrid" in modes and req.param("cluster_guid") == names.CLUSTER_GUID:
        for i, candidate in enumerate(state.jobs):
            if not wanted or candidate["project_id"] in wanted or "all" in wanted:
                job = state.jobs.pop(i)
                break
    return SimResponse.json(200, {"data": {"job": job}})


def _model_for_worker(state: SimState, req: SimRequest) -> dict[str, object] | None:
    model = state.models.get(req.param("uid") or "")
    if model is None or req.headers.get("authorization") != model["model_key"]:
        return None
    return model


def _update_status(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    model = _model_for_worker(state, req)
    if model is None:
        return SimResponse.json(401, {"message": "worker key does not match model"})
    body = _body_dict(req) or {}
    status = body.get("status")
    if status not in ("pending", "active", "completed", "error", "lost"):
        return SimResponse.json(400, {"message": "status must be pending, active, completed, error or lost"})
    model["status"] = status
    history = model["status_history"]
    assert isinstance(history, dict)
    history[str(status)] = _iso(_now())
    return SimResponse.json(200, {"data": {"model": {"uid": model["uid"], "status": status}}})


def _log_lines(req: SimRequest) -> list[dict[str, object]] | None:
    """`{"logs": [...]}` (what the worker sends) or NDJSON, one line per log record."""
    body = _body_dict(req)
    if body is not None:
        logs = body.get("logs")
        return [line for line in logs if isinstance(line, dict)] if isinstance(logs, list) else None
    lines: list[dict[str, object]] = []
    for raw in req.body.splitlines():
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if isinstance(doc, dict):
            lines.append(doc)
    return lines


def _model_logs(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    """[inf] Worker log shipping is not in public code: a batch of model log lines per model."""
    model = _model_for_worker(state, req)
    if model is None:
        return SimResponse.json(401, {"message": "worker key does not match model"})
    lines = _log_lines(req)
    if lines is None:
        return SimResponse.json(400, {"message": "body must be {\"logs\": [...]} or JSON lines"})
    state.log_lines.extend({"model": model["uid"], **line} for line in lines)
    return SimResponse.json(200, {"data": {"accepted": len(lines)}})


def _container_login(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    return SimResponse.json(200, {"data": {
        "auth": {"username": "AWS", "password": state.registry_password},
        "registry": names.REGISTRY,
    }})


def _create_workflow(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    body = _body_dict(req)
    if body is None or "project_id" not in body:
        return SimResponse.json(400, {"message": "project_id is required"})
    wid = "w_" + state.new_id("workflow")
    state.workflows[wid] = {"id": wid, **body}
    return SimResponse.json(200, {"id": wid, "name": body.get("name"), "project_id": body["project_id"],
                                  "runner_mode": body.get("runner_mode"), "created_at": _iso(_now())})


def _create_run(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    body = _body_dict(req)
    if body is None or body.get("workflow_id") not in state.workflows:
        return SimResponse.json(404, {"message": "workflow not found"})
    rid = "wr_" + state.new_id("run")
    state.runs[rid] = {"id": rid, "workflow_id": body["workflow_id"], "status": "RUN_STATUS_PENDING"}
    return SimResponse.json(200, {"id": rid, "workflow_id": body["workflow_id"], "status": "RUN_STATUS_PENDING",
                                  "actions": [{"name": "synthesize", "task_id": "wt_" + state.new_id("task")}]})


def _create_connection(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    body = _body_dict(req)
    if body is None or "project_id" not in body:
        return SimResponse.json(400, {"message": "project_id is required"})
    cid = "c_" + state.new_id("connection")
    state.connections[cid] = {"id": cid, **body}
    return SimResponse.json(200, {"id": cid, "name": body.get("name"), "type": body.get("type"),
                                  "project_id": body["project_id"], "created_at": _iso(_now())})


def _update_connection(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    conn = state.connections.get(m["conn"])
    if conn is None:
        return _not_found("connection not found")
    conn.update(_body_dict(req) or {})
    return SimResponse.json(200, {"id": conn["id"], "name": conn.get("name"), "type": conn.get("type")})


def _connection_credentials(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    conn = state.connections.get(m["conn"])
    if conn is None:
        return _not_found("connection not found")
    return SimResponse.json(200, {"id": conn["id"], "encrypted_credentials": conn.get("encrypted_credentials")})


def _log_upload_url(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    if m["run"] not in state.runs:
        return _not_found("workflow run not found")
    path = f"/v1/workflows/runs/{m['run']}/tasks/{m['task']}/logs"
    valid_until = _now() + _PRESIGN_TTL
    return SimResponse.json(200, {"upload_url": state.presign(names.API, path, service="logs"),
                                  "valid_until": _iso(valid_until)})


def _task_logs(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    """[inf] Where the presigned workflow log URL points: a batch of task log lines."""
    if not state.presign_valid(names.API, req.path, req.query) and not req.headers.get("authorization"):
        return SimResponse.json(403, {"message": "upload URL invalid or expired"})
    lines = _log_lines(req)
    if lines is None:
        return SimResponse.json(400, {"message": "body must be {\"logs\": [...]} or JSON lines"})
    state.log_lines.extend({"task": m["task"], **line} for line in lines)
    return SimResponse.json(200, {"accepted": len(lines)})


def _run_status(state: SimState, req: SimRequest, m: re.Match[str]) -> SimResponse:
    """[inf] PATCH /v1/workflows/runs/{run} (and .../tasks/{task}): run and task status."""
    run = state.runs.get(m["run"])
    body = _body_dict(req)
    if run is None:
        return _not_found("workflow run not found")
    if body is None or not isinstance(body.get("status"), str):
        return SimResponse.json(400, {"message": "status is required"})
    task = m.groupdict().get("task")
    if task:
        tasks = run.setdefault("tasks", {})
        assert isinstance(tasks, dict)
        tasks[task] = body
        return SimResponse.json(200, {"id": task, "status": body["status"]})
    run["status"] = body["status"]
    return SimResponse.json(200, {"id": run["id"], "status": run["status"]})


_API_ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("GET", re.compile(r"/users/me/billing"), _billing),
    ("GET", re.compile(r"/users/me/invites"), _invites),
    ("PATCH", re.compile(r"/users/me/invites/(?P<invite>[^/]+)"), _accept_invite),
    ("POST", re.compile(r"/projects"), _create_project),
    ("PATCH", re.compile(r"/projects/models"), _update_status),
    ("POST", re.compile(r"/projects/models/logs"), _model_logs),
    ("GET", re.compile(r"/projects/(?P<project>[^/]+)"), _get_project),
    ("POST", re.compile(r"/projects/(?P<project>[^/]+)/invites"), _project_invite),
    ("POST", re.compile(r"/projects/(?P<project>[^/]+)/models"), _create_model),
    ("POST", re.compile(r"/projects/(?P<project>[^/]+)/artifacts"), _cloud_artifact),
    ("POST", re.compile(r"/jobs/receive_one"), _receive_one),
    ("GET", re.compile(r"/opt/containers/get_login"), _container_login),
    ("POST", re.compile(r"/v1/workflows"), _create_workflow),
    ("POST", re.compile(r"/v1/workflows/runs"), _create_run),
    ("POST", re.compile(r"/v1/connections"), _create_connection),
    ("PATCH", re.compile(r"/v1/connections/(?P<conn>[^/]+)"), _update_connection),
    ("GET", re.compile(r"/v1/connections/(?P<conn>[^/]+)/credentials"), _connection_credentials),
    ("GET", re.compile(r"/v1/logs/workflowruns/(?P<run>[^/]+)/actions/(?P<action>[^/]+)/tasks/(?P<task>[^/]+)"), _log_upload_url),
    ("PATCH", re.compile(r"/v1/workflows/runs/(?P<run>[^/]+)"), _run_status),
    ("PATCH", re.compile(r"/v1/workflows/runs/(?P<run>[^/]+)/tasks/(?P<task>[^/]+)"), _run_status),
    ("POST", re.compile(r"/v1/workflows/runs/(?P<run>[^/]+)/tasks/(?P<task>[^/]+)/logs"), _task_logs),
]


def api_app(state: SimState, req: SimRequest) -> SimResponse:
    presigned = "X-Amz-Signature=" in req.query  # the signature in the URL is the credential
    if not presigned and not req.headers.get("authorization"):
        return SimResponse.json(401, {"message": "Missing API key"})
    return _route(_API_ROUTES, state, req)


# --- artifacts.gretel.cloud ---------------------------------------------------------------------


def artifacts_app(state: SimState, req: SimRequest) -> SimResponse:
    """Hands out presigned URLs for base model artifacts, then serves them (GET only)."""
    with state.lock:
        if req.method in ("GET", "HEAD") and req.path.startswith("/base_models/"):
            key = req.path.removeprefix("/base_models/")
            if ("gretel-base-models", key) not in state.objects:
                return _not_found("artifact not found")
            url = state.presign(names.ARTIFACTS, f"/objects/{key}")
            return SimResponse.json(200, {"data": {"url": url, "expires_in": int(_PRESIGN_TTL.total_seconds())}})
        if req.method in ("GET", "HEAD") and req.path.startswith("/objects/"):
            if not state.presign_valid(names.ARTIFACTS, req.path, req.query):
                return SimResponse.xml(403, "AccessDenied", "Request has expired or the signature does not match")
            data = state.objects.get(("gretel-base-models", req.path.removeprefix("/objects/")))
            if data is None:
                return SimResponse.xml(404, "NoSuchKey", "The specified key does not exist.")
            return _object(data)
        if req.method == "PUT":
            # Gretel's artifacts host takes no uploads in hybrid mode; the simulation accepts them
            # so a test can show what reached the control plane.
            state.store_object("gretel-artifacts-uploads", req.path.lstrip("/"), req.body)
            return SimResponse(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})
    return _not_found()


# --- the ECR registry ---------------------------------------------------------------------------

_V2 = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")


def registry_app(state: SimState, req: SimRequest) -> SimResponse:
    """ECR's pull side: Basic auth from get_login, manifests here, blobs redirected to S3."""
    want = "Basic " + base64.b64encode(f"AWS:{state.registry_password}".encode()).decode()
    if req.headers.get("authorization") != want:
        return SimResponse.json(
            401, {"errors": [{"code": "UNAUTHORIZED", "message": "Not Authorized"}]},
            **{"WWW-Authenticate": f'Basic realm="https://{names.REGISTRY}/",service="ecr.amazonaws.com"',
               "Docker-Distribution-API-Version": "registry/2.0"},
        )
    if req.path in ("/v2/", "/v2") and req.method in ("GET", "HEAD"):
        return SimResponse(200, b"{}", {"Content-Type": "application/json", "Docker-Distribution-API-Version": "registry/2.0"})
    match = _V2.fullmatch(req.path)
    if req.method not in ("GET", "HEAD"):
        return SimResponse.json(403, {"errors": [{"code": "DENIED", "message": "push is not allowed for this principal"}]})
    if match is None or match["repo"] != names.REGISTRY_REPO:
        return SimResponse.json(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "repository does not exist"}]})
    if match["kind"] == "manifests":
        manifest = payloads.image_manifest()
        if match["ref"] not in (names.IMAGE_TAG, payloads.sha256_digest(manifest)):
            return SimResponse.json(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        return SimResponse(200, manifest, {
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json",
            "Docker-Content-Digest": payloads.sha256_digest(manifest),
        })
    with state.lock:
        if match["ref"] not in state.blobs:
            return SimResponse.json(404, {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]})
        location = state.presign(names.LAYER_BUCKET_HOST, "/" + state.layer_key(match["ref"]))
    return SimResponse(307, b"", {"Location": location, "Docker-Distribution-API-Version": "registry/2.0"})


# --- S3 (global, regional, the layer bucket, the customer's bucket) -----------------------------


def _bucket_and_key(host: str, path: str) -> tuple[str | None, str]:
    """Virtual-hosted (`bucket.s3.region.amazonaws.com`) or path-style (`s3.amazonaws.com/bucket/key`)."""
    for suffix in (f".s3.{names.REGION}.amazonaws.com", ".s3.amazonaws.com", f".s3-{names.REGION}.amazonaws.com"):
        if host.endswith(suffix):
            return host.removesuffix(suffix), path.lstrip("/")
    parts = path.lstrip("/").split("/", 1)
    if not parts[0]:
        return None, ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def s3_app(state: SimState, req: SimRequest) -> SimResponse:
    bucket, key = _bucket_and_key(req.host, urlsplit(req.path).path)
    if bucket is None:
        return SimResponse.xml(400, "InvalidBucketName", "The specified bucket is not valid.")
    with state.lock:
        if bucket == names.LAYER_BUCKET:
            if req.method not in ("GET", "HEAD"):
                return SimResponse.xml(403, "AccessDenied", "Access Denied")
            if not state.presign_valid(req.host, req.path, req.query):
                return SimResponse.xml(403, "AccessDenied", "Request has expired or the signature does not match")
        elif bucket == names.CUSTOMER_BUCKET and not req.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256"):
            return SimResponse.xml(403, "AccessDenied", "Access Denied")
        if req.method in ("GET", "HEAD"):
            data = state.objects.get((bucket, key))
            if data is None:
                return SimResponse.xml(404, "NoSuchKey", "The specified key does not exist.")
            return _object(data)
        if req.method == "PUT":
            state.store_object(bucket, key, req.body)
            return SimResponse(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})
    return SimResponse.xml(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")


# --- the foreign collector ----------------------------------------------------------------------


def foreign_app(state: SimState, req: SimRequest) -> SimResponse:
    """A host outside the contract that gladly takes whatever it is sent."""
    if req.method == "POST":
        return SimResponse.json(202, {"received": len(req.body)})
    return SimResponse(200, b"ok\n", {"Content-Type": "text/plain"})


App = Callable[[SimState, SimRequest], SimResponse]

APPS: dict[str, App] = {
    names.API: api_app,
    names.ARTIFACTS: artifacts_app,
    names.REGISTRY: registry_app,
    names.S3_GLOBAL: s3_app,
    names.S3_REGIONAL: s3_app,
    names.LAYER_BUCKET_HOST: s3_app,
    names.CUSTOMER_BUCKET_HOST: s3_app,
    names.FOREIGN: foreign_app,
    names.OTHER_REGISTRY: foreign_app,
}
