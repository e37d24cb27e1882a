"""Red flag 10's pieces: what a get_login answer names, what a pull is, what a registry's name is."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from auditor.rules import registry
from auditor.store.base import open_store

ECR = "074762682575.dkr.ecr.us-west-2.amazonaws.com"


def _answer(doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("named", "host"),
    [
        (f"https://{ECR}", ECR),
        (ECR, ECR),
        (f"{ECR.upper()}.", ECR),
        (f"{ECR}:443/gretelai", ECR),
        ("https://registry.example.com:5000/v2/", "registry.example.com"),
        ("https://AWS@registry.example.com/", "registry.example.com"),
        ("[2001:db8::1]:5000", "2001:db8::1"),
        ("10.0.0.5:5000", "10.0.0.5"),
        ("", None),
        ("not a host", None),
        ("https://", None),
    ],
)
def test_the_registry_a_get_login_answer_names(named: str, host: str | None) -> None:
    body = _answer({"data": {"auth": {"username": "AWS", "password": "p"}, "registry": named}})
    assert registry.login_registry("GET", "/opt/containers/get_login", 200, body) == host


def test_only_a_successful_get_login_answer_names_a_registry() -> None:
    body = _answer({"data": {"registry": ECR}})
    assert registry.login_registry("GET", "/opt/containers/get_login?x=1", 200, body) == ECR
    assert registry.login_registry("GET", "/opt/containers/get_login/", 200, body) == ECR
    assert registry.login_registry("GET", "/opt/containers/get_login", 200, _answer({"registry": ECR})) == ECR
    assert registry.login_registry("POST", "/opt/containers/get_login", 200, body) is None
    assert registry.login_registry("GET", "/opt/containers/get_login", 403, body) is None
    assert registry.login_registry("GET", "/opt/containers/get_logins", 200, body) is None
    assert registry.login_registry("GET", "/opt/containers/get_login", 200, b"{not json") is None
    assert registry.login_registry("GET", "/opt/containers/get_login", 200, _answer(["registry", ECR])) is None
    assert registry.login_registry("GET", "/opt/containers/get_login", 200, _answer({"data": {"registry": 7}})) is None
    big = _answer({"data": {"registry": ECR, "pad": "x" * registry.MAX_LOGIN_BODY}})
    assert registry.login_registry("GET", "/opt/containers/get_login", 200, big) is None


def test_a_pull_is_the_distribution_api_read_side() -> None:
    for path in ("/v2/", "/v2", "/v2/?x", "/v2/gretelai/models/manifests/v1", "/v2/a/b/c/blobs/sha256:00", "/v2/a/tags/list"):
        assert registry.is_pull("GET", path), path
    assert registry.is_pull("HEAD", "/v2/a/manifests/latest")
    assert not registry.is_pull("PUT", "/v2/a/manifests/latest")  # a push: the pack's registry.push judges it
    for path in ("/v2-other", "/v2/a/uploads/", "/v1/a/manifests/x", "/api/v2/a/manifests/x"):
        assert not registry.is_pull("GET", path), path


def test_registry_names_and_what_was_not_named() -> None:
    for name in (ECR, "123456789012.dkr.ecr.eu-central-1.amazonaws.com", "quay.io", "ghcr.io", "registry-1.docker.io",
                 "us-docker.pkg.dev", "acme.azurecr.io", "eu.gcr.io", "REGISTRY.K8S.IO", "quay.io:443",
                 "074762682575.dkr-ecr.us-west-2.on.aws", "mcr.microsoft.com", "registry.gitlab.com"):
        assert registry.is_registry_name(name), name
    for name in ("api.gretel.cloud", "s3.amazonaws.com", "dkr.ecr.us-west-2.amazonaws.com.evil.example", "quay.io.evil.example"):
        assert not registry.is_registry_name(name), name
    assert not registry.unnamed("quay.io", {})  # nothing named yet: nothing to judge
    assert not registry.unnamed(f"{ECR.upper()}:443", {ECR})
    assert registry.unnamed("quay.io", {ECR})
    assert registry.note({ECR, "b.example"}) == f"get_login named {ECR}, b.example"


def test_the_registries_named_in_the_proxies_stored_answers(tmp_path: Path) -> None:
    """Rows as a store may hold them, written past the chain (what a foreign or damaged row
    looks like): only the proxies' chains are read, and a row that does not parse names nothing."""

    def body(host: str | None, at: str, action: str = "allowed", kind: str = "http") -> bytes:
        http = {"method": "GET", "path": registry.GET_LOGIN_PATH, "login_registry": host}
        return json.dumps({"kind": kind, "time": at, "http": http, "decision": {"action": action}}, separators=(",", ":")).encode()

    rows = [
        ("proxy-a", body(ECR, "2026-11-26T10:00:00Z")),
        ("proxy-b", body(ECR, "2026-11-26T09:00:00Z")),  # the earlier answer counts
        ("proxy-a", body("https://quay.io/", "2026-11-26T09:30:00Z", action="violation")),  # not the contract's API: names nothing
        ("proxy-a", body("other.example", "2026-11-26T09:30:00Z", kind="tls")),
        ("proxy-a", b'{"kind":"http","login_registry":"x", not json'),
        ("proxy-a", b'{"kind":"http","time":"2026-11-26T09:00:00Z","login_registry":"not under http"}'),
        ("proxy-a", json.dumps({"kind": "http", "http": {"method": "GET"}}).encode()),  # no field: skipped unread
        ("probe", body("ghcr.io", "2026-11-26T09:10:00Z")),  # not a proxy's chain: never read
        ("proxy-a", body("quay.io", "2026-11-26T08:00:00Z")),  # outside the window asked for
    ]
    path = tmp_path / "ev.db"
    open_store(str(path)).close()
    db = sqlite3.connect(path)
    t = int(datetime(2026, 11, 26, 9, 30, tzinfo=UTC).timestamp() * 1_000_000)
    db.executemany(
        "INSERT INTO records VALUES (?, ?, 'event', ?, ?, ?, '', '')",
        [(sensor, i, f"r{i}", t - (3 * 3600 * 1_000_000 if b'08:00' in b else 0), b) for i, (sensor, b) in enumerate(rows, 1)],
    )
    db.commit()
    db.close()
    store = open_store(str(path), create=False)
    assert registry.named_in(store, datetime(2026, 11, 26, 8, 30, tzinfo=UTC)) == {ECR: datetime(2026, 11, 26, 9, tzinfo=UTC)}
    store.close()
