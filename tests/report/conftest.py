"""Fixtures of the report tests: the shipped pack, and real SQLite stores (real
chains) holding the events the tests build."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from auditor.model import EgressEvent
from auditor.rules import Pack, load_pack
from auditor.store.base import open_store


@pytest.fixture()
def pack() -> Pack:
    return load_pack()


@pytest.fixture()
def make_store(tmp_path: Path) -> Callable[[list[EgressEvent], str], Path]:
    def make(events: list[EgressEvent], name: str = "evidence.db") -> Path:
        path = tmp_path / name
        store = open_store(str(path))
        try:
            store.append(events)
        finally:
            store.close()
        return path

    return make
