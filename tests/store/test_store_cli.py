"""The commands that read or write evidence behave the same on either backend."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from auditor.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "events.jsonl"


def test_ingest_check_verify_report_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    runner = CliRunner()
    outcomes = []
    for name, url in (("sqlite", str(tmp_path / "evidence.db")), ("postgresql", pg_url)):
        ingest = runner.invoke(app, ["ingest", str(EXAMPLES), "--store", url])
        check = runner.invoke(app, ["check", "--store", url, "--json"])
        verify = runner.invoke(app, ["verify", "--store", url])
        report = runner.invoke(app, ["report", "--store", url, "--out", str(tmp_path / name), "--format", "json"])
        assert ingest.exit_code == 0 and verify.exit_code == 0, ingest.output + verify.output
        assert (tmp_path / name / "report.json").exists(), report.output
        sensor_heads = sorted(re.findall(r"chain ((?:proxy|probe)\S+): (\d+) records, head #\d+ (\S+)", verify.output))
        outcomes.append((check.exit_code, report.exit_code, sensor_heads))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][2], "the sensors' chains are listed"
