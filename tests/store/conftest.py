"""The store suite runs every test against both backends (`store_url`), and tampers
through `Raw`: plain SQL on the same database, as an attacker with write access would."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from auditor.model import Destination, EgressEvent, HttpInfo, Source

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def is_pg(url: str) -> bool:
    return url.startswith("postgresql://")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "evidence.db")
    return str(request.getfixturevalue("pg_url"))


def make_events(sensor_id: str, n: int, *, start: datetime = T0, step: timedelta = timedelta(minutes=1), tag: str = "") -> list[EgressEvent]:
    return [
        EgressEvent(
            time=start + i * step,
            sensor_id=sensor_id,
            kind="http",
            source=Source(ip=f"10.42.0.{i % 250}", pod=f"agent-{i % 3}", namespace="gretel-hybrid", scope="pod"),
            destination=Destination(host="api.gretel.cloud", sni="api.gretel.cloud", ip="203.0.113.10", port=443, tls=True),
            http=HttpInfo(method="PATCH", path="/projects/models", query=f"uid=m_{i}", status=200),
            notes=[tag] if tag else [],
        )
        for i in range(n)
    ]


class Raw:
    """Direct SQL on the store's database with `?` placeholders on both backends."""

    def __init__(self, url: str) -> None:
        self.pg = is_pg(url)
        self.conn: Any = psycopg.connect(url, autocommit=True) if self.pg else sqlite3.connect(url, isolation_level=None)

    def q(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(query.replace("?", "%s") if self.pg else query, params)
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()] if cur.description else []

    def unguard(self) -> None:
        """What an attacker does first: remove the append-only triggers."""
        if self.pg:
            self.q("DROP TRIGGER records_append_only ON records")
            self.q("DROP TRIGGER records_no_truncate ON records")
        else:
            self.q("DROP TRIGGER records_no_update")
            self.q("DROP TRIGGER records_no_delete")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture()
def raw(store_url: str) -> Iterator[Raw]:
    conn = Raw(store_url)
    yield conn
    conn.close()
