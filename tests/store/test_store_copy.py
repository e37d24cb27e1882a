"""`auditor store copy`: SQLite -> PostgreSQL -> SQLite keeps every chain byte for byte."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from typer.testing import CliRunner

from auditor.cli import app
from auditor.model import sensor_event
from auditor.store.base import open_store
from auditor.store.ops import retain_store

from .conftest import T0, Raw, make_events

ROWS = "SELECT sensor_id, seq, kind, record_id, time_us, body, prev_hash, hash FROM records ORDER BY sensor_id, seq"


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(ROWS).fetchall() + db.execute("SELECT * FROM checkpoints ORDER BY sensor_id").fetchall()


def test_round_trip_is_byte_for_byte(tmp_path: Path, pg_url: str) -> None:
    src, back = tmp_path / "node.db", tmp_path / "back.db"
    store = open_store(str(src))
    store.append(make_events("probe-node1", 30, step=timedelta(hours=2)) + [sensor_event("probe-node1", "stop")])
    store.append(make_events("proxy-a", 10, tag="ünïcødé 😀"))
    store.close()
    retain_store(str(src), T0 + timedelta(days=1))  # copies carry the retention record too

    runner = CliRunner()
    to_pg = runner.invoke(app, ["store", "copy", str(src), pg_url])
    assert to_pg.exit_code == 0, to_pg.output
    assert "the copy verifies" in to_pg.output and "chain probe-node1: 31 records, head #31" in to_pg.output
    raw = Raw(pg_url)
    assert [r[5] for r in raw.q(ROWS)] == [r[5] for r in _rows(src) if len(r) == 8]
    raw.close()

    to_sqlite = runner.invoke(app, ["store", "copy", pg_url, str(back)])
    assert to_sqlite.exit_code == 0, to_sqlite.output
    assert _rows(back) == _rows(src)
    verified = runner.invoke(app, ["verify", "--store", str(back)])
    assert verified.exit_code == 0, verified.output


def test_copy_refuses_chains_the_destination_has(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "a.db"
    store = open_store(str(src))
    store.append(make_events("proxy-a", 3))
    store.close()
    dst = open_store(pg_url)
    dst.append(make_events("proxy-a", 2) + make_events("other", 2))
    dst.close()
    out = CliRunner().invoke(app, ["store", "copy", str(src), pg_url])
    assert out.exit_code != 0
    assert "already holds chains proxy-a" in str(out.exception)
    dst = open_store(pg_url)
    assert dst.count() == 4 and dst.verify().ok  # nothing half-copied
    dst.close()


def test_copy_merges_disjoint_chains_and_refuses_a_broken_source(tmp_path: Path, pg_url: str) -> None:
    """Node stores consolidate into one central store; a broken chain stays where it is."""
    for node in ("n1", "n2"):
        store = open_store(str(tmp_path / f"{node}.db"))
        store.append(make_events(f"probe-{node}", 5))
        store.close()
        out = CliRunner().invoke(app, ["store", "copy", str(tmp_path / f"{node}.db"), pg_url])
        assert out.exit_code == 0, out.output
    central = open_store(pg_url)
    assert {h.sensor_id for h in central.verify().chains} == {"probe-n1", "probe-n2"}
    central.close()

    broken = tmp_path / "broken.db"
    store = open_store(str(broken))
    store.append(make_events("probe-n3", 5))
    store.close()
    raw = Raw(str(broken))
    raw.unguard()
    raw.q("DELETE FROM records WHERE seq = 2")
    raw.close()
    out = CliRunner().invoke(app, ["store", "copy", str(broken), pg_url])
    assert out.exit_code != 0 and "the source does not verify" in str(out.exception)
