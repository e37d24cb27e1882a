"""Rich tables a person reads; machine output is JSON and lives with each command."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from auditor.model import SEVERITY_ORDER, Finding

_SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan", "info": "dim"}


def findings_table(findings: Sequence[Finding], limit: int = 50) -> Table:
    ordered = sorted(findings, key=lambda f: (-SEVERITY_ORDER[f.severity], f.rule_id, f.destination))
    table = Table(title=f"Findings ({len(findings)})", show_lines=False)
    for col in ("severity", "decision", "rule", "destination", "count", "first seen"):
        table.add_column(col, overflow="fold")
    for f in ordered[:limit]:
        table.add_row(
            Text(f.severity, style=_SEVERITY_STYLE[f.severity]),
            Text(f.action),
            Text(f.rule_id),
            Text(f.destination),  # traffic-derived: never rich markup
            Text(str(f.count)),
            Text(f.first_seen.strftime("%Y-%m-%d %H:%M:%SZ")),
        )
    if len(ordered) > limit:
        table.caption = f"{len(ordered) - limit} more findings: use --json for all"
    else:
        table.caption = "messages, evidence and remediation: --json, or the report"
    return table
