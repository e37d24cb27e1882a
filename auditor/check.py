"""`auditor check`: judge what a store holds against a pack and say what was found.

The findings are chained into the store under the `check` sensor, so what a check
concluded is itself evidence. A finding the chain already holds unchanged is not
chained again: checking the same evidence twice records it once, and a changed
result is recorded. A signed report bundle's snapshot is only ever read: a byte
written into it would break the signature that makes it evidence.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from auditor.errors import AuditorError
from auditor.model import Finding
from auditor.rules import Pack, group_findings, judge
from auditor.store.base import Store, open_store, open_store_read_only, sqlite_path
from auditor.store.chain import canonical_json

CHECK_SENSOR = "check"
# auditor.report.bundle.ENVELOPE_NAME, named here because importing that module costs a
# check 0.2 s; tests/test_cli_evidence.py holds the two equal
BUNDLE_ENVELOPE = "attestation.intoto.dsse.json"


class CheckResult(BaseModel):
    events: int = 0
    judged: int = 0
    actions: dict[str, int] = Field(default_factory=dict)
    findings: list[Finding] = Field(default_factory=list)
    chain_ok: bool = True
    chain_problems: list[str] = Field(default_factory=list)
    recorded: int = 0  # findings this check chained
    unchanged: int = 0  # findings the check chain already held as they are (their ids are the chained ones)
    not_recorded: str | None = None  # why this check wrote nothing, when it was not to

    @property
    def exit_code(self) -> int:
        """1 for any violation or a broken chain; 2 when something could not be
        verified or nothing was seen at all; 0 only for a clean, complete record."""
        if self.actions.get("violation") or not self.chain_ok:
            return 1
        if self.actions.get("unverified") or not self.judged:
            return 2
        return 0


def signed_bundle_of(url: str) -> Path | None:
    """The bundle directory when the store is a file beside a signed attestation: a report
    bundle's snapshot, whose every byte the signature covers. None otherwise."""
    path = sqlite_path(url)
    if path is None or not (path.parent / BUNDLE_ENVELOPE).is_file():
        return None
    return path.parent


def refuse_bundle(url: str, doing: str) -> None:
    """Writing into a signed bundle's snapshot is refused, whoever asks."""
    bundle = signed_bundle_of(url)
    if bundle is not None:
        raise AuditorError(
            f"the evidence of the signed report bundle {bundle} is read, never written: {doing} would break its signature",
            file=url,
            fix=f"write into a copy instead: auditor store copy {url} my-evidence.db",
        )


def check_store(
    url: str, pack: Pack, *, since: datetime | None = None, until: datetime | None = None,
    record: bool | None = None, create: bool = False,
) -> CheckResult:
    """Open, judge, close. `record` None: chain the findings unless the store is a signed
    bundle's snapshot, which is opened read-only and left byte for byte as signed; True:
    chain them (refused for a bundle); False: open read-only and write nothing."""
    if record:
        refuse_bundle(url, "recording findings")
    bundle = signed_bundle_of(url)
    if bundle is not None:
        store = open_store_read_only(url, immutable=True)
        why = f"{url} is the evidence of the signed report bundle {bundle}, checked read-only so it stays as signed"
    elif record is False:
        store = open_store_read_only(url)
        why = "--no-record: the store was opened read-only"
    else:
        store, why = open_store(url, create=create), None
    try:
        result = run_check(store, pack, since=since, until=until, record=why is None)
    finally:
        store.close()
    result.not_recorded = why
    return result


def run_check(
    store: Store, pack: Pack, *, since: datetime | None = None, until: datetime | None = None, record: bool = True
) -> CheckResult:
    verified = store.verify()
    events = list(judge(store.events(since, until), pack))
    actions = Counter(e.decision.action for e in events if e.decision is not None)
    findings = group_findings(events, pack)
    held: dict[bytes, Finding] = {}
    if findings:
        for finding in store.findings(CHECK_SENSOR):
            held.setdefault(_result_of(finding), finding)
    fresh = [f for f in findings if _result_of(f) not in held]
    if record and fresh:
        store.append_findings(CHECK_SENSOR, fresh)
    return CheckResult(
        events=len(events),
        judged=sum(actions.values()),
        actions=dict(actions),
        findings=[held.get(_result_of(f), f) for f in findings],
        chain_ok=verified.ok,
        chain_problems=[p.line() for p in verified.problems],
        recorded=len(fresh) if record else 0,
        unchanged=len(findings) - len(fresh),
    )


def _result_of(finding: Finding) -> bytes:
    """What a finding says, without its random id: rule, action, severity, message,
    destination, first and last seen, count, event ids, excerpts, sources. Equal bytes are
    the same result; any change in the evidence or the pack that touches one of them is not."""
    return canonical_json(finding.model_dump(mode="json", exclude={"id"}))
