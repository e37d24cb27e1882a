"""What only the PostgreSQL store has: migrations, day partitions, credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from auditor.cli import app
from auditor.errors import AuditorError
from auditor.store.base import open_store, redact_url
from auditor.store.ops import retain_store
from auditor.store.pgtemp import TempCluster
from auditor.store.postgres import SCHEMA_VERSION, PostgresStore

from .conftest import T0, Raw, make_events


def _partitions(url: str) -> list[str]:
    raw = Raw(url)
    rows = raw.q("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'records'::regclass ORDER BY 1")
    raw.close()
    return [r[0] for r in rows]


def test_migrations_are_explicit_and_versioned(pg_url: str) -> None:
    old = PostgresStore(pg_url, migrating=True)
    assert old.migrate(target=1) == [1]
    old.close()
    with pytest.raises(AuditorError, match=f"schema version 1, this auditor needs {SCHEMA_VERSION}.*auditor store migrate"):
        open_store(pg_url)

    out = CliRunner().invoke(app, ["store", "migrate", "--store", pg_url])
    assert out.exit_code == 0, out.output
    later = ", ".join(str(v) for v in range(2, SCHEMA_VERSION + 1))
    assert f"schema version 1 -> {SCHEMA_VERSION} (applied {later})" in out.output
    again = CliRunner().invoke(app, ["store", "migrate", "--store", pg_url])
    assert "(up to date)" in again.output

    store = open_store(pg_url)
    store.append(make_events("proxy-a", 3))
    assert store.verify().ok
    store.close()
    raw = Raw(pg_url)
    assert [r[0] for r in raw.q("SELECT version FROM auditor_schema ORDER BY version")] == list(range(1, SCHEMA_VERSION + 1))
    raw.q("INSERT INTO auditor_schema (version, description) VALUES (99, 'from the future')")
    raw.close()
    with pytest.raises(AuditorError, match="newer than this auditor"):
        open_store(pg_url)


def test_day_partitions_on_demand_and_dropped_by_retention(pg_url: str) -> None:
    store = open_store(pg_url)
    store.append(make_events("probe-a", 3, step=timedelta(days=1)))
    assert _partitions(pg_url) == ["records_20261120", "records_20261121", "records_20261122"]
    store.append(make_events("late", 1, start=T0 + timedelta(days=2)) + make_events("late", 1, start=T0))
    store.close()

    result = retain_store(pg_url, T0 + timedelta(days=2))
    # day 20 also holds late #2, which follows a kept record: that partition stays, its other rows go
    assert result.partitions_dropped == ["records_20261121"]
    assert result.removed == 2 and result.chains["probe-a"].through_seq == 2
    assert "records_20261120" in _partitions(pg_url)
    store = open_store(pg_url, create=False)
    assert store.verify().ok
    store.close()


def test_write_after_another_process_dropped_the_partition(pg_url: str) -> None:
    """A sensor that still believes an old day's partition exists keeps its events."""
    writer = open_store(pg_url)
    writer.append(make_events("probe-a", 2, step=timedelta(days=1)))
    retain_store(pg_url, T0 + timedelta(days=1))
    assert "records_20261120" not in _partitions(pg_url)
    writer.append(make_events("probe-b", 1, start=T0 + timedelta(hours=3)))  # an old record arriving late
    assert writer.count() == 3 and writer.verify().ok
    writer.close()


def test_credentials_from_pgpassfile_never_printed(pg_cluster: TempCluster, tmp_path: Path) -> None:
    schema = "c_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = pg_cluster.tcp_url() + f"?options=-csearch_path%3D{schema}"
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_cluster.port}:*:{pg_cluster.user}:{pg_cluster.password}\n")
    passfile.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSFILE": str(passfile)}
    events = tmp_path / "e.jsonl"
    events.write_text("".join(e.model_dump_json() + "\n" for e in make_events("proxy-a", 3)))

    def auditor(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "auditor.cli", *args], capture_output=True, text=True, env=environ, timeout=60, check=False)

    assert auditor("ingest", str(events), "--store", url, environ=env).returncode == 0
    ok = auditor("verify", "--store", url, environ=env)
    assert ok.returncode == 0 and "OK 3 records" in ok.stdout, ok.stdout + ok.stderr

    no_pass = {k: v for k, v in env.items() if k != "PGPASSFILE"} | {"PGPASSFILE": str(tmp_path / "none")}
    wrong = pg_cluster.tcp_url(with_password=False).replace("auditor@", "auditor:Wr0ngSecret@")
    failed = auditor("verify", "--store", wrong, environ=no_pass)
    assert failed.returncode == 3
    assert "cannot connect to postgresql://auditor:***@127.0.0.1" in failed.stderr
    assert "Wr0ngSecret" not in failed.stdout + failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_redact_url(pg_cluster: TempCluster) -> None:
    assert redact_url("postgresql://u:s3cret@db:5432/ev?sslmode=require") == "postgresql://u:***@db:5432/ev?sslmode=require"
    assert redact_url("postgresql://u@db/ev?password=s3cret&application_name=x") == "postgresql://u@db/ev?password=***&application_name=x"
    assert redact_url("postgresql:///ev?host=/run/pg") == "postgresql:///ev?host=/run/pg"
    assert redact_url("/var/lib/auditor/evidence.db") == "/var/lib/auditor/evidence.db"
    store = PostgresStore(pg_cluster.tcp_url(with_password=True), migrating=True)  # keeps only the redacted form
    assert pg_cluster.password not in store.url and ":***@127.0.0.1" in store.url
    store.close()


def test_retention_with_a_cutoff_after_now(pg_url: str) -> None:
    """Today's partition may be dropped with everything in it; the statement still lands."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    noon = datetime(now.year, now.month, now.day, 12, tzinfo=UTC)
    store = open_store(pg_url)
    store.append(make_events("probe-a", 3, start=noon))
    store.close()
    result = retain_store(pg_url, noon + timedelta(days=2), force=True)
    assert result.removed == 3 and result.partitions_dropped == ["records_" + noon.strftime("%Y%m%d")]
    store = open_store(pg_url, create=False)
    assert store.count() == 1 and store.verify().ok
    store.close()


def test_migration_to_byte_order_keeps_the_chains(pg_url: str) -> None:
    """A store written at schema 2 moves to byte-order sensor ids with its chains intact."""
    old = PostgresStore(pg_url, migrating=True)
    assert old.migrate(target=2) == [1, 2]
    for sensor in ("proxy-b", "Proxy-A", "probe-é"):
        old.append(make_events(sensor, 3))
    old.close()
    mover = PostgresStore(pg_url, migrating=True)
    assert mover.migrate() == list(range(3, SCHEMA_VERSION + 1))
    mover.close()
    store = open_store(pg_url, create=False)
    store.append(make_events("proxy-b", 2, start=T0 + timedelta(hours=1)))
    result = store.verify()
    assert result.ok and result.records == 11
    assert [h.sensor_id for h in store.chain_heads()] == sorted(["proxy-b", "Proxy-A", "probe-é"], key=str.encode)
    store.close()
    raw = Raw(pg_url)
    collations = raw.q(
        "SELECT attrelid::regclass::text, attname, attcollation::regcollation::text FROM pg_attribute "
        "WHERE attrelid IN ('records'::regclass, 'checkpoints'::regclass) AND attname IN ('sensor_id', 'kind') ORDER BY 1, 2"
    )
    raw.close()
    assert collations == [("checkpoints", "sensor_id", '"C"'), ("records", "kind", '"C"'), ("records", "sensor_id", '"C"')]
