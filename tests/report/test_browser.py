"""The HTML report in a real browser: attacker-controlled strings in host, path
and excerpt stay text. Headless Chromium renders the report; the dumped DOM must
hold no injected element and show that no payload script ran; a screenshot is
kept as an artifact for a person to look at."""

from __future__ import annotations

import html
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from chromium import chromium
from report_events import WORKER, api, at, flow, leak_events

from auditor.model import DetectorFinding, PayloadInfo
from auditor.report.bundle import make_report
from auditor.rules import Pack

SCRIPT = "<script>document.title='PWNED-SCRIPT'</script>"
IMG = "\"><img src=x onerror=\"document.title='PWNED-IMG'\">"
JS_URL = "javascript:document.title='PWNED-URL'"
ARTIFACT_DIR = Path(os.environ.get("AUDITOR_TEST_ARTIFACTS", "/tmp/auditor-test-artifacts"))


class _Elements(HTMLParser):
    """Every element and attribute of the DOM Chromium built, as a parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.handlers: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"{tag}[{name}]")
            elif name in ("href", "xlink:href"):
                self.hrefs.append(value or "")
            elif name in ("src", "srcset", "action", "formaction"):
                self.srcs.append(value or "")


def _hostile_events() -> list:
    events = leak_events()
    excerpt = PayloadInfo(
        sha256="e" * 64, size=300, labels=["training-data"], inspected=True, route="POST /v1/logs/model",
        findings=[DetectorFinding(detector="tabular", label="training-data", likelihood="VERY_LIKELY",
                                  field_path=f"msg{IMG}", excerpt=f"{SCRIPT} {IMG} {JS_URL}")],
    )
    events.insert(-2, api(14, "POST", f"/v1/logs/{SCRIPT}/{IMG}", src=WORKER, payload=excerpt, size=300))
    events.insert(-2, api(15, "GET", f"/{JS_URL}", src=WORKER, host=f"{SCRIPT}.evil.example", ip="198.51.100.66"))
    events.insert(-2, api(16, "PUT", f"/x{IMG}", src=WORKER, host=f"x{IMG}.evil.example", ip="198.51.100.67"))
    events.insert(-2, flow(17, WORKER, "198.51.100.68", JS_URL, observations=["bypass", "direct-ip"]))
    events[-3].time = at(17)
    return events


def test_hostile_strings_stay_text_in_a_real_browser(make_store, pack: Pack, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    make_report(str(make_store(_hostile_events())), out, pack, formats=["html"])
    page = out / "report.html"
    source = page.read_text()

    assert "<script" not in source.lower() and "<img" not in source.lower()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', source)
    assert csp is not None and "script-src 'none'" in html.unescape(csp.group(1))
    assert "default-src 'none'" in html.unescape(csp.group(1))
    assert not re.search(r"\b(?:src|href)=\"(?!#)", source), "the report must fetch nothing and link only within itself"
    assert "&lt;script&gt;document.title=&#39;PWNED-SCRIPT&#39;&lt;/script&gt;" in source

    dom = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    title = re.search(r"<title>(.*?)</title>", text, re.S)
    assert title is not None and title.group(1) == "Data-boundary attestation: FAIL", "a payload script ran"
    elements = _Elements()
    elements.feed(text)
    assert elements.tags, "the DOM dump is empty"
    assert not elements.tags & {"script", "img", "iframe", "object", "embed", "image", "form", "base", "link"}, elements.tags
    assert not elements.handlers, f"event handler attributes were injected: {elements.handlers}"
    assert all(h.startswith("#") for h in elements.hrefs), [h for h in elements.hrefs if not h.startswith("#")]
    assert not elements.srcs
    assert "&lt;script&gt;document.title='PWNED-SCRIPT'&lt;/script&gt;" in text
    assert "javascript:document.title='PWNED-URL'" in text

    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT_DIR / "report-hostile.png")
