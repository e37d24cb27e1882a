"""JUnit XML: one test case per contract line, so a CI system shows the contract
as a test suite and fails the build on the line that was broken.

`fail` lines carry a <failure> with their findings; lines the evidence cannot
decide (`unverified`) carry an <error>, because an unknown is not a pass.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from auditor.report.model import FindingEntry, LineStatus, ReportDoc

_MAX_FINDINGS_IN_TEXT = 50


def _xml_text(text: str) -> str:
    """XML 1.0 cannot carry most control characters, even escaped: drop them."""
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20 and ch not in "\ufffe\uffff")


def _case(suite: ET.Element, classname: str, name: str, status: LineStatus, detail: str, findings: list[FindingEntry]) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=_xml_text(name), time="0")
    lines = [detail] + [
        f"[{f.severity}] {f.rule_id} -> {f.destination}: {f.count} events {f.first_seen.isoformat()}..{f.last_seen.isoformat()} "
        f"(finding {f.id})"
        for f in findings[:_MAX_FINDINGS_IN_TEXT]
    ]
    if len(findings) > _MAX_FINDINGS_IN_TEXT:
        lines.append(f"... and {len(findings) - _MAX_FINDINGS_IN_TEXT} more findings in report.json")
    text = _xml_text("\n".join(lines))
    if status == "fail":
        el = ET.SubElement(case, "failure", message=_xml_text(detail[:500]), type="violation")
        el.text = text
    elif status == "unverified":
        el = ET.SubElement(case, "error", message=_xml_text(detail[:500]), type="unverified")
        el.text = text
    else:
        out = ET.SubElement(case, "system-out")
        out.text = text


def render_junit(doc: ReportDoc) -> str:
    by_id = {f.id: f for f in doc.findings}
    root = ET.Element("testsuites", name="boundary-auditor", tests="0", failures="0", errors="0")
    suites: list[ET.Element] = []

    def suite(name: str) -> ET.Element:
        s = ET.SubElement(root, "testsuite", name=name, timestamp=doc.identity.generated_at.isoformat())
        suites.append(s)
        return s

    ep_suite = suite("contract.endpoints")
    for e in doc.contract.endpoints:
        detail = (
            f"{', '.join(e.hosts)}: {e.status}; {e.events} events by {len(e.sources)} sources, "
            f"{e.bytes_up} bytes up, {e.bytes_down} bytes down. {e.contract}"
        )
        _case(ep_suite, "contract.endpoints", e.id, e.status, detail, [by_id[i] for i in e.finding_ids if i in by_id])

    kind_suite = suite("contract.metadata")
    for k in doc.contract.metadata_kinds:
        _case(kind_suite, "contract.metadata", k.id, k.status, f"{k.id}: seen {k.count} times. {k.contract}", [])

    class_suite = suite("contract.forbidden-data")
    for c in doc.contract.forbidden_classes:
        _case(class_suite, "contract.forbidden-data", c.id, c.status, f"{c.statement} {c.contract}",
              [by_id[i] for i in c.finding_ids if i in by_id])

    other = suite("contract.network")
    inbound = doc.contract.inbound
    _case(other, "contract.network", "no-inbound", inbound.status, inbound.statement,
          [by_id[i] for i in inbound.finding_ids if i in by_id])
    violations = [f for f in doc.findings if f.action == "violation"]
    unverified = [f for f in doc.findings if f.action == "unverified"]
    _case(other, "contract.network", "only-contract-traffic",
          "fail" if violations else "unverified" if unverified else "pass",
          f"{len(violations)} violation findings, {len(unverified)} unverified findings in the window.",
          violations or unverified)

    audit = suite("audit")
    cov = doc.coverage
    _case(audit, "audit", "coverage", "pass" if cov.meets_threshold else "unverified", " ".join(cov.statements), [])
    _case(audit, "audit", "evidence-integrity", "pass" if doc.integrity.chains_ok else "fail",
          "every hash chain verifies" if doc.integrity.chains_ok else "; ".join(doc.integrity.problems), [])
    _case(audit, "audit", "verdict", {"PASS": "pass", "FAIL": "fail", "INCONCLUSIVE": "unverified"}[doc.verdict.status],
          f"{doc.verdict.status}: {doc.verdict.reason}", [])

    totals = {"tests": 0, "failures": 0, "errors": 0}
    for s in suites:
        cases = s.findall("testcase")
        counts = {"tests": len(cases), "failures": sum(1 for c in cases if c.find("failure") is not None),
                  "errors": sum(1 for c in cases if c.find("error") is not None)}
        for key, value in counts.items():
            s.set(key, str(value))
            totals[key] += value
        s.set("skipped", "0")
        s.set("time", "0")
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
