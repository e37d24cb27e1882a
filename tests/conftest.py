"""Suite-wide fixtures. `pg_url`: a fresh schema in a throwaway PostgreSQL cluster
(started once per session, removed at the end), for any test that runs a command
against the PostgreSQL store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from auditor.store.pgtemp import TempCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[TempCluster]:
    cluster = TempCluster(durable=False).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def pg_url(pg_cluster: TempCluster) -> Iterator[str]:
    """A store URL whose search_path is a schema of its own: tests never see each other's rows."""
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield pg_cluster.url(options=f"-csearch_path={schema}")
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
