"""What two classification paths must agree on, for the tests that hold a fast path to a slow one."""

from __future__ import annotations

from auditor.model import PayloadInfo


def verdict(info: PayloadInfo, *, in_order: bool = True) -> tuple[object, ...]:
    """Labels, kinds, inspection and findings (without offsets); `in_order=False` where
    two paths may find the same things in another order."""
    findings = [(f.detector, f.label, f.likelihood, f.field_path or "", f.count, f.excerpt or "") for f in info.findings]
    return (info.labels, info.metadata_kinds, info.inspected, info.not_inspected_reason, findings if in_order else sorted(findings))
