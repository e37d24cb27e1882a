"""Deterministic bodies for the simulation: training rows, archives, image layers, configs.

Everything is derived from fixed seeds so two runs send byte-identical payloads, which
lets tests (and fingerprints) recognise exactly what the simulated worker sent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from functools import cache

from auditor.sim import names

# Census-style rows: numeric and categorical only, no emails or phone numbers, so the
# only thing a detector should call them is training data.
TRAINING_COLUMNS = ["age", "workclass", "education", "marital_status", "occupation", "hours_per_week", "income"]
TRAINING_ROWS: list[list[str]] = [
    ["39", "State-gov", "Bachelors", "Never-married", "Adm-clerical", "40", "<=50K"],
    ["50", "Self-emp-not-inc", "Bachelors", "Married-civ-spouse", "Exec-managerial", "13", "<=50K"],
    ["38", "Private", "HS-grad", "Divorced", "Handlers-cleaners", "40", "<=50K"],
    ["53", "Private", "11th", "Married-civ-spouse", "Handlers-cleaners", "40", "<=50K"],
    ["28", "Private", "Bachelors", "Married-civ-spouse", "Prof-specialty", "40", "<=50K"],
    ["37", "Private", "Masters", "Married-civ-spouse", "Exec-managerial", "40", "<=50K"],
    ["49", "Private", "9th", "Married-spouse-absent", "Other-service", "16", "<=50K"],
    ["52", "Self-emp-not-inc", "HS-grad", "Married-civ-spouse", "Exec-managerial", "45", ">50K"],
    ["31", "Private", "Masters", "Never-married", "Prof-specialty", "50", ">50K"],
    ["42", "Private", "Bachelors", "Married-civ-spouse", "Exec-managerial", "40", ">50K"],
    ["37", "Private", "Some-college", "Married-civ-spouse", "Exec-managerial", "80", ">50K"],
    ["30", "State-gov", "Bachelors", "Married-civ-spouse", "Prof-specialty", "40", ">50K"],
]

_FIXED_MTIME = 1_700_000_000


def training_csv(rows: int | None = None) -> bytes:
    """The customer's training file (or its first `rows` rows) as CSV."""
    body = TRAINING_ROWS if rows is None else TRAINING_ROWS[:rows]
    lines = [",".join(TRAINING_COLUMNS)] + [",".join(r) for r in body]
    return ("\n".join(lines) + "\n").encode()


def keystream(seed: str, size: int) -> bytes:
    """SHA-256 in counter mode: deterministic bytes that look random (weights, ciphertext)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _targz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _FIXED_MTIME
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


@cache
def model_archive() -> bytes:
    """`model.tar.gz` as a hybrid worker writes it: config plus opaque weights."""
    config = json.dumps({"model_type": "actgan", "epochs": 100, "embedding_dim": 128}).encode()
    return _targz({
        "model/config.json": config,
        "model/weights.bin": keystream("actgan-weights", 48 * 1024),
        "model/metadata.json": json.dumps({"columns": TRAINING_COLUMNS}).encode(),
    })


@cache
def report_json_gz() -> bytes:
    """`report_json.json.gz`: the quality report, which belongs in the customer's bucket."""
    report = {"synthetic_data_quality_score": {"score": 87, "grade": "Excellent"}, "columns": len(TRAINING_COLUMNS)}
    return gzip.compress(json.dumps(report).encode(), mtime=0)


@cache
def base_model_blob() -> bytes:
    """A base model artifact served by artifacts.gretel.cloud (downloaded, never uploaded)."""
    return _targz({"base/tokenizer.json": b'{"version": "1.0"}', "base/checkpoint.bin": keystream("base", 16 * 1024)})


@cache
def image_layer() -> bytes:
    """One container image layer (a gzip'd tar), as ECR serves it from the layer bucket."""
    return _targz({
        "app/worker.py": b"import gretel_worker\ngretel_worker.main()\n",
        "app/requirements.txt": b"gretel-client==0.30.0\n",
        "usr/lib/libsim.so": keystream("layer", 24 * 1024),
    })


@cache
def image_config() -> bytes:
    """The image config blob that the manifest names."""
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["python", "/app/worker.py"], "Env": ["PYTHONUNBUFFERED=1"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(gzip.decompress(image_layer())).hexdigest()]},
        },
        separators=(",", ":"),
    ).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest() -> bytes:
    """A Docker schema 2 manifest naming the config and the one layer by digest."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(image_config()),
                "digest": sha256_digest(image_config()),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(image_layer()),
                    "digest": sha256_digest(image_layer()),
                }
            ],
        },
        indent=3,
    ).encode()


def model_config(project: str) -> dict[str, object]:
    """The model config the SDK posts: data_source is a customer storage URI, never rows."""
    return {
        "schema_version": "1.0",
        "name": "tabular-actgan",
        "models": [
            {
                "actgan": {
                    "data_source": f"s3://{names.CUSTOMER_BUCKET}/sources/{project}/train.csv",
                    "params": {"epochs": "auto"},
                    "generate": {"num_records": 5000},
                    "privacy_filters": {"outliers": None, "similarity": None},
                }
            }
        ],
    }


_WORKFLOW_STEPS: list[dict[str, object]] = [
    {"name": "read-s3", "task": "s3_source", "inputs": [],
     "config": {"connection": "c_s3", "path": "sources/", "glob": "*.csv"}},
    {"name": "synthesize", "task": "actgan", "inputs": ["read-s3"],
     "config": {"train": {"params": {"epochs": "auto"}}}},
    {"name": "write-s3", "task": "s3_destination", "inputs": ["synthesize"],
     "config": {"connection": "c_s3", "path": "synthetic/"}},
]


def workflow_config(project_id: str) -> dict[str, object]:
    """A workflow config: S3 source and destination by connection and path, never rows."""
    return {"name": "nightly-synthetics", "version": "2", "inputs": {}, "globals": {"project_id": project_id},
            "steps": _WORKFLOW_STEPS}


def workflow_config_text(project_id: str) -> str:
    lines = ["name: nightly-synthetics", 'version: "2"', "globals:", f"  project_id: {project_id}", "steps:"]
    lines += [f"  - name: {step['name']}\n    task: {step['task']}" for step in _WORKFLOW_STEPS]
    return "\n".join(lines) + "\n"


def encrypted_credentials() -> dict[str, str]:
    """What a hybrid SDK sends: ciphertext the customer's KMS alone can open."""
    blob = base64.b64encode(keystream("kms-envelope", 96)).decode()
    return {"kms_key_arn": "arn:aws:kms:us-west-2:111122223333:key/0f3e8d1c-7b6a-4c59-9e21-5d4c3b2a1908", "data": blob}


def plaintext_credentials() -> dict[str, str]:
    """What a hybrid SDK must never send: the storage secret in the clear."""
    return {
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "region": names.REGION,
    }


def tunnel_labels(count: int, label_len: int = 52) -> list[str]:
    """Ciphertext of the training file, base32 in DNS-label chunks: what a DNS tunnel sends."""
    plain = training_csv()
    cipher = bytes(a ^ b for a, b in zip(plain, keystream("tunnel", len(plain)), strict=True))
    encoded = base64.b32encode(cipher * (1 + (count * label_len) // max(1, len(cipher) * 8 // 5))).decode().rstrip("=").lower()
    return [f"{i:02d}{encoded[i * label_len:(i + 1) * label_len - 2]}" for i in range(count)]
