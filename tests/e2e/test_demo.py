"""`auditor demo`: the simulated Gretel Hybrid through the real proxy and the live probe.

clean must PASS with nothing found; leaky must FAIL with each injected violation found
once, by the rule its declared observation or label maps to, and nothing else. Each
event is tied to the scenario step that caused it by time (steps run one after another).
"""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from auditor.demo import DemoResult, run_demo
from auditor.model import EgressEvent
from auditor.report.bundle import verify_bundle
from auditor.rules import destination_label, evaluate, judge, load_pack
from auditor.sim import StepResult, expectations
from auditor.store.base import open_store


def _events(result: DemoResult) -> list[EgressEvent]:
    pack = load_pack(None, [result.overlay])
    store = open_store(str(result.store), create=False)
    try:
        return [e for e in judge(store.events(), pack) if e.kind != "sensor"]
    finally:
        store.close()


def _step_of(steps: list[StepResult], event: EgressEvent) -> StepResult:
    """The step running when the event's connection or request began."""
    when = event.flow.first_seen if event.flow is not None and event.flow.first_seen is not None else event.time
    i = bisect.bisect_right([s.started for s in steps], when) - 1
    assert i >= 0, f"event {event.id} at {when} precedes the scenario"
    return steps[i]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo("clean", tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo("leaky", tmp_path_factory.mktemp("demo"))


def test_clean_passes_with_no_findings(clean: DemoResult) -> None:
    assert clean.step_problems == []
    assert clean.probe_available, clean.probe_reason  # CI runs as root: the probe captures on lo
    assert clean.report.status == "PASS", clean.report.reason
    assert clean.exit_code == 0
    assert clean.report.findings == []
    events = _events(clean)
    assert {e.sensor_id for e in events} == {"proxy-demo", "probe-demo"}
    assert [e for e in events if e.decision is None or e.decision.action != "allowed"] == []
    assert clean.run is not None
    requests = clean.steps + sum(len(s.hops) for s in clean.run.steps)  # each redirect followed is a request too
    assert len([e for e in events if e.kind == "http"]) == requests


def test_clean_bundle_is_signed_and_verifies(clean: DemoResult) -> None:
    files = clean.report.files
    assert {"html", "json", "sarif", "junit", "intoto", "store"} <= set(files)
    assert clean.report.public_key is not None and clean.report.public_key.is_file()
    assert not list(clean.run_dir.rglob("*.key"))  # the throwaway private key is not left behind
    outcome = verify_bundle(clean.report.report_dir, clean.report.public_key)
    assert outcome.ok, outcome.lines


def test_leaky_fails_with_each_injected_violation_found_once(leaky: DemoResult) -> None:
    assert leaky.step_problems == []
    assert leaky.probe_available, leaky.probe_reason
    assert leaky.report.status == "FAIL" and leaky.exit_code == 1
    assert leaky.run is not None
    pack = load_pack(None, [leaky.overlay])
    steps = leaky.run.steps
    injected = {s.id: s for s in steps if s.expect is not None}
    assert len(injected) == len(expectations("leaky")) == 9

    by_step: dict[str, list[EgressEvent]] = defaultdict(list)
    for event in _events(leaky):
        step = _step_of(steps, event)
        if event.decision is not None and event.decision.action != "allowed":
            # nothing else: only the injected steps produce anything but allowed traffic
            assert step.expect is not None, f"{step.id} (clean) gave {event.decision.rule_id} on {destination_label(event)}"
        by_step[step.id].append(event)

    findings = leaky.report.findings
    for step_id, step in injected.items():
        expect = step.expect
        assert expect is not None
        flagged = [e for e in by_step[step_id] if e.decision is not None and e.decision.action == "violation"]
        assert flagged, f"{expect.violation}: not detected"
        assert {"proxy": "proxy-demo", "probe": "probe-demo"}[expect.sensor] in {e.sensor_id for e in flagged}
        wanted = {pack.observations[o] for o in expect.observations} | {pack.labels[label] for label in expect.labels}
        if not wanted:  # a destination violation: the destination alone, body aside, is refused
            assert expect.destination and expect.method
            wanted = {
                d.rule_id
                for e in flagged
                if e.http is not None and e.http.method == expect.method and destination_label(e).startswith(expect.destination)
                and (d := evaluate(e.model_copy(update={"payload": None}), pack)) is not None and d.action == "violation"
            }
        fired = {rule for e in flagged for rule in e.decision.rule_ids}  # type: ignore[union-attr]
        hit = wanted & fired
        assert hit, f"{expect.violation}: wanted one of {sorted(wanted)}, the events fired {sorted(fired)}"
        ids = {e.id for e in flagged}
        for rule in hit:
            found = [f for f in findings if f.rule_id == rule and ids & set(f.event_ids)]
            assert len(found) == 1, f"{expect.violation}: {rule} found {len(found)} times"

    injected_ids = {e.id for step_id in injected for e in by_step[step_id]}
    for finding in findings:
        assert set(finding.event_ids) <= injected_ids, f"{finding.rule_id} on {finding.destination} is not an injected violation"


def test_leaky_report_names_the_probe_findings(leaky: DemoResult) -> None:
    rules = {f.rule_id for f in leaky.report.findings}
    assert {"obs.bypass", "obs.dns-tunnel", "data.canary", "obs.sni-host-mismatch"} <= rules
    tunnel = [f for f in leaky.report.findings if f.rule_id == "obs.dns-tunnel"]
    assert len(tunnel) == 1 and tunnel[0].count == 40  # one tunnel, one finding, every query counted


def test_demo_through_the_cli_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "demo", "--scenario", "leaky", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL: " in proc.stdout and "Findings (" in proc.stdout
    report_line = next(line for line in proc.stdout.splitlines() if line.startswith("report  "))
    html = Path(report_line.split(None, 1)[1])
    assert html.is_file() and html.name == "report.html"
    verify_line = next(line for line in proc.stdout.splitlines() if line.startswith("verify  "))
    args = verify_line.split()[3:]  # "verify  auditor verify BUNDLE --key PUB"
    check = subprocess.run([sys.executable, "-m", "auditor.cli", "verify", *args], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "bundle verifies; signed verdict FAIL" in check.stdout


def test_unknown_scenario_is_an_error_of_use(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "demo", "--scenario", "noisy", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "unknown scenario 'noisy'" in proc.stderr


def test_without_privileges_the_demo_runs_in_a_private_namespace(tmp_path: Path) -> None:
    """As a user without CAP_NET_BIND_SERVICE, CAP_NET_RAW and CAP_NET_ADMIN (root with them
    removed from its bounding set, as setpriv does), the demo forks into a private user and
    network namespace, where 443 and capture are its own: still PASS, and it says so."""
    cmd = ["setpriv", "--bounding-set", "-net_bind_service,-net_raw,-net_admin", "--",
           sys.executable, "-m", "auditor.cli", "demo", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "private user and network namespace" in proc.stderr
    assert "probe on lo" in proc.stdout and "PASS: " in proc.stdout


def test_without_the_probe_the_report_says_so_and_never_passes(tmp_path: Path) -> None:
    """The probe cannot capture (here: no such interface; the same path as no capture rights):
    the demo goes on with the proxy alone, and the report shows probe coverage unavailable."""
    result = run_demo("clean", tmp_path, iface="ba-no-such-if")
    assert not result.probe_available
    assert result.probe_reason is not None and "ba-no-such-if" in result.probe_reason
    assert any("probe unavailable" in note for note in result.notes)
    assert result.report.status == "INCONCLUSIVE" and result.exit_code == 2
    assert result.report.findings == []
    doc = json.loads(result.report.files["json"].read_text())
    assert doc["coverage"]["probe_available"] is False
    assert any("Probe coverage unavailable" in s for s in doc["coverage"]["statements"])
    assert "Probe coverage is unavailable" in result.report.reason or any(
        "Probe coverage is unavailable" in r for r in doc["verdict"]["reasons"])
