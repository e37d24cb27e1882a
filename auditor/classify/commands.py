"""What `auditor classify`, `auditor fingerprint` and `auditor canary` do, so the CLI only parses and prints."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from auditor.classify import IncrementalScanner, load_context
from auditor.classify.canary import CanaryResult, make
from auditor.classify.engine import VIOLATION_LABELS, classify
from auditor.classify.fingerprint import BuildResult, build
from auditor.classify.routes import split_route
from auditor.errors import AuditorError
from auditor.model import PayloadInfo


STREAM_OVER = 64 << 20  # bigger files are scanned as a stream, never read whole


def classify_file(
    file: Path,
    *,
    route: str | None = None,
    host: str | None = None,
    content_type: str | None = None,
    encoding: str | None = None,
    fingerprints: Path | None = None,
    key_file: Path | None = None,
    canaries: Path | None = None,
) -> PayloadInfo:
    """Classify a body saved in a file, as if sent on `route` ('POST /v1/workflows')."""
    method = path = None
    if route:
        try:
            method, path = split_route(route)
        except ValueError as exc:
            raise AuditorError(str(exc), fix="--route 'POST /v1/workflows'") from None
    ctx = load_context(fingerprints=fingerprints, key_file=key_file, canaries=canaries)
    try:
        if file.stat().st_size <= STREAM_OVER:
            body = file.read_bytes()
            return classify(body, method=method, path=path, host=host, content_type=content_type, content_encoding=encoding, context=ctx)
        scanner = IncrementalScanner(method=method, path=path, host=host, content_type=content_type, content_encoding=encoding, context=ctx, whole_cap=0)
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                scanner.feed(chunk)
        return scanner.finish()
    except IsADirectoryError:
        raise AuditorError("is a directory, not a body", file=str(file)) from None
    except OSError as exc:
        raise AuditorError(f"cannot read body: {exc.strerror}", file=str(file)) from None


def exit_code(info: PayloadInfo) -> int:
    """1 when a violation label is present, 2 when only not inspected or unrecognised, else 0."""
    if set(info.labels) & VIOLATION_LABELS:
        return 1
    if not info.inspected or "unrecognised-route" in info.labels:
        return 2
    return 0


def summary_table(info: PayloadInfo) -> Table:
    table = Table(title="findings", show_lines=False)
    for col in ("label", "likelihood", "detector", "field", "offset", "count", "excerpt (redacted)"):
        table.add_column(col, overflow="fold")
    for f in info.findings:
        table.add_row(f.label, f.likelihood, f.detector, f.field_path or "-", "-" if f.offset is None else str(f.offset), str(f.count), f.excerpt or "")
    return table


def summary_lines(info: PayloadInfo) -> list[str]:
    return [
        f"route: {info.route or '(none recognised)'}",
        f"size: {info.size} bytes, sha256 {info.sha256}",
        f"labels: {', '.join(info.labels) or '(none)'}",
        f"metadata kinds: {', '.join(info.metadata_kinds) or '(none)'}",
        f"inspected: {'yes' if info.inspected else 'NO'}" + (f" ({info.not_inspected_reason})" if info.not_inspected_reason else ""),
    ]


def fingerprint(data: Path, out: Path, key_file: Path) -> BuildResult:
    if not data.exists():
        raise AuditorError("no such data set", file=str(data))
    if data.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet"):
        raise AuditorError(f"unsupported data set type {data.suffix!r}", file=str(data), fix="use .csv, .tsv, .jsonl or .parquet")
    return build(data, out, key_file)


def canary(count: int, fmt: str, out: Path | None, tokens: Path | None) -> CanaryResult:
    return make(count, fmt, out, tokens)
