"""Retention removes old chain prefixes and chains what it removed: verify passes,
writers carry on, and only a prefix is ever removed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from auditor.cli import app
from auditor.store.base import open_store
from auditor.store.ops import retain_store
from auditor.store.retention import RETENTION_SENSOR, RetentionStatement

from .conftest import T0, make_events


def test_retain_removes_prefixes_and_verify_passes(store_url: str) -> None:
    store = open_store(store_url)
    store.append(make_events("proxy-a", 48, step=timedelta(hours=1)))  # two days
    store.append(make_events("probe-b", 10, start=T0 + timedelta(days=3)))
    store.close()

    result = retain_store(store_url, T0 + timedelta(days=1))
    assert result.removed == 24 and result.record_seq == 1
    assert {s: (p.through_seq, p.removed) for s, p in result.chains.items()} == {"proxy-a": (24, 24)}

    store = open_store(store_url, create=False)
    assert store.count() == 34 + 1  # and the retention record
    assert min(e.time for e in store.events() if e.sensor_id == "proxy-a") == T0 + timedelta(days=1)
    verified = store.verify()
    assert verified.ok, [p.line() for p in verified.problems]
    heads = {h.sensor_id: h for h in verified.chains}
    assert heads["proxy-a"].head_seq == 48 and heads["proxy-a"].count == 48  # removed records stay accounted for
    [record] = [e for e in store.events() if e.sensor_id == RETENTION_SENSOR]
    assert record.sensor is not None and record.sensor.lifecycle == "retention"
    statement = RetentionStatement.model_validate_json(record.sensor.detail or "")
    assert statement.chains["proxy-a"].through_seq == 24

    store.append(make_events("proxy-a", 5, start=T0 + timedelta(days=4)))  # the chain carries on
    assert store.verify().ok
    store.close()

    again = retain_store(store_url, T0 + timedelta(days=1))
    assert again.record_seq is None and again.removed == 0  # nothing new: no record either
    whole = retain_store(store_url, T0 + timedelta(days=30), force=True)  # every chain's records go; the statement stays
    assert whole.removed == 24 + 10 + 5 and whole.record_seq == 2
    store = open_store(store_url, create=False)
    assert store.count() == 2  # the retention chain's two records: it is never removed
    verified = store.verify()
    assert verified.ok, [p.line() for p in verified.problems]
    assert {h.sensor_id: h.head_seq for h in verified.chains} == {"proxy-a": 53, "probe-b": 10, RETENTION_SENSOR: 2}
    store.close()


def test_only_a_prefix_goes_when_times_are_out_of_order(store_url: str) -> None:
    """An old capture imported after newer events: those old records sit after a kept
    one in the chain, so they stay until the records before them may go too."""
    store = open_store(store_url)
    store.append(make_events("importer", 3, start=T0))
    store.append(make_events("importer", 3, start=T0 + timedelta(days=5)))
    store.append(make_events("importer", 3, start=T0 + timedelta(hours=1)))  # late, old
    store.close()
    result = retain_store(store_url, T0 + timedelta(days=2))
    assert result.chains["importer"].through_seq == 3 and result.removed == 3
    store = open_store(store_url, create=False)
    assert store.count() == 6 + 1 and store.verify().ok
    store.close()


def test_cli_retain(store_url: str) -> None:
    store = open_store(store_url)
    store.append(make_events("proxy-a", 10, step=timedelta(hours=6)))
    store.close()
    out = CliRunner().invoke(app, ["store", "retain", "--store", store_url, "--before", "2026-11-21"])
    assert out.exit_code == 0, out.output
    assert "chain proxy-a: removed 4 records, now starts after #4" in out.output
    assert "recorded as retention record #1" in out.output
    verified = CliRunner().invoke(app, ["verify", "--store", store_url])
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output


def test_cli_retain_refuses_a_cutoff_in_the_future_without_force(store_url: str) -> None:
    """`--before` after now would remove what the sensors wrote a minute ago: one line,
    exit 3 and nothing removed, unless `--force` says it is meant."""
    now = datetime.now(UTC)
    store = open_store(store_url)
    store.append(make_events("proxy-a", 3, start=now - timedelta(minutes=5)))
    store.close()
    tomorrow = (now + timedelta(days=1)).strftime("%Y-%m-%d")
    run = subprocess.run(
        [sys.executable, "-m", "auditor.cli", "store", "retain", "--store", store_url, "--before", tomorrow],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
    )
    assert run.returncode == 3 and run.stderr.strip().count("\n") == 0, run.stderr
    assert f"--before {tomorrow}T00:00:00+00:00 is in the future" in run.stderr and "add --force" in run.stderr
    store = open_store(store_url, create=False)
    assert store.count() == 3 and RETENTION_SENSOR not in {h.sensor_id for h in store.chain_heads()}
    store.close()
    forced = CliRunner().invoke(app, ["store", "retain", "--store", store_url, "--before", tomorrow, "--force"])
    assert forced.exit_code == 0 and "chain proxy-a: removed 3 records" in forced.output, forced.output
    verified = CliRunner().invoke(app, ["verify", "--store", store_url])
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output
