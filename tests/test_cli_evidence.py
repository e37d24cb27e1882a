"""ingest, check and verify through the real entry point."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _one_line_error(run: subprocess.CompletedProcess[str], said: str) -> None:
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr)
    assert run.stderr.startswith("error: ") and run.stderr.strip().count("\n") == 0, run.stderr
    assert said in run.stderr, run.stderr


def test_a_store_that_is_not_a_store_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """A stray file, a directory, another program's SQLite file or a URL of another
    database: every command says which and how to fix it, and changes nothing."""
    junk = tmp_path / "g.db"
    junk.write_text("x\n")
    folder = tmp_path / "somedir"
    folder.mkdir()
    foreign = tmp_path / "places.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    not_sqlite = f"{junk}: not an evidence store (file is not a SQLite database) (fix: "
    for args in (("check", "--store", str(junk)), ("verify", "--store", str(junk)), ("verify", str(junk)),
                 ("report", "--store", str(junk), "--out", str(tmp_path / "r0")), ("store", "migrate", "--store", str(junk))):
        _one_line_error(auditor(*args), not_sqlite)
    _one_line_error(auditor("ingest", str(EXAMPLE), "--store", f"{folder}/"), f"{folder}: not an evidence store (it is a directory)")
    _one_line_error(auditor("check", "--store", str(foreign)), "a SQLite database without the evidence tables; it holds users")
    _one_line_error(auditor("check", "--store", "mysql://x/y"),
                    "error: unsupported store URL scheme 'mysql' (fix: a file path, sqlite:///path or postgresql://...)")
    _one_line_error(auditor("verify", "--store", "sqlite://e.db"), "three slashes")
    assert junk.read_text() == "x\n" and list(folder.iterdir()) == [] and not (tmp_path / "r0").exists()
    assert sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]


def test_a_store_in_a_missing_directory_is_refused_not_made(tmp_path: Path) -> None:
    har = tmp_path / "session.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "test", "version": "1"}, "entries": []}}))
    missing = tmp_path / "nonexistent" / "dir"
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    for args in (("import", str(har), "--store", str(missing / "e.db")), ("store", "migrate", "--store", str(missing / "e.db")),
                 ("store", "copy", str(store), str(missing / "e.db")), ("ingest", str(EXAMPLE), "--store", str(missing / "e.db"))):
        _one_line_error(auditor(*args), f"directory {missing} does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_report_checks_the_store_before_making_its_out_directory(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    _one_line_error(auditor("report", "--out", str(out), "--store", str(tmp_path / "missing.db")), "no such evidence store")
    assert not out.exists() and not (tmp_path / "missing.db").exists()


def _check_json(*args: str) -> dict[str, Any]:
    run = auditor("check", *args, "--json")
    assert run.returncode in (0, 1, 2), run.stderr
    return json.loads(run.stdout)


def _chain(store: Path, sensor_id: str) -> int:
    db = sqlite3.connect(store)
    try:
        return int(db.execute("SELECT count(*) FROM records WHERE sensor_id = ?", (sensor_id,)).fetchone()[0])
    finally:
        db.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ingesting_the_same_file_twice_stores_each_event_once(tmp_path: Path) -> None:
    store = tmp_path / "e.db"
    first = auditor("ingest", str(EXAMPLE), "--store", str(store))
    assert first.returncode == 0 and "ingested 12 events, rejected 0 lines, skipped 0 already stored" in first.stdout
    again = auditor("ingest", str(EXAMPLE), "--store", str(store))
    assert again.returncode == 0 and "ingested 0 events, rejected 0 lines, skipped 12 already stored" in again.stdout
    assert sqlite3.connect(store).execute("SELECT count(*) FROM records").fetchone()[0] == 12
    result = _check_json("--store", str(store))
    assert result["events"] == 12 and result["actions"]["violation"] == 3

    lines = EXAMPLE.read_text().splitlines()
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text("\n".join([lines[1], lines[2], lines[1]]) + "\n")
    run = auditor("ingest", str(repeated), "--store", str(tmp_path / "r.db"))
    assert run.returncode == 0 and "ingested 2 events, rejected 0 lines, skipped 1 already stored" in run.stdout


def test_check_records_a_result_once_and_a_changed_result_again(tmp_path: Path) -> None:
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    first = _check_json("--store", str(store))
    assert first["recorded"] == len(first["findings"]) == 6 and first["unchanged"] == 0
    again = _check_json("--store", str(store))
    assert again["recorded"] == 0 and again["unchanged"] == 6
    assert [f["id"] for f in again["findings"]] == [f["id"] for f in first["findings"]]  # the ids the chain holds
    assert _chain(store, "check") == 6

    # one more PUT to the foreign bucket: that finding's count changes, the other five do not
    line = next(x for x in EXAMPLE.read_text().splitlines() if "someone-elses-bucket" in x)
    event = json.loads(line)
    event["id"], event["time"] = "0" * 31 + "1", "2026-11-20T09:00:40Z"
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(event) + "\n")
    assert auditor("ingest", str(more), "--store", str(store)).returncode == 0
    third = _check_json("--store", str(store))
    assert third["recorded"] == 1 and third["unchanged"] == 5
    changed = [f for f in third["findings"] if f["id"] not in {g["id"] for g in first["findings"]}]
    assert [(f["rule_id"], f["count"]) for f in changed] == [("s3.foreign-bucket-write", 2)]
    assert _chain(store, "check") == 7
    assert auditor("verify", str(store)).returncode == 0


def test_check_no_record_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    before = _sha256(store)
    result = _check_json("--store", str(store), "--no-record")
    assert result["actions"]["violation"] == 3 and result["recorded"] == 0
    assert "--no-record" in result["not_recorded"]
    assert _sha256(store) == before and _chain(store, "check") == 0
    run = auditor("check", "--store", str(store), "--no-record", "--events", str(EXAMPLE))
    assert run.returncode == 3 and "--no-record" in run.stderr
    assert _sha256(store) == before


def test_check_reads_a_signed_bundle_and_it_still_verifies(tmp_path: Path) -> None:
    """A received bundle is checked as it is: nothing written, not even SQLite's side files."""
    store = tmp_path / "e.db"
    assert auditor("ingest", str(EXAMPLE), "--store", str(store)).returncode == 0
    assert auditor("keys", "generate", "--out", str(tmp_path / "keys")).returncode == 0
    bundle = tmp_path / "bundle"
    made = auditor("report", "--store", str(store), "--out", str(bundle), "--sign", str(tmp_path / "keys" / "auditor-signing.key"))
    assert made.returncode == 1, made.stderr  # the example's planted violations
    snapshot = bundle / "evidence.db"
    before, files = _sha256(snapshot), sorted(p.name for p in bundle.iterdir())

    run = auditor("check", "--store", str(snapshot))
    assert run.returncode == 1 and "not recorded:" in run.stdout and "signed report bundle" in run.stdout
    result = _check_json("--store", str(snapshot))
    assert result["recorded"] == 0 and "signed report bundle" in result["not_recorded"]
    for refused in (
        auditor("check", "--store", str(snapshot), "--record"),
        auditor("check", "--store", str(snapshot), "--events", str(EXAMPLE)),
        auditor("ingest", str(EXAMPLE), "--store", str(snapshot)),
    ):
        assert refused.returncode == 3 and "would break its signature" in refused.stderr
        assert "auditor store copy" in refused.stderr
    assert _sha256(snapshot) == before and sorted(p.name for p in bundle.iterdir()) == files
    verified = auditor("verify", str(bundle), "--key", str(tmp_path / "keys" / "auditor-signing.pub"))
    assert verified.returncode == 0, verified.stdout


def test_check_knows_the_bundle_envelope_by_its_name_in_the_bundle_module() -> None:
    from auditor.check import BUNDLE_ENVELOPE
    from auditor.report.bundle import ENVELOPE_NAME

    assert BUNDLE_ENVELOPE == ENVELOPE_NAME
