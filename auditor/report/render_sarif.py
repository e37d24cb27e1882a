"""SARIF 2.1.0: each finding is a result, located at the rule pack file (the rule
it breaks) and at `k8s://namespace/workload` (who did it), so code-scanning
dashboards can show boundary findings beside everything else."""

from __future__ import annotations

from typing import Any

from auditor.report.model import FindingEntry, ReportDoc

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFO_URI = "https://github.com/boundary-auditor/boundary-auditor"
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
_SCORE = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}


def _pack_uri(doc: ReportDoc) -> str:
    pack = next((s for s in doc.identity.pack_sources if s.kind == "pack"), None)
    return pack.path if pack else "rules/gretel-hybrid.yaml"


def _rule(f: FindingEntry) -> dict[str, Any]:
    return {
        "id": f.rule_id,
        "name": f.rule_id.replace(".", "-"),
        "shortDescription": {"text": f.message[:200] or f.rule_id},
        "fullDescription": {"text": f"{f.message} Contract: {f.contract}".strip()},
        "help": {"text": f.remediation or "See the rule pack."},
        "defaultConfiguration": {"level": _LEVEL[f.severity]},
        "properties": {
            "tags": ["data-boundary", *f.controls],
            "security-severity": _SCORE[f.severity],
            "severity": f.severity,
            "controls": list(f.controls),
        },
    }


def _result(f: FindingEntry, rule_index: int, pack_uri: str) -> dict[str, Any]:
    locations: list[dict[str, Any]] = [
        {"physicalLocation": {"artifactLocation": {"uri": loc}}, "message": {"text": "workload that sent the traffic"}}
        for loc in f.locations[:5]
    ]
    locations.append({"physicalLocation": {"artifactLocation": {"uri": pack_uri, "uriBaseId": "PACK"}},
                      "message": {"text": f"rule {f.rule_id}"}})
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "kind": "fail" if f.action == "violation" else "review",
        "level": _LEVEL[f.severity] if f.action == "violation" else "warning",
        "message": {"text": f"{f.message} Destination: {f.destination}; {f.count} events from {f.first_seen.isoformat()} to {f.last_seen.isoformat()}."},
        "locations": locations,
        "partialFingerprints": {"ruleDestination/v1": f"{f.rule_id}|{f.destination}"},
        "properties": {
            "action": f.action,
            "severity": f.severity,
            "likelihood": f.likelihood,
            "destination": f.destination,
            "count": f.count,
            "firstSeen": f.first_seen.isoformat(),
            "lastSeen": f.last_seen.isoformat(),
            "eventIds": list(f.event_ids),
            "excerpts": list(f.excerpts),
            "requests": list(f.requests),
            "sources": list(f.sources),
            "controls": list(f.controls),
        },
    }


def render_sarif(doc: ReportDoc) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for f in doc.findings:
        if f.rule_id not in index:
            index[f.rule_id] = len(rules)
            rules.append(_rule(f))
    pack_uri = _pack_uri(doc)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "boundary-auditor",
                        "version": doc.identity.tool_version,
                        "informationUri": INFO_URI,
                        "rules": rules,
                    }
                },
                "automationDetails": {"id": f"boundary-auditor/{doc.identity.report_id}"},
                "originalUriBaseIds": {"PACK": {"description": {"text": f"Rule pack {doc.identity.pack_id} ({doc.identity.pack_digest})"}}},
                "invocations": [
                    {
                        "executionSuccessful": doc.integrity.chains_ok,
                        "exitCode": doc.verdict.exit_code,
                        "exitCodeDescription": doc.verdict.status,
                        "toolExecutionNotifications": [
                            {"level": "error" if doc.verdict.status == "FAIL" else "warning", "message": {"text": r}}
                            for r in doc.verdict.reasons
                            if doc.verdict.status != "PASS"
                        ],
                    }
                ],
                "results": [_result(f, index[f.rule_id], pack_uri) for f in doc.findings],
                "properties": {
                    "verdict": doc.verdict.status,
                    "reason": doc.verdict.reason,
                    "coverage": doc.coverage.score.percent if doc.coverage.score else None,
                    "packDigest": doc.identity.pack_digest,
                    "windowStart": doc.scope.window_start.isoformat() if doc.scope.window_start else None,
                    "windowEnd": doc.scope.window_end.isoformat() if doc.scope.window_end else None,
                },
            }
        ],
    }
