"""`auditor rules validate|show|explain` through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUDITOR = Path(sys.executable).with_name("auditor")
SHIPPED = (ROOT / "rules" / "gretel-hybrid.yaml").read_text()


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([str(AUDITOR), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_validate_shipped_pack_and_example_overlay() -> None:
    result = run("rules", "validate", "--overlay", "rules/site-example.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pack gretel-hybrid: ") and "gretel-hybrid.yaml sha256:" in lines[0]
    assert lines[1].startswith("overlay example-corp-prod: rules/site-example.yaml sha256:")
    assert lines[2].startswith(
        "OK gretel-hybrid: 5 endpoints, 8 site endpoints, 66 rules, 13 metadata kinds, 6 forbidden classes, region us-west-2; digest sha256:"
    )


def test_validate_broken_pack_is_one_line_and_exit_3(tmp_path: Path) -> None:
    broken = tmp_path / "x.yaml"
    broken.write_text(SHIPPED.replace("    hosts: [api.gretel.cloud]", "    hots: [api.gretel.cloud]", 1))
    line = SHIPPED[: SHIPPED.index("    hosts: [api.gretel.cloud]")].count("\n") + 1
    result = run("rules", "validate", str(broken))
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr == f"error: {broken}:{line}: unknown key 'hots' in endpoint 'gretel-api' (fix: did you mean 'hosts'?)\n"


def test_explain_put_to_someone_elses_bucket_is_a_violation() -> None:
    result = run("rules", "explain", "s3.amazonaws.com", "--method", "PUT", "--path", "/someone-elses-bucket/x", "--scope", "node")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert out.startswith(
        "VIOLATION: PUT /someone-elses-bucket/x s3.amazonaws.com:443 from a node -> rule s3.foreign-bucket-write (critical)"
    )
    assert "object storage: s3 endpoint s3.amazonaws.com, bucket someone-elses-bucket" in out
    assert "PUT to bucket 'someone-elses-bucket' on s3.amazonaws.com: neither the registry layer bucket nor a customer bucket in the overlay" in out
    assert 'contract (Data not stored in Gretel\'s control plane): "Model training artifacts.' in out
    assert "remediation: Treat as exfiltration." in out


def test_explain_layer_pull_allowed_and_json() -> None:
    path = "/prod-us-west-2-starport-layer-bucket/sha256/ab"
    result = run("rules", "explain", "s3.amazonaws.com:443", "-m", "GET", "-p", path, "--scope", "node", "--json")
    assert result.returncode == 0, result.stderr
    (doc,) = json.loads(result.stdout)
    assert doc["decision"]["action"] == "allowed" and doc["decision"]["rule_id"] == "allow.registry-layers"
    assert doc["candidates"] == ["registry-layers"]


def test_explain_without_scope_judges_pod_and_node() -> None:
    result = run("rules", "explain", "api.gretel.cloud")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert [line.split(":")[0] for line in lines if line.split(":")[0] in ("ALLOWED", "VIOLATION")] == ["ALLOWED", "VIOLATION"]
    assert "from a pod -> rule allow.gretel-api (info)" in result.stdout
    assert "from a node -> rule egress.scope (medium)" in result.stdout


def test_explain_with_overlay_and_bad_input(tmp_path: Path) -> None:
    ok = run("rules", "explain", "s3.amazonaws.com", "--method", "PUT", "--path", "/example-corp-gretel-artifacts/m.tar.gz",
             "--scope", "pod", "--overlay", "rules/site-example.yaml")
    assert ok.returncode == 0 and "rule site.customer-bucket" in ok.stdout
    bad = run("rules", "explain", "api.gretel.cloud", "--scope", "cluster")
    assert bad.returncode == 3
    assert bad.stderr == "error: unknown scope 'cluster' (fix: use --scope pod or --scope node)\n"


def test_show_lists_endpoints_kinds_and_forbidden_data() -> None:
    result = run("rules", "show", "--overlay", "rules/site-example.yaml", "--rules")
    assert result.returncode == 0, result.stderr
    for text in (
        "gretel-api", "gretel-artifacts", "gretel-registry", "registry-layers-regional", "074762682575.dkr.ecr.us-west-2.amazonaws.com",
        "s3 bucket example-corp-gretel-artifacts (any s3 endpoint)", "net.internal", "creator-email", "file-names", "model-archive",
        "s3.foreign-bucket-write", "SOC 2 CC6.6",
    ):
        assert text in result.stdout, text


def test_show_json_is_the_composed_pack() -> None:
    result = run("rules", "show", "--json", "--overlay", "rules/site-example.yaml")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [ep["id"] for ep in doc["endpoints"]] == [
        "gretel-api", "gretel-artifacts", "gretel-registry", "registry-layers", "registry-layers-regional",
    ]
    assert doc["internal"]["proxy"] == "http://10.43.12.7:3128"
    assert len(doc["metadata_kinds"]) == 13 and doc["labels"]["canary"] == "data.canary"
    assert doc["digest"].startswith("sha256:") and [s["kind"] for s in doc["sources"]] == ["pack", "overlay"]
