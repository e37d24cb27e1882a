"""Shared fixtures of the classifier tests."""

from __future__ import annotations

import os

import pytest

from auditor.classify import ClassifyContext, load_context
from auditor.classify.fingerprint import build


@pytest.fixture(scope="module")
def unrelated_fps(tmp_path_factory: pytest.TempPathFactory) -> ClassifyContext:
    """A fingerprint set of values that appear in no test body: it adds no finding,
    but it switches the quiet proof off, so classify() takes the full per-string walk."""
    tmp = tmp_path_factory.mktemp("fps")
    (tmp / "d.csv").write_text("a,b,c\n" + "".join(f"zqxj{i:04d}wv,vwjq{i:04d}xz,kqzv{i:04d}jj\n" for i in range(20)))
    (tmp / "K").write_bytes(os.urandom(32))
    build(tmp / "d.csv", tmp / "d.fp", tmp / "K")
    return load_context(fingerprints=tmp / "d.fp", key_file=tmp / "K")
