"""`auditor check`: judge what a store holds against a pack and say what was found.

The findings are chained into the store under the `check` sensor, so what a
check concluded is itself evidence.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import BaseModel, Field

from auditor.model import Finding
from auditor.rules import Pack, group_findings, judge
from auditor.store.base import Store

CHECK_SENSOR = "check"


class CheckResult(BaseModel):
    events: int = 0
    judged: int = 0
    actions: dict[str, int] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    chain_ok: bool = True
    chain_problems: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 for any violation or a broken chain; 2 when something could not be
        verified or nothing was seen at all; 0 only for a clean, complete record."""
        if self.actions.get("violation") or not self.chain_ok:
            return 1
        if self.actions.get("unverified") or not self.judged:
            return 2
        return 0


def run_check(
    store: Store, pack: Pack, *, since: datetime | None = None, until: datetime | None = None, record: bool = True
) -> CheckResult:
    verified = store.verify()
    events = list(judge(store.events(since, until), pack))
    actions = Counter(e.decision.action for e in events if e.decision is not None)
    findings = group_findings(events, pack)
    if record and findings:
        store.append_findings(CHECK_SENSOR, findings)
    return CheckResult(
        events=len(events),
        judged=sum(actions.values()),
        actions=dict(actions),
        findings=findings,
        chain_ok=verified.ok,
        chain_problems=[p.line() for p in verified.problems],
    )
