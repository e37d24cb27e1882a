"""Write a report bundle, and check one.

A bundle is a directory: the report in each format, a snapshot of the evidence
store the report was built from, and a DSSE envelope whose signed in-toto
statement names every one of those files by digest. The report is built from
the snapshot, not the live store, so what is signed is exactly what was read.
`verify_bundle` trusts nothing in the directory except what the signature covers.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError

from auditor.errors import AuditorError
from auditor.report import intoto
from auditor.report.model import ReportDoc, ReportParams, build_report
from auditor.report.render_html import render_html
from auditor.report.render_junit import render_junit
from auditor.report.render_sarif import render_sarif
from auditor.rules import Pack
from auditor.store.base import Store, open_store
from auditor.store.chain import canonical_json

FORMATS = ("html", "json", "sarif", "junit", "intoto")
FILE_NAMES = {
    "html": "report.html",
    "json": "report.json",
    "sarif": "report.sarif",
    "junit": "report.junit.xml",
}
ENVELOPE_NAME = "attestation.intoto.dsse.json"
STORE_SNAPSHOT = "evidence.db"
CHAIN_HEADS = "chain-heads.json"


class ReportOutcome(BaseModel):
    status: str
    reason: str
    exit_code: int
    findings: int
    out_dir: Path
    files: dict[str, Path] = Field(default_factory=dict)
    signing_key_id: str | None = None


class VerifyOutcome(BaseModel):
    ok: bool
    lines: list[str] = Field(default_factory=list)


def parse_formats(text: str | None, signing: bool) -> list[str]:
    """Default: every format; the signed attestation when a key is given."""
    if not text:
        return [f for f in FORMATS if f != "intoto" or signing]
    wanted = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise AuditorError(f"unknown report format {', '.join(unknown)}", fix=f"use a comma-separated list of {','.join(FORMATS)}")
    if "intoto" in wanted and not signing:
        raise AuditorError("the in-toto attestation must be signed", fix="add --sign KEY (create one with `auditor keys generate --out DIR`)")
    return list(dict.fromkeys(wanted))


def parse_min_coverage(value: str | float | None) -> Decimal:
    if value is None:
        from auditor.report.model import DEFAULT_MIN_COVERAGE  # noqa: PLC0415

        return DEFAULT_MIN_COVERAGE
    text = str(value).strip()
    try:
        number = Decimal(text[:-1]) / 100 if text.endswith("%") else Decimal(text)
    except InvalidOperation:
        raise AuditorError(f"--min-coverage {value!r} is not a number", fix="write a share such as 0.95 or 95%") from None
    if not Decimal(0) <= number <= Decimal(1):
        raise AuditorError(f"--min-coverage {value!r} is outside 0..1", fix="write a share such as 0.95 or 95%")
    return number


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sqlite_path(url: str) -> Path | None:
    if url.startswith(("postgresql://", "postgres://")):
        return None
    return Path(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url)


def snapshot_store(url: str, dest: Path) -> bool:
    """A consistent copy of a SQLite store (the online backup API works under live
    writers); False for stores that are not a file."""
    source = _sqlite_path(url)
    if source is None:
        return False
    if not source.exists():
        raise AuditorError("no such evidence store", file=str(source), fix="pass the --store a sensor or `auditor ingest` wrote")
    for stale in (dest, dest.with_name(dest.name + "-wal"), dest.with_name(dest.name + "-shm")):
        stale.unlink(missing_ok=True)  # a stale WAL beside a fresh copy would be replayed into it
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    except sqlite3.DatabaseError as exc:
        raise AuditorError(f"the store cannot be read as SQLite ({exc})", file=str(source), fix="pass an evidence store file") from None
    finally:
        src.close()
        dst.close()
    return True


def _predicate(doc: ReportDoc) -> dict[str, Any]:
    cov = doc.coverage
    return {
        "reportId": doc.identity.report_id,
        "generatedAt": doc.identity.generated_at.isoformat(),
        "tool": {"name": doc.identity.tool, "version": doc.identity.tool_version},
        "verdict": {"status": doc.verdict.status, "reason": doc.verdict.reason, "reasons": doc.verdict.reasons},
        "coverage": {
            "score": cov.score.model_dump() if cov.score else None,
            "scoreBasis": cov.score_basis,
            "threshold": cov.threshold,
            "meetsThreshold": cov.meets_threshold,
            "proxyAvailable": cov.proxy_available,
            "probeAvailable": cov.probe_available,
            "proxyMatchedShare": cov.proxy_matched_share.model_dump() if cov.proxy_matched_share else None,
            "inspectedShare": cov.inspected_share.model_dump() if cov.inspected_share else None,
            "unverifiedEvents": cov.unverified_events,
            "drops": cov.drops,
            "gaps": cov.gaps,
        },
        "window": {
            "start": doc.scope.window_start.isoformat() if doc.scope.window_start else None,
            "end": doc.scope.window_end.isoformat() if doc.scope.window_end else None,
        },
        "pack": {
            "id": doc.identity.pack_id,
            "digest": doc.identity.pack_digest,
            "sources": [s.model_dump() for s in doc.identity.pack_sources],
        },
        "store": doc.identity.parameters.get("store"),
        "chains": {
            "ok": doc.integrity.chains_ok,
            "records": doc.integrity.records,
            "heads": [c.model_dump() for c in doc.integrity.chains],
        },
        "findings": len(doc.findings),
        "signingKeyId": doc.integrity.signing_key_id,
    }


def make_report(
    store_url: str,
    out_dir: Path,
    pack: Pack,
    *,
    formats: list[str],
    since: datetime | None = None,
    until: datetime | None = None,
    min_coverage: Decimal | None = None,
    sign_key: Path | None = None,
    pack_path: str | None = None,
    overlays: list[str] | None = None,
    store_view: Callable[[Store], Store] | None = None,
) -> ReportOutcome:
    """Snapshot the store, build the document from the snapshot, render each
    format, then sign the statement over all of it. `store_view` wraps the store as the
    report reads it (e.g. sources attributed with an inventory); the records are unchanged."""
    if since is not None and until is not None and since >= until:
        raise AuditorError(f"the window is empty: --since {since.isoformat()} is not before --until {until.isoformat()}",
                           fix="give --since an earlier time than --until")
    private_key = intoto.load_private_key(sign_key) if sign_key else None
    key_id = intoto.key_id(private_key.public_key()) if private_key else None
    out_dir.mkdir(parents=True, exist_ok=True)
    signing = "intoto" in formats
    snapshot = out_dir / STORE_SNAPSHOT
    read_url = store_url
    if signing and snapshot_store(store_url, snapshot):
        read_url = str(snapshot)
    local = _sqlite_path(read_url)
    if local is not None and not local.exists():
        raise AuditorError("no such evidence store", file=read_url, fix="pass the --store a sensor or `auditor ingest` wrote")
    params = ReportParams(
        store_url=store_url, since=since, until=until,
        min_coverage=min_coverage if min_coverage is not None else parse_min_coverage(None),
        pack_path=pack_path, overlays=list(overlays or []), formats=list(formats), signing_key_id=key_id,
    )
    store = open_store(read_url, create=False)
    try:
        doc = build_report(store_view(store) if store_view else store, pack, params)
    finally:
        store.close()

    files = {f: out_dir / FILE_NAMES[f] for f in ("json", "html", "sarif", "junit") if f in formats or (f == "json" and signing)}
    with _collector_paused():
        _write_all(doc, files)
    if signing and private_key is not None:
        if read_url == str(snapshot):
            files["store"] = snapshot
        else:
            heads = out_dir / CHAIN_HEADS
            heads.write_bytes(canonical_json([c.model_dump() for c in doc.integrity.chains]))
            files["store"] = heads
        subjects = [intoto.Subject(name=p.name, digest={"sha256": _sha256_file(p)}) for p in files.values()]
        statement = intoto.Statement(subject=subjects, predicate=_predicate(doc))
        envelope = intoto.sign(statement, private_key)
        files["intoto"] = out_dir / ENVELOPE_NAME
        files["intoto"].write_text(envelope.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return ReportOutcome(
        status=doc.verdict.status, reason=doc.verdict.reason, exit_code=doc.verdict.exit_code,
        findings=len(doc.findings), out_dir=out_dir, files=files, signing_key_id=key_id,
    )


def _write(doc: ReportDoc, fmt: str, path: Path) -> None:
    """One format of the document into its file."""
    if fmt == "json":
        path.write_bytes(doc.canonical())
    elif fmt == "html":
        path.write_text(render_html(doc), encoding="utf-8")
    elif fmt == "sarif":
        path.write_bytes(orjson.dumps(render_sarif(doc), option=orjson.OPT_APPEND_NEWLINE))  # compact: SARIF is read by tools
    else:
        path.write_text(render_junit(doc), encoding="utf-8")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Rendering makes millions of short-lived dicts and strings (no cycles) while the
    document stays alive: the cyclic collector would walk the whole document again and
    again for nothing, half the rendering time of a large report."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


FORK_RENDER_ABOVE = 1_000  # findings; below this rendering takes less than starting a process


def _write_all(doc: ReportDoc, files: dict[str, Path]) -> None:
    """Each format from the one document. For a large report the HTML and SARIF are
    written by a forked copy of this process while this one writes the rest: they
    share nothing but the document, and the machine may have a second core. What the
    child did not write is written here."""
    forked = {f: p for f, p in files.items() if f in ("html", "sarif")}
    pid = _fork() if forked and len(doc.findings) > FORK_RENDER_ABOVE else None
    if pid == 0:  # the child: write, and leave without running the parent's exit handlers
        code = 0
        try:
            for fmt, path in forked.items():
                _write(doc, fmt, path)
        except BaseException:  # noqa: BLE001 - the parent writes them itself
            code = 1
        os._exit(code)
    try:
        for fmt, path in files.items():
            if pid is None or fmt not in forked:
                _write(doc, fmt, path)
    finally:
        status = os.waitpid(pid, 0)[1] if pid else 0
    if status != 0:
        for fmt, path in forked.items():
            _write(doc, fmt, path)


def _fork() -> int | None:
    """`os.fork()`, or None where a process cannot be forked, or should not be: one that
    runs other threads (a fork copies only this one, and any lock they hold)."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    try:
        return os.fork()
    except OSError:
        return None


def verify_bundle(bundle_dir: Path, key: Path | None) -> VerifyOutcome:
    """Signature, then every signed subject against the file beside it, then the
    store's chains against the heads the signed statement recorded. Every problem
    is named; nothing unsigned is believed."""
    lines: list[str] = []
    ok = True
    if not bundle_dir.is_dir():
        raise AuditorError("not a report bundle directory", file=str(bundle_dir), fix="pass the --out directory of `auditor report`")
    env_path = bundle_dir / ENVELOPE_NAME
    if not env_path.exists():
        return VerifyOutcome(ok=False, lines=[f"FAIL no signed attestation: {ENVELOPE_NAME} is missing (make the report with --sign KEY)"])
    try:
        envelope = intoto.Envelope.model_validate_json(env_path.read_bytes())
    except ValidationError as exc:
        return VerifyOutcome(ok=False, lines=[f"FAIL {ENVELOPE_NAME} is not a DSSE envelope: {exc.errors()[0]['msg']}"])

    statement: intoto.Statement | None
    if key is None:
        ok = False
        lines.append("FAIL signature not checked: no public key given (pass --key auditor-signing.pub)")
        try:
            statement = intoto.Statement.model_validate_json(envelope.payload_bytes())
        except (ValidationError, ValueError):
            return VerifyOutcome(ok=False, lines=[*lines, f"FAIL {ENVELOPE_NAME}: the payload is not an in-toto statement"])
    else:
        public_key = intoto.load_public_key(key)
        checked = intoto.verify_envelope(envelope, public_key)
        if not checked.ok:
            return VerifyOutcome(ok=False, lines=[f"FAIL signature: {checked.reason} ({ENVELOPE_NAME} was altered or signed by another key)"])
        statement = checked.statement
        lines.append(f"OK   signature: Ed25519 key {intoto.key_id(public_key)[:16]}… signed this statement")
    assert statement is not None

    covered: set[str] = set()
    store_ok_to_open = False
    for subject in statement.subject:
        name = subject.name
        covered.add(name)
        if Path(name).name != name or name in ("", ".", ".."):
            ok = False
            lines.append(f"FAIL subject {name!r} is not a file name in the bundle")
            continue
        path = bundle_dir / name
        expected = subject.digest.get("sha256")
        if not path.is_file():
            ok = False
            lines.append(f"FAIL {name}: missing from the bundle")
            continue
        actual = _sha256_file(path)
        if actual != expected:
            ok = False
            lines.append(f"FAIL {name}: tampered: sha256 {actual[:16]}… but the statement signed {str(expected)[:16]}…")
            continue
        lines.append(f"OK   {name}: sha256 {actual[:16]}… matches")
        if name == STORE_SNAPSHOT:
            store_ok_to_open = True
    for extra in sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name not in covered and p.name != ENVELOPE_NAME):
        lines.append(f"NOTE {extra}: not covered by the signature (ignored)")

    heads = statement.predicate.get("chains", {}).get("heads", [])
    if store_ok_to_open:
        chain_ok, chain_lines = _verify_store_copy(bundle_dir / STORE_SNAPSHOT, heads)
        ok = ok and chain_ok
        lines.extend(chain_lines)
    elif STORE_SNAPSHOT not in covered:
        lines.append(
            "NOTE the store is not in the bundle (not a SQLite file); run `auditor verify --store URL` to check its chains "
            f"against the {len(heads)} signed chain heads"
        )
    verdict = statement.predicate.get("verdict", {})
    lines.append(f"{'OK  ' if ok else 'FAIL'} bundle {'verifies' if ok else 'does not verify'}; signed verdict {verdict.get('status')}: {verdict.get('reason')}")
    return VerifyOutcome(ok=ok, lines=lines)


def _verify_store_copy(snapshot: Path, signed_heads: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """Recompute the chains on a private copy: opening SQLite may touch the file,
    and the bundle must stay byte-identical to what was signed."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="auditor-verify-") as tmp:
        copy = Path(tmp) / STORE_SNAPSHOT
        shutil.copyfile(snapshot, copy)
        try:
            store = open_store(str(copy), create=False)
        except sqlite3.DatabaseError as exc:
            return False, [f"FAIL {STORE_SNAPSHOT}: not readable as an evidence store ({exc})"]
        try:
            result = store.verify()
        finally:
            store.close()
    ok = result.ok
    for problem in result.problems:
        lines.append(f"FAIL store chain: {problem.line()}")
    actual = {h.sensor_id: h for h in result.chains}
    for head in signed_heads:
        got = actual.get(head.get("sensor_id", ""))
        if got is None:
            ok = False
            lines.append(f"FAIL store chain {head.get('sensor_id')}: signed but absent from the store")
        elif (got.count, got.head_seq, got.head_hash) != (head.get("count"), head.get("head_seq"), head.get("head_hash")):
            ok = False
            lines.append(f"FAIL store chain {got.sensor_id}: head #{got.head_seq} differs from the signed head #{head.get('head_seq')}")
        else:
            lines.append(f"OK   store chain {got.sensor_id}: {got.count} records, head #{got.head_seq} {got.head_hash[:16]}… as signed")
    for sensor_id in sorted(set(actual) - {h.get("sensor_id") for h in signed_heads}):
        ok = False
        lines.append(f"FAIL store chain {sensor_id}: present in the store but not in the signed statement")
    return ok, lines
