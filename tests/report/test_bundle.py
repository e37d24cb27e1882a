"""Signed bundles: DSSE verifies, every tampering is rejected and named; the CLI
through its real entry point, with exit codes by verdict."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from report_events import clean_events, leak_events

from auditor.report import intoto
from auditor.report.bundle import ENVELOPE_NAME, make_report, verify_bundle
from auditor.rules import Pack
from auditor.store.chain import canonical_json

AUDITOR = [sys.executable, "-c", "from auditor.cli import main; main()"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*AUDITOR, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public, _ = intoto.generate_keys(tmp_path / "keys")
    return private, public


def _bundle(tmp_path: Path, store: Path, pack: Pack, key: Path, name: str = "bundle") -> Path:
    out = tmp_path / name
    make_report(str(store), out, pack, formats=["html", "json", "sarif", "junit", "intoto"], sign_key=key)
    return out


def test_keys_are_ed25519_and_private_key_is_0600(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert intoto.key_id(intoto.load_private_key(private).public_key()) == intoto.key_id(intoto.load_public_key(public))


def test_dsse_signature_verifies_and_rejects_tampering(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    statement = intoto.Statement(subject=[intoto.Subject(name="report.html", digest={"sha256": "ab" * 32})],
                                 predicate={"verdict": {"status": "PASS"}})
    envelope = intoto.sign(statement, intoto.load_private_key(private))
    pub = intoto.load_public_key(public)
    checked = intoto.verify_envelope(envelope, pub)
    assert checked.ok and checked.statement is not None
    assert checked.statement.predicate["verdict"]["status"] == "PASS"
    payload = json.loads(envelope.payload_bytes())
    assert payload["_type"] == "https://in-toto.io/Statement/v1" and payload["predicateType"] == intoto.PREDICATE_TYPE

    forged = json.loads(envelope.payload_bytes())
    forged["predicate"]["verdict"]["status"] = "FAIL"
    bad_payload = envelope.model_copy(update={"payload": base64.b64encode(json.dumps(forged).encode()).decode()})
    assert not intoto.verify_envelope(bad_payload, pub).ok
    sig = bytearray(base64.b64decode(envelope.signatures[0].sig))
    sig[0] ^= 1
    bad_sig = envelope.model_copy(update={"signatures": [intoto.Signature(keyid="x", sig=base64.b64encode(bytes(sig)).decode())]})
    assert not intoto.verify_envelope(bad_sig, pub).ok
    assert not intoto.verify_envelope(envelope.model_copy(update={"payloadType": "text/plain"}), pub).ok
    other, other_pub, _ = intoto.generate_keys(tmp_path / "other")
    assert not intoto.verify_envelope(envelope, intoto.load_public_key(other_pub)).ok
    assert not intoto.verify_envelope(envelope.model_copy(update={"signatures": []}), pub).ok


def test_untouched_bundle_verifies(make_store, pack: Pack, keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    out = _bundle(tmp_path, make_store(leak_events()), pack, private)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["report.html", "report.json", "report.sarif", "report.junit.xml", "evidence.db", ENVELOPE_NAME])
    outcome = verify_bundle(out, public)
    assert outcome.ok, outcome.lines
    assert any("store chain proxy-a" in line and "as signed" in line for line in outcome.lines)
    statement = json.loads(intoto.Envelope.model_validate_json((out / ENVELOPE_NAME).read_text()).payload_bytes())
    assert {s["name"] for s in statement["subject"]} >= {"report.html", "report.json", "evidence.db"}
    predicate = statement["predicate"]
    assert predicate["verdict"]["status"] == "FAIL"
    assert predicate["pack"]["digest"] == pack.digest and predicate["chains"]["heads"]
    assert predicate["window"]["start"].startswith("2026-11-20T09:00:00")
    raw = (out / "report.json").read_bytes()
    assert raw == canonical_json(json.loads(raw)), "report.json is the RFC 8785 canonical document"
    doc = json.loads(raw)
    assert doc["integrity"]["signing_key_id"] == intoto.key_id(intoto.load_public_key(public))


@pytest.mark.parametrize("victim", ["report.html", "report.json", "report.sarif", "report.junit.xml", "evidence.db"])
def test_each_tampered_file_is_rejected_and_named(make_store, pack: Pack, keys: tuple[Path, Path], tmp_path: Path,
                                                  victim: str) -> None:
    private, public = keys
    out = _bundle(tmp_path, make_store(clean_events()), pack, private)
    path = out / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    outcome = verify_bundle(out, public)
    assert not outcome.ok
    assert any(line.startswith(f"FAIL {victim}: tampered") for line in outcome.lines), outcome.lines


def test_envelope_tampering_missing_file_and_wrong_key_are_rejected(make_store, pack: Pack, keys: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    private, public = keys
    out = _bundle(tmp_path, make_store(clean_events()), pack, private)
    env_path = out / ENVELOPE_NAME
    original = env_path.read_text()
    doc = json.loads(original)
    statement = json.loads(base64.b64decode(doc["payload"]))
    statement["predicate"]["verdict"]["status"] = "PASS-FORGED"
    doc["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    env_path.write_text(json.dumps(doc))
    outcome = verify_bundle(out, public)
    assert not outcome.ok and ENVELOPE_NAME in outcome.lines[0] and outcome.lines[0].startswith("FAIL signature")
    env_path.write_text(original)

    (out / "report.sarif").unlink()
    outcome = verify_bundle(out, public)
    assert not outcome.ok and "FAIL report.sarif: missing from the bundle" in outcome.lines

    _, other_pub, _ = intoto.generate_keys(tmp_path / "other")
    assert not verify_bundle(out, other_pub).ok
    assert not verify_bundle(out, None).ok


def test_store_rewritten_consistently_is_caught_by_its_digest(make_store, pack: Pack, keys: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    """Swapping in another valid store (its own chains intact) still fails: the signed digest and heads differ."""
    private, public = keys
    out = _bundle(tmp_path, make_store(clean_events()), pack, private)
    other = _bundle(tmp_path, make_store(leak_events(), "other.db"), pack, private, name="other")
    (out / "evidence.db").write_bytes((other / "evidence.db").read_bytes())
    outcome = verify_bundle(out, public)
    assert not outcome.ok and any(line.startswith("FAIL evidence.db: tampered") for line in outcome.lines)


def test_cli_report_exit_codes_and_verify(make_store, tmp_path: Path) -> None:
    keydir = tmp_path / "k"
    made = _run("keys", "generate", "--out", str(keydir))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((keydir / "auditor-signing.key").stat().st_mode) == 0o600

    clean = make_store(clean_events())
    res = _run("report", "--store", str(clean), "--out", str(tmp_path / "c"), "--sign", str(keydir / "auditor-signing.key"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS" in res.stdout
    ok = _run("verify", str(tmp_path / "c"), "--key", str(keydir / "auditor-signing.pub"))
    assert ok.returncode == 0, ok.stdout
    (tmp_path / "c" / "report.html").write_text("<html>forged</html>")
    bad = _run("verify", str(tmp_path / "c"), "--key", str(keydir / "auditor-signing.pub"))
    assert bad.returncode == 1 and "report.html: tampered" in bad.stdout

    leaky = make_store(leak_events(), "leaky.db")
    res = _run("report", "--store", str(leaky), "--out", str(tmp_path / "l"), "--format", "json,sarif")
    assert res.returncode == 1 and sorted(p.name for p in (tmp_path / "l").iterdir()) == ["report.json", "report.sarif"]

    res = _run("report", "--store", str(clean), "--out", str(tmp_path / "w"), "--since", "2027-01-01")
    assert res.returncode == 2 and "no traffic events" in res.stdout

    res = _run("report", "--store", str(clean), "--out", str(tmp_path / "s"), "--since", "2026-11-21", "--until", "2026-11-20")
    assert res.returncode == 3 and "--since" in res.stderr
    res = _run("report", "--store", str(clean), "--out", str(tmp_path / "m"), "--min-coverage", "1.5")
    assert res.returncode == 3 and "min-coverage" in res.stderr
    res = _run("report", "--store", str(clean), "--out", str(tmp_path / "i"), "--format", "intoto")
    assert res.returncode == 3 and "--sign" in res.stderr
    res = _run("report", "--store", str(tmp_path / "nope.db"), "--out", str(tmp_path / "n"))
    assert res.returncode == 3 and "no such evidence store" in res.stderr


@pytest.mark.parametrize("child_fails", [False, True])
def test_formats_written_by_a_forked_child_are_the_formats(make_store, pack: Pack, keys: tuple[Path, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, child_fails: bool) -> None:
    """A large report's HTML and SARIF come from a forked child; when it fails, from here.
    Either way each file is what rendering the document here writes, and the bundle verifies."""
    from auditor.report import bundle
    from auditor.report.render_html import render_html
    from auditor.report.render_sarif import render_sarif

    store = make_store(leak_events())
    parent, real = os.getpid(), bundle._write

    def write(doc: object, fmt: str, path: Path) -> None:
        if child_fails and os.getpid() != parent:
            raise RuntimeError("the child cannot write")
        real(doc, fmt, path)  # type: ignore[arg-type]

    documents: list[object] = []
    real_build = bundle.build_report

    def build(*args: object, **kwargs: object) -> object:
        documents.append(real_build(*args, **kwargs))  # type: ignore[arg-type]
        return documents[-1]

    monkeypatch.setattr(bundle, "FORK_RENDER_ABOVE", 0)
    real_count, threads_before = threading.active_count, threading.active_count()
    monkeypatch.setattr(threading, "active_count", lambda: real_count() - threads_before + 1)  # other tests' leftovers are not ours
    children: list[int] = []
    real_fork = bundle._fork

    def fork() -> int | None:
        pid = real_fork()
        if pid:
            children.append(pid)
        return pid

    monkeypatch.setattr(bundle, "_fork", fork)
    monkeypatch.setattr(bundle, "_write", write)
    monkeypatch.setattr(bundle, "build_report", build)
    out = _bundle(tmp_path, store, pack, keys[0])
    [doc] = documents
    assert (out / "report.html").read_text(encoding="utf-8") == render_html(doc)  # type: ignore[arg-type]
    assert json.loads((out / "report.sarif").read_bytes()) == json.loads(json.dumps(render_sarif(doc)))  # type: ignore[arg-type]
    assert verify_bundle(out, keys[1]).ok
    assert len(children) == 1  # the HTML and SARIF were a child's to write
