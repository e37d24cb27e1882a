"""ingest, check and verify through the real entry point."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "events.jsonl"


def auditor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor.cli", *args], capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    )


def test_ingest_reports_bad_lines_by_number_and_keeps_the_good(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = EXAMPLE.read_text().splitlines()
    events.write_text("\n".join([lines[0], "{broken", lines[1], '{"sensor_id": "x", "kind": "nope"}', lines[2]]) + "\n")
    store = tmp_path / "e.db"
    run = auditor("ingest", str(events), "--store", str(store))
    assert run.returncode == 3
    assert "ingested 3 events, rejected 2 lines" in run.stdout
    assert f"{events}:2:" in run.stderr and f"{events}:4: kind:" in run.stderr
    assert sqlite3.connect(store).execute("select count(*) from records").fetchone()[0] == 3


def test_check_on_the_example_finds_the_planted_violations(tmp_path: Path) -> None:
    run = auditor("check", "--events", str(EXAMPLE), "--json")
    assert run.returncode == 1, run.stderr
    result = json.loads(run.stdout)
    rules = {f["rule_id"] for f in result["findings"]}
    assert {"data.training-data", "s3.foreign-bucket-write", "obs.bypass", "obs.direct-ip", "obs.tls-not-opened"} <= rules
    assert result["actions"]["violation"] == 3 and result["chain_ok"] is True


def test_check_exit_codes_pass_and_unverified_only(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(lines[:7]) + "\n")
    assert auditor("check", "--events", str(clean)).returncode == 0
    unverified = tmp_path / "unverified.jsonl"
    unverified.write_text("\n".join(lines[:7] + [lines[10]]) + "\n")
    run = auditor("check", "--events", str(unverified))
    assert run.returncode == 2, run.stdout
    assert "INCONCLUSIVE" in run.stdout


def test_check_chains_its_findings_and_verify_still_passes(tmp_path: Path) -> None:
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    assert auditor("check", "--store", str(store)).returncode == 1
    run = auditor("verify", "--store", str(store))
    assert run.returncode == 0, run.stdout
    assert "chain check:" in run.stdout


def test_verify_names_the_edited_record(tmp_path: Path) -> None:
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    db = sqlite3.connect(store)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("UPDATE records SET body = replace(body, 'someone-elses-bucket', 'customer-bucket') WHERE sensor_id = 'proxy-a' AND seq = 8")
    db.commit()
    run = auditor("verify", "--store", str(store))
    assert run.returncode == 1
    assert "sensor proxy-a record #8" in run.stdout and "edited" in run.stdout


def test_errors_of_use_are_one_line_and_exit_3(tmp_path: Path) -> None:
    run = auditor("check")
    assert run.returncode == 3 and run.stderr.strip().count("\n") == 0
    assert "fix:" in run.stderr
    run = auditor("verify", "--store", str(tmp_path / "missing.db"))
    assert run.returncode == 3 and "no such evidence store" in run.stderr
    run = auditor("check", "--bogus")
    assert run.returncode == 3


def test_example_store_is_not_modified_by_a_copy(tmp_path: Path) -> None:
    """The example file is data the README points at: it must stay valid JSONL."""
    copy = tmp_path / "events.jsonl"
    shutil.copy(EXAMPLE, copy)
    for line in copy.read_text().splitlines():
        json.loads(line)


def test_verify_takes_the_store_as_its_argument_too(tmp_path: Path) -> None:
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    run = auditor("verify", str(store))
    assert run.returncode == 0 and "chain proxy-a: 10 records" in run.stdout
