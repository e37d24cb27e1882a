"""The allowed corpus: a body in the Gretel API's shape for every route of the traffic
doc classifies as metadata with zero findings, and names the kinds it carries."""

from __future__ import annotations

import base64
import gzip
import json
import os

import pytest

from auditor.classify import classify
from auditor.classify.routes import KINDS, ROUTES

HOST = "api.gretel.cloud"
UID = "64f1c0ffee0ddba11c0ffee1"

MODEL_CONFIG = {
    "schema_version": "1.0",
    "name": "tabular-actgan",
    "models": [
        {
            "actgan": {
                "data_source": "s3://customer-bucket/sources/train.csv",
                "params": {"epochs": "auto", "generator_dim": [1024, 1024], "batch_size": 500},
                "generate": {"num_records": 5000},
                "privacy_filters": {"outliers": None, "similarity": None},
            }
        }
    ],
}
TRANSFORM_CONFIG = {
    "schema_version": "1.0",
    "name": "redact-pii",
    "models": [
        {
            "transforms": {
                "data_source": ["gretel_0f3a9c1d2e4b5a6c_customers.csv"],
                "policies": [
                    {
                        "name": "remove_pii",
                        "rules": [
                            {"name": "fake_names", "conditions": {"value_label": ["person_name"]}, "transforms": [{"type": "fake"}]},
                        ],
                    }
                ],
            }
        }
    ],
}
WORKFLOW_YAML = """name: nightly-synthetics
version: "2"
inputs:
  source: s3://customer-bucket/sources/
steps:
  - name: read-source
    task: s3_source
    config:
      bucket: customer-bucket
      glob_filter: "*.csv"
  - name: train
    task: gretel_model
    inputs: [read-source]
    config:
      project_id: proj_2abc
      model: synthetics/tabular-actgan
      run_params:
        params: {num_records_multiplier: 1.0}
"""
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/opt/gretel/worker.py", line 212, in run_model\n'
    "    trainer.train(config)\n"
    '  File "/opt/gretel/trainer.py", line 88, in train\n'
    "    raise RuntimeError(msg)\n"
    "RuntimeError: CUDA out of memory while allocating 2.00 GiB"
)


def _j(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _ndjson(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


MODEL_LOGS = [
    {"ts": "2021-06-11T05:12:32.620843Z", "msg": "Training data loaded", "ctx": {"record_count": 302, "field_count": 9}, "seq": 3, "stage": "pre"},
    {"ts": "2021-06-11T05:13:01.100000Z", "msg": "Epoch complete", "ctx": {"epoch": 4, "num_epochs": 100, "loss": 0.4213}, "seq": 4, "stage": "train"},
    {"ts": "2021-06-11T05:20:44.000000Z", "msg": "Generating records", "ctx": {"num_records": 5000, "current_valid_count": 4988}, "seq": 5, "stage": "run"},
]
WORKFLOW_LOGS = [
    {"ts": "2024-02-01T10:00:00Z", "level": "info", "msg": "Starting task read-source", "marker": 1},
    {"ts": "2024-02-01T10:00:05Z", "level": "info", "msg": "Read 3 objects from s3://customer-bucket/sources/", "marker": 2},
]
ENCRYPTED = base64.b64encode(os.urandom(512)).decode()

# (method, path, body, content_type, content_encoding, kinds expected at least)
CORPUS: list[tuple[str, str, bytes, str | None, str | None, set[str]]] = [
    ("GET", "/users/me/billing", b"", None, None, set()),
    ("GET", "/users/me/invites?invite_types=project&org_only=true&include_expired=false", b"", None, None, set()),
    ("PATCH", f"/users/me/invites/{UID}", b"", None, None, {"project"}),
    ("GET", "/projects/customer-synthetics", b"", None, None, {"project"}),
    ("POST", "/jobs/receive_one?project_ids=proj_2abc,proj_3def&org_only=true&runner_modes=hybrid&cluster_guid=c_2b7e0c3d9f", b"", None, None, {"project"}),
    ("PATCH", f"/projects/models?uid={UID}&type=train", _j({"uid": UID, "status": "pending"}), "application/json", None, {"model-id", "model-status"}),
    ("PATCH", f"/projects/models?uid={UID}&type=run", _j({"uid": UID, "status": "completed"}), "application/json", None, {"model-run-id", "model-run-status"}),
    ("PATCH", f"/projects/models?uid={UID}&type=train", _j({"uid": UID, "status": "error", "error_msg": "RuntimeError: CUDA out of memory", "traceback": TRACEBACK, "last_active_hb": "2024-02-01T10:00:00Z", "container_image_version": "2024.01.3", "status_history": [{"status": "created", "ts": "2024-02-01T09:00:00Z"}, {"status": "pending", "ts": "2024-02-01T09:01:00Z"}, {"status": "active", "ts": "2024-02-01T09:02:00Z"}]}), "application/json", None, {"model-id", "model-status", "model-logs"}),
    ("PATCH", f"/projects/models?uid={UID}&type=train", gzip.compress(_j({"uid": UID, "status": "active"})), "application/json", "gzip", {"model-status"}),
    ("GET", "/opt/containers/get_login", b"", None, None, set()),
    ("POST", "/projects", _j({"name": "customer-synthetics", "display_name": "Customer synthetics", "description": "Synthetic copies of the CRM extract for the analytics team.", "runner_mode": "hybrid", "cluster_guid": "c_2b7e0c3d9f"}), "application/json", None, {"project"}),
    ("POST", "/projects/proj_2abc/invites", _j({"email": "dana.analyst@customer.example", "level": "write"}), "application/json", None, {"creator-email"}),
    ("POST", "/projects/proj_2abc/models?runner_mode=hybrid", _j(MODEL_CONFIG), "application/json", None, {"model-config"}),
    ("POST", "/projects/proj_2abc/models?runner_mode=hybrid", _j(TRANSFORM_CONFIG), "application/json", None, {"model-config"}),
    ("POST", "/v1/workflows", _j({"name": "nightly-synthetics", "project_id": "proj_2abc", "config_text": WORKFLOW_YAML, "runner_mode": "hybrid"}), "application/json", None, {"workflow-ids", "model-config"}),
    ("POST", "/v1/workflows", _j({"name": "nightly-synthetics", "project_id": "proj_2abc", "config": {"name": "nightly", "version": "2", "steps": [{"name": "train", "task": "gretel_model", "config": MODEL_CONFIG}]}, "runner_mode": "hybrid"}), "application/json", None, {"model-config"}),
    ("POST", "/v1/workflows/runs", _j({"workflow_id": "w_2c1b9a", "name": "nightly-2024-02-01", "config_text": WORKFLOW_YAML}), "application/json", None, {"workflow-ids"}),
    ("POST", "/v1/connections", _j({"project_id": "proj_2abc", "name": "crm-bucket", "type": "s3", "config": {"bucket": "customer-bucket", "region": "us-west-2"}, "connection_target_type": "source", "auth_strategy": "access_key", "encrypted_credentials": ENCRYPTED}), "application/json", None, {"file-names", "project"}),
    ("PATCH", "/v1/connections/c_9f8e7d", _j({"name": "crm-bucket-2", "encrypted_credentials": {"ciphertext": ENCRYPTED, "key_id": "arn:aws:kms:us-west-2:111122223333:key/1234abcd"}}), "application/json", None, {"file-names"}),
    ("GET", "/v1/connections/c_9f8e7d/credentials", b"", None, None, set()),
    ("GET", "/v1/logs/workflowruns/wr_1/actions/train/tasks/wt_7", b"", None, None, {"workflow-ids"}),
    ("POST", f"/projects/models/logs?uid={UID}&type=train", _ndjson(MODEL_LOGS), "application/x-ndjson", None, {"model-logs"}),
    ("POST", f"/projects/models/logs?uid={UID}&type=train", _j({"uid": UID, "logs": MODEL_LOGS}), "application/json", None, {"model-logs"}),
    ("PATCH", "/v1/workflows/runs/wr_1", _j({"status": "RUN_STATUS_COMPLETED"}), "application/json", None, {"workflow-status"}),
    ("PATCH", "/v1/workflows/runs/wr_1/tasks/wt_7", _j({"status": "RUN_STATUS_ERROR", "action_name": "train", "action_type": "gretel_model", "error_msg": "model training failed", "error_code": 500, "stack_trace": TRACEBACK, "execution_summary": {"records_in": 302, "records_out": 0}, "log_location": "s3://customer-bucket/logs/wr_1/wt_7.jsonl"}), "application/json", None, {"workflow-status", "workflow-logs"}),
    ("POST", "/v1/workflows/runs/wr_1/tasks/wt_7/logs", _ndjson(WORKFLOW_LOGS), "application/x-ndjson", None, {"workflow-logs"}),
]


# reads of base model artifacts through artifacts.gretel.cloud (presigned URLs)
ARTIFACTS_HOST = "artifacts.gretel.cloud"
ARTIFACT_READS = [("GET", "/base_models/actgan/v1/base.tar.gz"), ("HEAD", "/base_models/actgan/v1/base.tar.gz")]


def test_corpus_covers_every_non_forbidden_route() -> None:
    routes = {r.name for r in ROUTES if not r.forbidden}
    covered = set()
    for method, path, *_ in CORPUS:
        covered.add(classify(b"", method=method, path=path, host=HOST).route)
    for method, path in ARTIFACT_READS:
        covered.add(classify(b"", method=method, path=path, host=ARTIFACTS_HOST).route)
    assert routes <= covered


@pytest.mark.parametrize("method,path", ARTIFACT_READS)
def test_artifact_reads_are_metadata_only_on_the_artifacts_host(method: str, path: str) -> None:
    assert classify(b"", method=method, path=path, host=ARTIFACTS_HOST).labels == ["metadata"]
    assert "unrecognised-route" in classify(b"", method=method, path=path, host=HOST).labels
    assert "unrecognised-route" in classify(b"data", method="PUT", path=path, host=ARTIFACTS_HOST).labels


@pytest.mark.parametrize("method,path,body,ctype,enc,kinds", CORPUS, ids=[f"{c[0]} {c[1].split('?')[0]}" for c in CORPUS])
def test_allowed_body_is_metadata_with_no_findings(method: str, path: str, body: bytes, ctype: str | None, enc: str | None, kinds: set[str]) -> None:
    info = classify(body, method=method, path=path, host=HOST, content_type=ctype, content_encoding=enc)
    assert info.findings == []
    assert info.labels == ["metadata"]
    assert info.inspected and info.not_inspected_reason is None
    assert info.route is not None
    assert kinds <= set(info.metadata_kinds) <= set(KINDS)
    assert info.size == len(body)


def test_non_gretel_host_gets_no_route_and_no_metadata_label() -> None:
    info = classify(_j({"uid": UID, "status": "pending"}), method="PATCH", path="/projects/models", host="example.com")
    assert info.route is None and "metadata" not in info.labels and info.findings == []
