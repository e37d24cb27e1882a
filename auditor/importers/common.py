"""Format detection and the one loop every importer shares: parse, count, batch, store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from auditor.errors import AuditorError
from auditor.k8s.attribute import attribute, inventory_from_file
from auditor.model import EgressEvent, sensor_event
from auditor.store.base import open_store

Format = Literal["auto", "har", "zeek", "hubble", "mitm", "pcap"]
BATCH = 1_000
MAX_PROBLEMS_SHOWN = 50


class ImportResult(BaseModel):
    format: str
    sensor_id: str
    imported: int = 0
    rejected: int = 0
    problems: list[str] = Field(default_factory=list)


class Rejected(Exception):
    """One record the importer could not read; the rest go on."""


Parsed = Iterator[EgressEvent | Rejected]


def detect_format(path: Path) -> Format:
    name = path.name.lower()
    if name.endswith((".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz", ".cap")):
        return "pcap"
    if name.endswith((".mitm", ".flows", ".dump")):
        return "mitm"
    if name.endswith(".har"):
        return "har"
    with path.open("rb") as fh:
        head = fh.read(65536)
    if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x0a\x0d\x0d\x0a", b"\x4d\x3c\xb2\xa1") or head[:2] == b"\x1f\x8b":
        return "pcap"
    text = head.decode("utf-8", "replace").lstrip()
    if text.startswith("{") and '"log"' in text[:200] and '"entries"' in text:
        return "har"
    first = text.splitlines()[0] if text else ""
    try:
        doc = json.loads(first)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        if "flow" in doc or ("IP" in doc and "verdict" in doc):
            return "hubble"
        if "uid" in doc and ("id.orig_h" in doc or "id" in doc):
            return "zeek"
        if "sensor_id" in doc and "kind" in doc:
            raise AuditorError("this is an EgressEvent JSONL file", file=str(path), fix="use `auditor ingest` for it")
    if text.startswith("#separator"):
        raise AuditorError(
            "Zeek TSV logs are not read", file=str(path), fix="write Zeek logs as JSON (LogAscii::use_json=T)"
        )
    raise AuditorError(
        "cannot tell the format of this file", file=str(path), fix="pass --format har|zeek|hubble|mitm|pcap"
    )


def _parser(fmt: Format) -> Callable[[list[Path], str], Parsed]:
    if fmt == "har":
        from auditor.importers.har import parse_har

        return parse_har
    if fmt == "zeek":
        from auditor.importers.zeek import parse_zeek

        return parse_zeek
    if fmt == "hubble":
        from auditor.importers.hubble import parse_hubble

        return parse_hubble
    if fmt == "mitm":
        from auditor.importers.mitm import parse_mitm

        return parse_mitm
    if fmt == "pcap":
        from auditor.importers.pcap import parse_pcap

        return parse_pcap
    raise AuditorError(f"unknown import format {fmt!r}", fix="use har, zeek, hubble, mitm or pcap")


def import_file(
    paths: list[Path], store_url: str, fmt: Format = "auto", sensor_id: str | None = None, inventory: Path | None = None
) -> ImportResult:
    """Zeek logs come as several files (conn, dns, ssl) joined by uid, so an import
    takes a list; other formats take one file each. With an inventory snapshot
    (`auditor k8s snapshot`), each event's source is attributed to the pod or node
    that held its IP at the event's time."""
    for path in paths:
        if not path.is_file():
            raise AuditorError("no such file", file=str(path), fix="check the path")
    kind = detect_format(paths[0]) if fmt == "auto" else fmt
    held = inventory_from_file(inventory) if inventory is not None else None
    sid = sensor_id or f"import-{kind}-{paths[0].stem}"
    result = ImportResult(format=kind, sensor_id=sid)
    store = open_store(store_url, make_parents=False)  # a typo'd directory is an error, not made
    batch: list[EgressEvent] = [
        sensor_event(sid, "start", detail=f"import of {', '.join(p.name for p in paths)} as {kind}")
    ]
    try:
        for item in _parser(kind)(paths, sid):
            if isinstance(item, Rejected):
                result.rejected += 1
                if len(result.problems) < MAX_PROBLEMS_SHOWN:
                    result.problems.append(str(item))
                continue
            batch.append(attribute(item, held) if held is not None else item)
            result.imported += 1
            if len(batch) >= BATCH:
                store.append(batch)
                batch = []
        batch.append(
            sensor_event(sid, "stop", dropped=result.rejected, detail=f"{result.imported} imported, {result.rejected} rejected")
        )
        store.append(batch)
    finally:
        store.close()
    if result.rejected > len(result.problems):
        result.problems.append(f"{result.rejected - len(result.problems)} more rejected records not shown")
    return result
