"""Fill an event's `Source` from the inventory: the pod (or node) that held the client IP
at the time the flow began. Sensors call it live; importers call it after the fact with
an inventory loaded from a snapshot file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from auditor.errors import AuditorError
from auditor.k8s.inventory import Inventory, load_snapshot
from auditor.model import EgressEvent, Source

MAX_PROBLEMS_SHOWN = 50


def event_time(event: EgressEvent) -> datetime:
    """When the connection began: the flow's first packet if known, else the event's time."""
    if event.flow is not None and event.flow.first_seen is not None:
        return event.flow.first_seen
    return event.time


def attribute(event: EgressEvent, inventory: Inventory) -> EgressEvent:
    """A copy of `event` whose Source names the pod/node holding `source.ip` then.

    Fields the sensor already knew are kept when the inventory knows nothing better;
    what is uncertain (IP reuse inferred, API gap, host-network pods sharing a node IP)
    goes to `notes`. Lifecycle records and events without a source IP pass unchanged.
    """
    if event.kind == "sensor" or not event.source.ip:
        return event
    res = inventory.resolve(event.source.ip, event_time(event))
    fields = dict(event.source.__dict__)  # built without validation: every value comes from a valid model
    if res.scope != "unknown":
        fields["scope"] = res.scope
    holding = res.holding
    if holding is not None and holding.kind == "pod":
        fields.update(pod=holding.name, namespace=holding.namespace, workload=holding.workload, node=holding.node)
    elif res.scope == "node":
        fields.update(pod=None, namespace=None, workload=None, node=res.node or fields["node"])
    source = Source.model_construct(**fields)
    notes = list(event.notes)
    for note in res.notes:
        if note not in notes:
            notes.append(note)
    if event.flow is not None and event.flow.direction == "inbound" and event.destination.ip:
        target = inventory.resolve(event.destination.ip, event_time(event))
        if target.holding is not None:
            name = f"{target.holding.namespace}/{target.holding.name}" if target.holding.namespace else target.holding.name
            note = f"inbound to {target.holding.kind} {name}"
            if note not in notes:
                notes.append(note)
    return event.model_copy(update={"source": source, "notes": notes})


def attribute_all(events: Iterable[EgressEvent], inventory: Inventory) -> Iterator[EgressEvent]:
    for event in events:
        yield attribute(event, inventory)


def inventory_from_file(path: Path) -> Inventory:
    """The inventory an importer attributes with: a file from `auditor k8s snapshot`."""
    return Inventory.from_snapshot(load_snapshot(path))


class AttributeResult(BaseModel):
    events: int = 0
    to_pods: int = 0
    to_nodes: int = 0
    rejected: int = 0
    problems: list[str] = Field(default_factory=list)


def attribute_jsonl(events_file: Path, snapshot: Path, out: Path) -> AttributeResult:
    """Attribute an EgressEvent JSONL file (before `auditor ingest`) with a saved snapshot;
    every bad line is reported with its number and the rest go on."""
    inventory = inventory_from_file(snapshot)
    if not events_file.is_file():
        raise AuditorError("no such events file", file=str(events_file), fix="give a JSON lines file of EgressEvents")
    result = AttributeResult()
    with events_file.open("rb") as src, out.open("w") as dst:
        for lineno, raw in enumerate(src, start=1):
            if not raw.strip():
                continue
            try:
                event = EgressEvent.model_validate_json(raw)
            except ValidationError as exc:
                result.rejected += 1
                if len(result.problems) < MAX_PROBLEMS_SHOWN:
                    first = exc.errors(include_url=False)[0]
                    where = ".".join(str(p) for p in first["loc"]) or "line"
                    result.problems.append(f"{events_file}:{lineno}: {where}: {first['msg']} (fix: each line must be one EgressEvent as JSON)")
                continue
            done = attribute(event, inventory)
            result.events += 1
            result.to_pods += done.source.pod is not None
            result.to_nodes += done.source.pod is None and done.source.node is not None
            dst.write(done.model_dump_json(exclude_none=False) + "\n")
    return result
