"""The report of the real demo runs (`auditor demo`: the simulated Gretel Hybrid through
the real proxy and the live probe), read the way its readers read it: report.json, the
HTML as Chromium builds it, the JUnit a CI system counts, and `auditor check`.
Every output must say what the verdict says."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chromium import dom

from auditor.check import run_check
from auditor.demo import DemoResult, run_demo
from auditor.model import EgressEvent
from auditor.report.bundle import make_report
from auditor.rules import load_pack
from auditor.store.base import open_store

ARTIFACT_CLASSES = {"model-archive", "quality-privacy-reports", "run-reports"}  # what the worker PUTs to the customer's bucket
FRONTED_HOST = "collector.example.net"  # the Host header the leaky scenario's fronted request carries behind api.gretel.cloud


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    result = run_demo("clean", tmp_path_factory.mktemp("demo"))
    assert result.probe_available, result.probe_reason
    return result


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    result = run_demo("leaky", tmp_path_factory.mktemp("demo"))
    assert result.probe_available, result.probe_reason
    return result


def _json(result: DemoResult) -> dict[str, Any]:
    return json.loads(result.report.files["json"].read_text())  # type: ignore[no-any-return]


def _junit_cases(path: Path) -> tuple[ET.Element, dict[str, ET.Element]]:
    root = ET.fromstring(path.read_bytes())
    return root, {c.get("name", ""): c for c in root.iter("testcase")}


def _row(page: str, class_id: str) -> str:
    """The table row of one contract line in the DOM Chromium built."""
    found = re.search(rf"<tr><td><code>{re.escape(class_id)}</code>.*?</tr>", page, re.S)
    assert found is not None, f"no row for {class_id}"
    return found.group(0)


def _events(result: DemoResult) -> list[EgressEvent]:
    store = open_store(str(result.store), create=False)
    try:
        return list(store.events())
    finally:
        store.close()


def test_artifacts_kept_in_the_customer_bucket_pass_in_every_output(clean: DemoResult, tmp_path: Path) -> None:
    """The worker's PUTs of model.tar.gz and report_json.json.gz to the customer's own
    bucket are what the contract asks for: the lines pass and say where the data was kept,
    and no output contradicts the PASS."""
    assert clean.report.status == "PASS", clean.report.reason
    doc = _json(clean)
    classes = {c["id"]: c for c in doc["contract"]["forbidden_classes"]}
    assert {c["status"] for c in classes.values()} == {"pass"}, {k: c["statement"] for k, c in classes.items()}
    for class_id in ARTIFACT_CLASSES:
        line = classes[class_id]
        assert (line["count"], line["unverified"], line["event_ids"]) == (0, 0, [])
        assert line["kept"] >= 1
        assert line["kept_where"] == ["acme-gretel-hybrid.s3.us-west-2.amazonaws.com:443 (rule site.customer-bucket)"]
        assert "Kept where the contract allows it" in line["statement"]

    root, cases = _junit_cases(clean.report.files["junit"])
    assert (root.get("failures"), root.get("errors")) == ("0", "0")
    for class_id in ARTIFACT_CLASSES:
        out = cases[class_id].find("system-out")
        assert out is not None and "acme-gretel-hybrid" in (out.text or "")

    page = dom(tmp_path, clean.report.files["html"])
    for class_id in ARTIFACT_CLASSES:
        row = _row(page, class_id)
        assert 'class="badge s-pass"' in row and "s-fail" not in row
        assert "Kept where the contract allows it: 1 event, to acme-gretel-hybrid.s3.us-west-2.amazonaws.com:443" in row


def test_artifacts_to_a_bucket_the_policy_does_not_allow_fail(clean: DemoResult, tmp_path: Path) -> None:
    """The same real evidence judged without the site overlay that names the customer's
    bucket: the PUTs now go to somebody else's bucket, and the lines fail with the finding."""
    out = tmp_path / "bundle"
    outcome = make_report(str(clean.store), out, load_pack(), formats=["json", "junit"])
    assert outcome.status == "FAIL"
    doc = json.loads((out / "report.json").read_text())
    classes = {c["id"]: c for c in doc["contract"]["forbidden_classes"]}
    findings = {f["id"]: f["rule_id"] for f in doc["findings"]}
    for class_id in ARTIFACT_CLASSES:
        line = classes[class_id]
        assert line["status"] == "fail" and line["count"] >= 1 and line["kept"] == 0
        assert "s3.foreign-bucket-write" in {findings[i] for i in line["finding_ids"]}
    _, cases = _junit_cases(out / "report.junit.xml")
    assert all(cases[c].find("failure") is not None for c in ARTIFACT_CLASSES)


def test_an_artifact_whose_destination_is_undecided_is_unverified_not_kept(
    clean: DemoResult, make_store: Callable[[list[EgressEvent], str], Path], tmp_path: Path
) -> None:
    """The demo's upload of model.tar.gz, cut short by the client (`client-disconnect`, a
    rule whose decision is unverified): the evidence cannot say the archive was kept, nor
    that it leaked. The line is unverified, a JUnit <error>, never a pass or a failure."""
    events = _events(clean)
    upload = next(e for e in events if e.http is not None and e.http.method == "PUT" and e.http.path.endswith("/model.tar.gz"))
    upload.observations = sorted([*upload.observations, "client-disconnect"])
    out = tmp_path / "bundle"
    make_report(str(make_store(events, "cut-short.db")), out, load_pack(None, [clean.overlay]), formats=["json", "junit"])
    doc = json.loads((out / "report.json").read_text())
    line = next(c for c in doc["contract"]["forbidden_classes"] if c["id"] == "model-archive")
    assert line["status"] == "unverified", line["statement"]
    assert (line["count"], line["unverified"], line["kept"]) == (0, 1, 0)
    assert line["event_ids"] == [upload.id]
    assert "could not decide" in line["statement"]
    _, cases = _junit_cases(out / "report.junit.xml")
    assert cases["model-archive"].find("error") is not None and cases["model-archive"].find("failure") is None


def test_a_fronted_request_names_the_host_it_asked_for_everywhere(leaky: DemoResult, tmp_path: Path) -> None:
    """The leaky run's request with SNI api.gretel.cloud and Host collector.example.net:
    its findings, its destination row, the HTML and `auditor check` name both."""
    named = f"api.gretel.cloud:443 (SNI api.gretel.cloud, Host {FRONTED_HOST})"
    doc = _json(leaky)
    fronted = {f["rule_id"]: f["destination"] for f in doc["findings"] if FRONTED_HOST in f["destination"]}
    assert fronted == {"obs.sni-host-mismatch": named, "egress.host-not-allowed": named}
    noted = [d for d in doc["destinations"] if "(SNI" in d["destination"] or "Host" in d["destination"]]
    assert [(d["destination"], d["decision"]) for d in noted] == [(f"api.gretel.cloud (SNI api.gretel.cloud, Host {FRONTED_HOST})", "violation")]

    page = dom(tmp_path, leaky.report.files["html"])
    assert page.count(f"<code>{named}</code>") == 2

    store = open_store(str(leaky.store), create=False)
    try:
        checked = run_check(store, load_pack(None, [leaky.overlay]), record=False)
    finally:
        store.close()
    assert {f.rule_id for f in checked.findings if f.destination == named} == {"obs.sni-host-mismatch", "egress.host-not-allowed"}


def test_coverage_says_what_it_measured(clean: DemoResult, leaky: DemoResult, tmp_path: Path) -> None:
    """With no pod flow outside the cluster the proxy match is not measured (never 100%),
    and the score says it is the inspected share alone; with one, the figure says it is of
    the flows that did not go to the proxy, and the flows to the proxy are counted apart."""
    cov = _json(clean)["coverage"]
    assert cov["external_flows"] == 0 and cov["proxy_matched_share"] is None
    assert any(s.startswith("Proxy match not measured: the probe saw no pod flow to an address outside the cluster")
               for s in cov["statements"]), cov["statements"]
    assert cov["proxy_flows"] >= 1
    assert cov["score_basis"] == "inspected evidence only; no proxy match measured, as the probe saw no external pod flow"
    assert cov["score_basis"] in clean.report.reason
    page = dom(tmp_path, clean.report.files["html"])
    assert "matched to a connection the proxy made: not measured" in page
    assert f"<th>Pod flows to the audit proxy (probe)</th><td>{cov['proxy_flows']}</td>" in page

    cov = _json(leaky)["coverage"]
    assert (cov["external_flows"], cov["proxy_matched_flows"]) == (1, 0)
    assert cov["score_basis"] == "proxy match, the lower of proxy match and inspected evidence"
    statement = next(s for s in cov["statements"] if s.startswith("Proxy match:"))
    assert "0 of 1 pod flow the probe saw to addresses outside the cluster matched a connection the proxy made (0.0%)" in statement
    assert f"{cov['proxy_flows']} pod flows to the audit proxy itself" in statement


def test_every_metadata_kind_seen_lists_the_field_paths_that_carry_it(clean: DemoResult, tmp_path: Path) -> None:
    """The report keeps no bodies: each kind's field paths are where the schemas of the
    routes it was seen on carry it."""
    kinds = {k["id"]: k for k in _json(clean)["contract"]["metadata_kinds"]}
    seen = {k: line for k, line in kinds.items() if line["status"] == "pass"}
    assert len(seen) >= 10
    assert all(line["field_paths"] for line in seen.values()), [k for k, line in seen.items() if not line["field_paths"]]
    assert {"body.status", "body.status_history[]"} <= set(kinds["model-status"]["field_paths"])
    assert kinds["model-id"]["field_paths"] == ["body.uid"]
    assert kinds["creator-email"]["field_paths"] == ["body.email"]
    assert {"url", "body.logs[]"} <= set(kinds["model-logs"]["field_paths"])
    assert all(not line["field_paths"] for line in kinds.values() if line["status"] == "not-seen")
    page = dom(tmp_path, clean.report.files["html"])
    assert "<code>body.uid</code>" in _row(page, "model-id")


def test_addresses_in_the_reached_by_columns_are_not_broken_across_lines(leaky: DemoResult, tmp_path: Path) -> None:
    """`127 / .0. / 2.1 / 0` in a narrow column reads as four values: Chromium lays the page
    out, and a script added to a copy (the report itself allows none) counts each
    address's lines."""
    html = result_html = leaky.report.files["html"].read_text()
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe = (
        "<script>addEventListener('load', () => { const cells = [...document.querySelectorAll('td.who code')];"
        " document.body.dataset.addresses = cells.length;"
        " document.body.dataset.broken = cells.filter(c => c.getClientRects().length > 1).map(c => c.textContent).join(' | '); });</script>"
    )
    page = tmp_path / "measured.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    built = dom(tmp_path, page)
    addresses = re.search(r'data-addresses="(\d+)"', built)
    broken = re.search(r'data-broken="([^"]*)"', built)
    assert addresses is not None and broken is not None, "the measuring script did not run"
    assert int(addresses.group(1)) >= 3 and "127.0.2.10" in result_html
    assert broken.group(1) == ""
