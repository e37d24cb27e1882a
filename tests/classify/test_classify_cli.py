"""`auditor fingerprint`, `auditor canary` and `auditor classify` as a person runs them."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

AUDITOR = [sys.executable, "-c", "from auditor.cli import main; main()"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AUDITOR, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_fingerprint_canary_classify(tmp_path: Path) -> None:
    (tmp_path / "K").write_bytes(os.urandom(32))
    rows = [{"name": "Erin Castellano", "email": "erin.c@example.com", "iban": "GB82WEST12345698765432"}, {"name": "Farid Haddad", "email": "farid.h@example.com", "iban": "DE89370400440532013000"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    r = _run("fingerprint", "train.parquet", "-o", "data.fp", "--key-file", "K", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 rows" in r.stdout
    r = _run("canary", "--count", "4", "--format", "jsonl", "-o", "canaries.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "canaries.jsonl").read_text().splitlines()]
    assert len(records) == 4 and len({rec["canary_id"] for rec in records}) == 4
    tokens = (tmp_path / "canaries.jsonl.tokens").read_text()
    assert all(rec["canary_id"] in tokens for rec in records)

    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"uid": "m1", "status": "active"}))
    r = _run("classify", "ok.json", "--route", "PATCH /projects/models", "--fingerprints", "data.fp", "--key-file", "K", "--canaries", "canaries.jsonl.tokens", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "labels: metadata" in r.stdout

    leak = tmp_path / "leak.gz"
    leak.write_bytes(gzip.compress(json.dumps({"uid": "m1", "status": "error", "error_msg": f"bad row FARID haddad / farid.h@example.com and {records[1]['email']}"}).encode()))
    r = _run("classify", "leak.gz", "--route", "PATCH /projects/models", "--encoding", "gzip", "--fingerprints", "data.fp", "--key-file", "K", "--canaries", "canaries.jsonl.tokens", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    info = json.loads(r.stdout)
    assert {"fingerprint-match", "canary", "training-data"} <= set(info["labels"])
    assert "farid.h@example.com" not in r.stdout

    r = _run("classify", "ok.json", "--route", "nonsense", cwd=tmp_path)
    assert r.returncode == 3 and "error:" in r.stderr
    r = _run("classify", "ok.json", "--fingerprints", "data.fp", cwd=tmp_path)
    assert r.returncode == 3 and "--key-file" in r.stderr
    (tmp_path / "K2").write_bytes(os.urandom(32))
    r = _run("classify", "ok.json", "--fingerprints", "data.fp", "--key-file", "K2", cwd=tmp_path)
    assert r.returncode == 3 and "does not match" in r.stderr
