"""pcap and pcapng files (gzip'd or not), through the probe: the same dissection,
flows, DNS provenance and exfiltration signs as a live capture."""

from __future__ import annotations

from pathlib import Path

from auditor.errors import AuditorError
from auditor.importers.common import Parsed, Rejected
from auditor.probe.engine import ProbeConfig
from auditor.probe.runner import events_from_pcap


def parse_pcap(paths: list[Path], sensor_id: str) -> Parsed:
    """The probe counts and records malformed packets itself (as `malformed`
    observations and drop records); a capture it cannot read on is recorded as
    its `error` record and counted as rejected. The probe's own start/stop are
    left out: the import chains its own."""
    try:
        for event in events_from_pcap(paths[0], config=ProbeConfig(sensor_id=sensor_id)):
            if event.sensor is not None and event.sensor.lifecycle in ("start", "stop"):
                continue
            yield event
            if event.sensor is not None and event.sensor.lifecycle == "error":
                yield Rejected(f"{paths[0]}: {event.sensor.detail} (fix: the capture is truncated or damaged)")
    except (ValueError, OSError) as exc:
        raise AuditorError(f"not a readable capture: {exc}", file=str(paths[0]), fix="give a pcap or pcapng file") from None
