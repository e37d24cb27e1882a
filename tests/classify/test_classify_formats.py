"""Formats one by one: artifact magic, tabular files, containers (multipart, YAML,
stacked codings), and the χ² verdict on blobs of no known format."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import pickle
import random
import struct
import zipfile

import brotli
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from auditor.classify import classify
from auditor.classify.detectors import magic

HOST = "api.gretel.cloud"


def _arrow_file() -> bytes:
    buf = io.BytesIO()
    table = pa.Table.from_pylist([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
    with ipc.new_file(buf, table.schema) as w:
        w.write_table(table)
    return buf.getvalue()


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": [1, 2, 3]}, protocol=2))
        zf.writestr("archive/version", b"3\n")
        zf.writestr("archive/data/0", os.urandom(256))
    return buf.getvalue()


BLOBS = [
    ("gguf", b"GGUF\x03\x00\x00\x00" + os.urandom(64), "model-artifact"),
    ("pickle", pickle.dumps({"weights": list(range(50))}, protocol=4), "model-artifact"),
    ("npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }" + os.urandom(16), "model-artifact"),
    ("hdf5", b"\x89HDF\r\n\x1a\n" + os.urandom(64), "model-artifact"),
    ("onnx", b"\x08\x07\x12\x07pytorch\x1a\x052.1.0:\x8a\x01\n\x05onnx" + os.urandom(64), "model-artifact"),
    ("torch-zip", _torch_zip(), "model-artifact"),
    ("arrow", _arrow_file(), "training-data"),
    ("avro", b"Obj\x01\x04\x14avro.codec\x08null" + os.urandom(32), "training-data"),
]


@pytest.mark.parametrize("name,blob,label", BLOBS, ids=[b[0] for b in BLOBS])
def test_artifact_magic(name: str, blob: bytes, label: str) -> None:
    info = classify(blob, method="POST", path="/projects/p/models", host=HOST, content_type="application/octet-stream")
    assert label in info.labels, info.findings
    if name != "torch-zip":
        found = magic(blob)
        assert found is not None and found.label == label


def test_torch_archive_is_named_by_its_member() -> None:
    info = classify(_torch_zip(), method="PUT", path="/x", host="storage.example.com")
    f = next(f for f in info.findings if f.detector == "magic")
    assert f.likelihood == "VERY_LIKELY" and "data.pkl" in (f.excerpt or "")


def test_tsv_rows_in_a_traceback() -> None:
    rows = "".join(f"{n}\t{c}\t{a}\n" for n, c, a in [("ann lee", "Oslo", 31), ("bo chen", "Lima", 44), ("cy diaz", "Rome", 29)])
    body = json.dumps({"status": "RUN_STATUS_ERROR", "stack_trace": f"ValueError: bad rows\n{rows}"}).encode()
    info = classify(body, method="PATCH", path="/v1/workflows/runs/r/tasks/t", host=HOST)
    f = next(f for f in info.findings if f.detector == "tabular:csv")
    assert f.label == "training-data" and "'\\t'" in (f.excerpt or "") and f.field_path == "body.stack_trace"


def test_multipart_upload_of_an_artifact_by_name() -> None:
    boundary = "XyZ"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n{{\"note\": \"x\"}}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"report_json.json.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
    ).encode() + gzip.compress(b'{"ok": true}') + f"\r\n--{boundary}--\r\n".encode()
    info = classify(body, method="POST", path="/v2/upload", host=HOST, content_type=f"multipart/form-data; boundary={boundary}")
    f = next(f for f in info.findings if f.detector == "artifact-name")
    assert f.label == "report-artifact" and f.field_path == "body[file]"


def test_yaml_model_config_body() -> None:
    ok = "schema_version: '1.0'\nname: t\nmodels:\n  - actgan:\n      data_source: s3://customer-bucket/train.csv\n"
    info = classify(ok.encode(), method="POST", path="/projects/p/models?runner_mode=hybrid", host=HOST, content_type="application/yaml")
    assert info.labels == ["metadata"] and "model-config" in info.metadata_kinds
    bad = ok.replace("s3://customer-bucket/train.csv", "[{name: ann, ssn: 123-45-6789}, {name: bo, ssn: 234-56-7890}]")
    info = classify(bad.encode(), method="POST", path="/projects/p/models?runner_mode=hybrid", host=HOST, content_type="application/yaml")
    assert "inline-data-source" in info.labels


def test_stacked_content_codings() -> None:
    doc = json.dumps({"uid": "m1", "status": "active"}).encode()
    body = brotli.compress(gzip.compress(doc))
    info = classify(body, method="PATCH", path="/projects/models", host=HOST, content_encoding="gzip, br")
    assert info.labels == ["metadata"]
    info = classify(b"not gzip", method="PATCH", path="/projects/models", host=HOST, content_encoding="gzip")
    assert not info.inspected and info.not_inspected_reason.startswith("undecodable")


def test_chi_square_tells_compressed_from_encrypted() -> None:
    # seeded bodies: bz2 of hex text comes out at ~7.5 or ~6.8 bits/byte by the tables bz2
    # picks (the second is under the entropy gate, rightly: such a blob is not high-entropy)
    compressed = bz2.compress(random.Random(0).randbytes(3000).hex().encode() * 3)
    info = classify(compressed, method="POST", path="/v2/blob", host=HOST, content_type="application/octet-stream")
    f = next(f for f in info.findings if f.label == "high-entropy")
    assert "compressed" in (f.excerpt or "")
    info = classify(random.Random(1).randbytes(4096), method="POST", path="/v2/blob", host=HOST, content_type="application/octet-stream")
    f = next(f for f in info.findings if f.label == "high-entropy")
    assert "encrypted" in (f.excerpt or "")
    assert "high-entropy" not in classify(os.urandom(200), method="POST", path="/v2/blob", host=HOST).labels


def test_safetensors_header_parsing_is_bounded() -> None:
    # a header length far beyond the body: not safetensors, and no crash
    blob = struct.pack("<Q", 1 << 60) + b'{"dtype": "F32", "data_offsets": [0, 4]}'
    info = classify(blob, method="POST", path="/v2/blob", host=HOST)
    assert "model-artifact" not in info.labels
