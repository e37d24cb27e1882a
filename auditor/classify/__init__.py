"""The payload classifier: is this body the metadata the contract allows, or something else?

    from auditor.classify import classify, IncrementalScanner, Limits
    info = classify(body, method="PATCH", path="/projects/models?uid=x&type=train",
                    host="api.gretel.cloud", content_type="application/json")

`load_context(fingerprints=..., key_file=..., canaries=...)` adds a site's dataset
fingerprints and canary tokens. Redaction lives in `auditor.redact`, shared with every sensor and the report.
"""

from __future__ import annotations

from pathlib import Path

from auditor.classify.canary import CanarySet
from auditor.classify.canary import load as load_canaries
from auditor.classify.decode import Limits
from auditor.classify.engine import VIOLATION_LABELS, ClassifyContext, classify
from auditor.classify.fingerprint import FingerprintSet
from auditor.classify.fingerprint import load as load_fingerprints
from auditor.classify.stream import IncrementalScanner


def load_context(fingerprints: Path | None = None, key_file: Path | None = None, canaries: Path | None = None) -> ClassifyContext:
    """Fingerprints need the key they were made with; canaries need the token list."""
    from auditor.errors import AuditorError

    fps = None
    if fingerprints is not None:
        if key_file is None:
            raise AuditorError("fingerprints need the key they were made with", file=str(fingerprints), fix="add --key-file K")
        fps = load_fingerprints(fingerprints, key_file)
    return ClassifyContext(fingerprints=fps, canaries=load_canaries(canaries) if canaries is not None else None)


__all__ = [
    "VIOLATION_LABELS",
    "CanarySet",
    "ClassifyContext",
    "FingerprintSet",
    "IncrementalScanner",
    "Limits",
    "classify",
    "load_context",
]
