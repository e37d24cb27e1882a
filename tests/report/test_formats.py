"""SARIF against the official 2.1.0 schema, JUnit parsed back, the canonical JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
from report_events import WORKER, api, clean_events, leak_events

from auditor.report.model import ReportDoc, ReportParams, build_report
from auditor.report.render_junit import render_junit
from auditor.report.render_sarif import render_sarif
from auditor.rules import Pack
from auditor.store.base import open_store
from auditor.store.chain import canonical_json

SCHEMA = json.loads((Path(__file__).parent / "sarif-schema-2.1.0.json").read_text())


def _doc(path: Path, pack: Pack) -> ReportDoc:
    store = open_store(str(path), create=False)
    try:
        return build_report(store, pack, ReportParams(store_url=str(path)))
    finally:
        store.close()


def _validate(sarif: dict) -> None:
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(sarif), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def test_schema_file_is_the_official_one() -> None:
    assert SCHEMA["$id"] == "https://raw.githubusercontent.com/oasis-tcs/sarif-spec/master/Schemata/sarif-schema-2.1.0.json"
    assert SCHEMA["properties"]["version"]["enum"] == ["2.1.0"]


def test_sarif_validates_and_locates_results(make_store, pack: Pack) -> None:
    events = leak_events()
    events.append(api(13, "GET", "/\"><img src=x onerror=alert(1)>", src=WORKER.model_copy(update={"workload": "<script>w</script>"}),
                      host="evil.example", ip="198.51.100.5"))
    sarif = render_sarif(_doc(make_store(events), pack))
    _validate(sarif)
    run = sarif["runs"][0]
    results = run["results"]
    assert {r["ruleId"] for r in results} >= {"data.training-data", "obs.bypass"}
    leak = next(r for r in results if r["ruleId"] == "data.training-data")
    uris = [loc["physicalLocation"]["artifactLocation"]["uri"] for loc in leak["locations"]]
    assert uris[0] == "k8s://gretel-hybrid/gretel-jobs-worker"
    assert uris[-1].endswith("gretel-hybrid.yaml") and len(uris) == 2
    assert leak["level"] == "error" and leak["kind"] == "fail"
    assert run["tool"]["driver"]["rules"][leak["ruleIndex"]]["id"] == "data.training-data"
    hostile = [r for r in results if "evil.example" in r["properties"]["destination"]]
    assert hostile and all(" " not in loc["physicalLocation"]["artifactLocation"]["uri"]
                           for r in hostile for loc in r["locations"])
    assert run["invocations"][0]["exitCode"] == 1


def test_sarif_of_a_clean_run_has_no_results(make_store, pack: Pack) -> None:
    sarif = render_sarif(_doc(make_store(clean_events()), pack))
    _validate(sarif)
    assert sarif["runs"][0]["results"] == []
    assert sarif["runs"][0]["properties"]["verdict"] == "PASS"


def test_junit_has_one_case_per_contract_line_and_fails_with_findings(make_store, pack: Pack) -> None:
    doc = _doc(make_store(leak_events()), pack)
    root = ET.fromstring(render_junit(doc).encode())
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"contract.endpoints", "contract.metadata", "contract.forbidden-data", "contract.network", "audit"}
    assert len(suites["contract.endpoints"].findall("testcase")) == len(pack.endpoints)
    assert len(suites["contract.metadata"].findall("testcase")) == 13
    assert len(suites["contract.forbidden-data"].findall("testcase")) == len(pack.forbidden_classes)
    cases = {c.get("name"): c for s in suites.values() for c in s.findall("testcase")}
    training = cases["training-data"].find("failure")
    assert training is not None and "data.training-data" in (training.text or "")
    assert cases["gretel-api"].find("failure") is not None
    assert cases["no-inbound"].find("failure") is None and cases["no-inbound"].find("error") is None
    assert cases["verdict"].find("failure") is not None
    total = sum(int(s.get("tests", "0")) for s in suites.values())
    assert int(root.get("tests", "0")) == total == len(cases)
    assert int(root.get("failures", "0")) == sum(1 for c in cases.values() if c.find("failure") is not None)


def test_junit_marks_unknowns_as_errors_not_passes(make_store, pack: Pack) -> None:
    events = [e for e in clean_events() if not e.sensor_id.startswith("probe")]
    root = ET.fromstring(render_junit(_doc(make_store(events), pack)).encode())
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["no-inbound"].find("error") is not None
    assert cases["verdict"].find("error") is not None


def test_canonical_json_is_rfc8785_and_round_trips(make_store, pack: Pack) -> None:
    doc = _doc(make_store(leak_events()), pack)
    raw = doc.canonical()
    assert raw == canonical_json(json.loads(raw))
    again = ReportDoc.model_validate_json(raw)
    assert again.verdict == doc.verdict and len(again.findings) == len(doc.findings)


def test_many_findings_stay_navigable_and_small(make_store, pack: Pack) -> None:
    from auditor.report.render_html import render_html

    events = clean_events()[:-2]
    events += [api(30 + i / 100, "POST", f"/upload/{i}", src=WORKER, host=f"exfil-{i}.example.net", ip="198.51.100.9")
               for i in range(1_200)]
    doc = _doc(make_store(events), pack)
    assert len(doc.findings) == 1_200
    page = render_html(doc)
    assert page.index('id="summary"') < page.index('id="findings"') < page.index('id="f0"')
    assert "<details class=\"group\" id=\"g1\">" in page  # collapsed: the summary table leads
    findings_part = page[page.index('id="findings"'):page.index('id="destinations"')]
    assert len(findings_part.encode()) / 1_200 < 450, "10,000 findings must fit in 5 MB"
    assert page.count('<tr id="f') == 1_200
