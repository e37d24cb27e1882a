"""The attestation as one self-contained HTML file.

Every string in the document may come from an attacker (hostnames, paths,
excerpts), so the template runs with autoescape on, traffic text never lands in
an attribute that could execute (no href, src, style or event handler carries it),
and a Content-Security-Policy meta tag forbids scripts and every fetch. Styles are
inline and allowed by their hash; charts are inline SVG whose geometry is computed
here from numbers only.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from jinja2 import Environment, FunctionLoader, StrictUndefined, select_autoescape

from auditor.report.model import FindingEntry, ReportDoc, iter_finding_groups

TEMPLATE = "attestation.html.j2"
STYLESHEET = "attestation.css"
MAX_DESTINATION_ROWS = 2_000
COMPACT_ROWS_ABOVE = 1_000  # past this many findings, each row shows one sample of each kind: 10k findings stay under 5 MB
MAX_CHART_DESTINATIONS = 15


def _load(name: str) -> str:
    return resources.files("auditor.templates").joinpath(name).read_text(encoding="utf-8")


def _environment() -> Environment:
    env = Environment(
        loader=FunctionLoader(_load),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["num"] = lambda n: f"{n:,}"
    env.filters["size"] = _size
    return env


def _utc(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "—"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    cls: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "start"


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[Label]
    title: str


def timeline_chart(doc: ReportDoc, width: int = 900, height: int = 220) -> Chart | None:
    buckets = doc.timeline.buckets
    if not buckets:
        return None
    left, bottom, top = 48, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(b.allowed + b.violation + b.unverified for b in buckets) or 1
    step = plot_w / len(buckets)
    bars: list[Bar] = []
    for i, b in enumerate(buckets):
        y = top + plot_h
        for cls, n in (("allowed", b.allowed), ("unverified", b.unverified), ("violation", b.violation)):
            if n:
                h = max(1.0, plot_h * n / peak)
                y -= h
                bars.append(Bar(round(left + i * step + 0.5, 2), round(y, 2), round(max(1.0, step - 1), 2), round(h, 2), cls,
                                f"{_utc(b.start)}: {n} {cls}"))
    labels = [
        Label(left - 6, top + 4, f"{peak:,}", "end"),
        Label(left - 6, top + plot_h, "0", "end"),
        Label(left, height - 8, _utc(buckets[0].start)),
        Label(width - 10, height - 8, f"{_utc(buckets[-1].start)} (bars of {doc.timeline.interval_seconds} s)", "end"),
    ]
    return Chart(width, height, bars, labels, "Flows per interval by decision")


def destination_chart(doc: ReportDoc, width: int = 900) -> Chart | None:
    rows = doc.destinations[:MAX_CHART_DESTINATIONS]
    if not rows:
        return None
    row_h, left, right = 22, 320, 70
    height = row_h * len(rows) + 10
    peak = max(r.events for r in rows) or 1
    plot_w = width - left - right
    bars: list[Bar] = []
    labels: list[Label] = []
    for i, r in enumerate(rows):
        y = 5 + i * row_h
        x = float(left)
        for cls in ("violation", "unverified", "allowed"):
            n = r.actions.get(cls, 0)
            if n:
                w = max(1.0, plot_w * n / peak)
                bars.append(Bar(round(x, 2), y + 3, round(w, 2), row_h - 6, cls, f"{n} {cls}"))
                x += w
        name = r.destination + (f":{r.port}" if r.port else "")
        labels.append(Label(left - 8, y + row_h - 7, name if len(name) <= 44 else name[:43] + "…", "end"))
        labels.append(Label(x + 6, y + row_h - 7, f"{r.events:,}"))
    return Chart(width, height, bars, labels, "Decisions by destination")


def stylesheet() -> str:
    return _load(STYLESHEET)


def csp(style: str) -> str:
    """No script, no fetch of any kind; only the one inline stylesheet, by its hash."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; script-src 'none'; img-src 'none'; "
        "font-src 'none'; connect-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"
    )


def render_html(doc: ReportDoc) -> str:
    style = stylesheet()
    groups: list[tuple[str, list[FindingEntry]]] = list(iter_finding_groups(doc.findings))
    template = _environment().get_template(TEMPLATE)
    severities = {s: sum(1 for f in doc.findings if f.severity == s) for s in ("critical", "high", "medium", "low", "info")}
    compact = len(doc.findings) > COMPACT_ROWS_ABOVE
    max_destinations = MAX_DESTINATION_ROWS // 4 if compact else MAX_DESTINATION_ROWS
    return template.render(
        doc=doc,
        style=style,
        csp=csp(style),
        groups=groups,
        anchors={f.id: f"f{i}" for i, f in enumerate(doc.findings)},
        rule_of={f.id: f.rule_id for f in doc.findings},
        severities=severities,
        open_groups=len(doc.findings) <= 200,
        per_row=1 if compact else 3,
        destinations=doc.destinations[:max_destinations],
        destinations_left=max(0, len(doc.destinations) - max_destinations),
        timeline=timeline_chart(doc),
        dest_chart=destination_chart(doc),
    )
