"""The `auditor` command: parses, calls, prints. No logic lives here.

Exit codes: 0 pass, 1 violations, 2 inconclusive or unverified only, 3 and up errors of use.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from auditor.errors import AuditorError

app = typer.Typer(
    name="auditor",
    help="Boundary Auditor: proves what leaves a Gretel Hybrid cluster is only metadata, to allowed endpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
rules_app = typer.Typer(help="Rule packs: validate, show, explain.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
store_app = typer.Typer(help="Evidence store: migrate, copy between SQLite and PostgreSQL, retain.", no_args_is_help=True)
app.add_typer(store_app, name="store")

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line

StoreOpt = Annotated[str, typer.Option("--store", "-s", help="Evidence store: a SQLite file path or a postgresql:// URL.")]


@app.command()
def ingest(
    events_file: Annotated[Path, typer.Argument(help="JSON lines, one EgressEvent per line.")],
    store: StoreOpt,
) -> None:
    """Append events from a JSONL file to the store; every bad line is reported, none stops the rest; events already stored (same id) are skipped."""
    from auditor.ingest import ingest_jsonl

    result = ingest_jsonl(events_file, store)
    for problem in result.problems:
        err.print(problem, style="yellow", highlight=False, markup=False)
    console.print(result.summary(events_file), highlight=False, markup=False, soft_wrap=True)
    if result.rejected:
        raise typer.Exit(3)


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="mitmproxy flows (-w), HAR, pcap/pcapng, Zeek JSON logs (conn, dns, ssl together), Hubble JSON.")],
    store: StoreOpt,
    fmt: Annotated[str, typer.Option("--format", help="auto, har, zeek, hubble, mitm, pcap.")] = "auto",
    sensor_id: Annotated[Optional[str], typer.Option("--sensor-id", help="Chain the imported events under this id.")] = None,
    inventory: Annotated[Optional[Path], typer.Option("--inventory", help="Attribute sources with an `auditor k8s snapshot` file.")] = None,
) -> None:
    """Turn evidence captured with other tools into events in the store."""
    from auditor.importers import import_file

    result = import_file(files, store, fmt, sensor_id, inventory)  # type: ignore[arg-type]
    for problem in result.problems:
        err.print(problem, highlight=False, markup=False)
    console.print(
        f"imported {result.imported} events as {result.format} under sensor {result.sensor_id}, rejected {result.rejected} records",
        highlight=False,
    )
    if result.rejected:
        raise typer.Exit(3)


@app.command()
def demo(
    scenario: Annotated[str, typer.Option("--scenario", help="clean (only allowed traffic) or leaky (nine injected violations).")] = "clean",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where each run's evidence, report and public key go.")] = Path("auditor-demo"),
) -> None:
    """Run the whole auditor on a simulated Gretel Hybrid on loopback: exit 0 PASS, 1 FAIL, 2 INCONCLUSIVE."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from auditor.demo import STAGES, run_demo_anywhere

    order = list(STAGES)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"auditor demo --scenario {scenario}", total=len(order))
        result = run_demo_anywhere(scenario, out, lambda stage: bar.update(task, description=STAGES[stage], completed=order.index(stage)))
        bar.update(task, completed=len(order))
    _print_run(result.report, [*result.notes, *(f"scenario step failed: {p}" for p in result.step_problems)],
               f"demo --scenario {scenario}: {result.steps} requests by the simulated hybrid worker in {result.seconds:.1f} s; "
               f"probe {'on lo' if result.probe_available else 'unavailable'}; evidence {result.store}")
    if scenario == "clean":
        console.print("to see violations caught: auditor demo --scenario leaky", highlight=False, markup=False)
    raise typer.Exit(result.exit_code)


def _print_run(report: object, notes: list[str], summary: str) -> None:
    """Verdict, findings, where the signed report is and how to verify it (demo and audit)."""
    from auditor.audit import RunReport
    from auditor.views import findings_table

    assert isinstance(report, RunReport)
    for note in notes:
        err.print(f"note: {note}", highlight=False, markup=False)
    console.print(summary, highlight=False, markup=False, soft_wrap=True)
    console.print(findings_table(report.findings))
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}[report.status]
    console.print(f"[{colour}]{report.status}[/]: ", end="")
    console.print(report.reason, highlight=False, markup=False, soft_wrap=True)
    html = report.files.get("html")
    console.print(f"report  {html or report.report_dir}", highlight=False, markup=False, soft_wrap=True)
    if report.public_key is not None:
        console.print(f"verify  auditor verify {report.report_dir} --key {report.public_key}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def audit(
    command: Annotated[Optional[list[str]], typer.Argument(help="After --: the job to audit; it runs with https_proxy set to the proxy and trusts the proxy's CA.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the evidence store and the signed report bundle.")] = Path("auditor-audit"),
    duration: Annotated[Optional[float], typer.Option("--duration", help="Seconds to audit (with a command: its time limit).")] = None,
    store: Annotated[Optional[str], typer.Option("--store", "-s", help="Cluster mode: the store the in-cluster sensors wrote (no local sensors).")] = None,
    inventory: Annotated[Optional[Path], typer.Option("--inventory", "-i", help="Cluster mode: attribute sources with this `auditor k8s snapshot` file.")] = None,
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key (default: a throwaway key; its public half is written beside the bundle).")] = None,
    iface: Annotated[str, typer.Option("--iface", help="Local mode: interface the probe captures on.")] = "any",
    bpf: Annotated[Optional[str], typer.Option("--bpf", help="Local mode: libpcap filter for the probe.")] = None,
    listen: Annotated[str, typer.Option("--listen", help="Local mode: address the proxy listens on (a free port is picked).")] = "127.0.0.1",
    connect_to: Annotated[Optional[list[str]], typer.Option("--connect-to", help="Local mode: HOST:PORT:ADDR:PORT for the proxy; repeatable.")] = None,
    upstream_ca: Annotated[Optional[Path], typer.Option("--upstream-ca", help="Local mode: CA the proxy trusts upstream.")] = None,
) -> None:
    """Certification run: sensors for --duration or while a command runs (`auditor audit -- ./job.sh`), or a cluster's --store; signed report; exit 0 PASS, 1 FAIL, 2 INCONCLUSIVE."""
    import signal
    import threading

    from auditor.audit import LocalAudit, run_cluster_audit, run_local_audit

    say = lambda msg: err.print(msg, highlight=False, markup=False)  # noqa: E731
    if store is not None:
        if command:
            raise AuditorError("--store reports what the cluster's sensors wrote; it runs no command", fix="drop the command after --, or drop --store")
        result = run_cluster_audit(store, out, pack=pack, overlays=overlay or [], inventory=inventory, sign_key=sign, progress=say)
        summary = f"audit of {store}: {result.events} records"
    else:
        if inventory is not None:
            raise AuditorError("--inventory attributes a cluster's store", fix="use it with --store")
        stop = threading.Event()  # Ctrl-C or SIGTERM: end the job (if any), then report what was seen
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        req = LocalAudit(out=out, command=command or [], duration=duration, pack=pack, overlays=overlay or [], sign_key=sign,
                         iface=iface, bpf=bpf, listen_host=listen, connect_to=connect_to or [], upstream_ca=upstream_ca)
        result = run_local_audit(req, say, stop)
        ran = f"; command exited {result.command_exit}" if result.command_exit is not None else ""
        summary = f"local audit: {result.events} records in {result.seconds:.1f} s{ran}; evidence {result.store}"
    _print_run(result.report, result.notes, summary)
    raise typer.Exit(result.report.exit_code)


@app.command()
def monitor(
    store: StoreOpt,
    pack: Annotated[Optional[Path], typer.Option("--pack", help="Rule pack (default: the shipped Gretel Hybrid pack).")] = None,
    overlay: Annotated[Optional[list[Path]], typer.Option("--overlay", help="Site overlay; repeatable.")] = None,
    metrics_listen: Annotated[Optional[str], typer.Option("--metrics-listen", help="HOST:PORT for Prometheus /metrics.")] = None,
    webhook: Annotated[Optional[str], typer.Option("--webhook", help="POST each alert here (retried with backoff; undelivered alerts are raised again after a restart).")] = None,
    report_every: Annotated[Optional[float], typer.Option("--report-every", help="Seconds between rolling reports, more than 0 (default: none).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Where rolling reports go.")] = Path("auditor-monitor"),
    window: Annotated[Optional[float], typer.Option("--window", help="Seconds of history in each rolling report (default: all).")] = None,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key to sign rolling reports.")] = None,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between store polls.")] = 1.0,
    duration: Annotated[Optional[float], typer.Option("--duration", help="Stop after this many seconds (default: until SIGINT/SIGTERM).")] = None,
    proxy_listen: Annotated[Optional[str], typer.Option("--proxy-listen", help="Also run the proxy here (HOST:PORT).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="Proxy mode: audit or enforce.")] = "audit",
    confdir: Annotated[Optional[Path], typer.Option("--confdir", help="Proxy CA directory.")] = None,
    iface: Annotated[Optional[str], typer.Option("--iface", help="Also run the probe on this interface (e.g. any).")] = None,
) -> None:
    """Continuous mode: run the sensors (or tail the store others write), alert once per rule and destination (JSON lines on stdout), serve metrics, write rolling reports."""
    import signal
    import threading

    from auditor.monitor import MonitorConfig, run_monitor
    from auditor.rules import load_pack

    loaded = load_pack(pack, overlay or [])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    config = MonitorConfig(
        store_url=store, poll_interval=poll, metrics_listen=metrics_listen, webhook=webhook,
        report_every=report_every, report_dir=out if report_every else None, report_window=window,
        sign_key=sign, duration=duration, proxy_listen=proxy_listen, proxy_mode=mode, proxy_confdir=confdir,  # type: ignore[arg-type]
        iface=iface, pack_path=pack, overlays=overlay or [],
    )
    run_monitor(config, loaded, stop, on_report=lambda d, status: err.print(f"rolling report {status}: {d}", highlight=False),
                log=lambda line: err.print(line, highlight=False, markup=False))


PackOpt = Annotated[Optional[Path], typer.Option("--pack", help="Rule pack (default: the shipped Gretel Hybrid pack).")]
OverlayOpt = Annotated[Optional[list[Path]], typer.Option("--overlay", help="Site overlay; repeatable.")]
TimeOpt = typer.Option(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"])


@app.command()
def check(
    store: Annotated[Optional[str], typer.Option("--store", "-s", help="Evidence store (default: a temporary one when --events is given).")] = None,
    events: Annotated[Optional[Path], typer.Option("--events", help="Ingest this JSONL file first.")] = None,
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    since: Annotated[Optional[datetime], TimeOpt] = None,
    until: Annotated[Optional[datetime], TimeOpt] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
    record: Annotated[Optional[bool], typer.Option("--record/--no-record", help="Chain new findings under `check` (default), or open the store read-only and write nothing. A signed report bundle's evidence.db is always only read.")] = None,
) -> None:
    """Judge the store against the pack; exit 0 pass, 1 violations, 2 unverified only."""
    from auditor.check import check_store
    from auditor.ingest import ingest_jsonl
    from auditor.rules import load_pack
    from auditor.views import findings_table

    if store is None and events is None:
        raise AuditorError("no evidence to check", fix="pass --store FILE, or --events FILE.jsonl")
    if store is not None and events is not None and record is False:
        raise AuditorError("--no-record writes nothing to --store, but --events would ingest into it", fix="drop --store to check the events in a temporary store, or drop --no-record")
    loaded = load_pack(pack, overlay or [])
    with tempfile.TemporaryDirectory(prefix="auditor-check-") as tmp:
        url = store or str(Path(tmp) / "evidence.db")
        if events is not None:
            ingested = ingest_jsonl(events, url)
            for problem in ingested.problems:
                err.print(problem, highlight=False, markup=False)
            if not as_json:
                console.print(ingested.summary(events), highlight=False, markup=False, soft_wrap=True)
        result = check_store(url, loaded, since=_utc(since), until=_utc(until), record=record, create=events is not None)
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        for problem in result.chain_problems:
            console.print(f"[red]BROKEN CHAIN[/] {problem}", highlight=False)
        console.print(findings_table(result.findings))
        counts = ", ".join(f"{n} {a}" for a, n in sorted(result.actions.items())) or "no judged events"
        verdict = {0: "[green]PASS[/]", 1: "[red]FAIL[/]", 2: "[yellow]INCONCLUSIVE[/]"}[result.exit_code]
        console.print(f"{verdict}: {result.events} events ({counts}); {len(result.findings)} findings")
        if result.not_recorded:
            console.print(f"not recorded: {result.not_recorded}", style="dim", highlight=False, markup=False, soft_wrap=True)
        elif store is not None and result.findings:
            console.print(f"chained {result.recorded} new findings under `check`; {result.unchanged} already there unchanged", style="dim", highlight=False, markup=False)
    raise typer.Exit(result.exit_code)


def _utc(value: datetime | None) -> datetime | None:
    """Times on the command line without a zone are UTC, as everything in the store is."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@app.command()
def verify(
    target: Annotated[Optional[str], typer.Argument(help="A report bundle directory (signature, digests, chains) or an evidence store (file or postgresql:// URL).")] = None,
    store: Annotated[Optional[str], typer.Option("--store", "-s", help="Evidence store to recompute.")] = None,
    key: Annotated[Optional[Path], typer.Option("--key", help="Public key for a bundle's signature.")] = None,
) -> None:
    """Recompute every hash chain and name the first broken record of each sensor; for a bundle, check its signature and digests too."""
    from rich.text import Text

    from auditor.store.base import open_store

    if target is not None and not Path(target).is_dir():
        if store is not None:
            raise AuditorError(f"{target} is not a bundle directory", fix="give either a store or --store, not both")
        store, target = target, None
    if store is None and target is None:
        raise AuditorError("nothing to verify", fix="pass a store (file or postgresql:// URL) or a bundle directory")
    if target is not None:
        from auditor.report.bundle import verify_bundle

        outcome = verify_bundle(Path(target), key)
        for line in outcome.lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if not outcome.ok:
            raise typer.Exit(1)
    if store is not None:
        st = open_store(store, create=False)
        try:
            result = st.verify()
        finally:
            st.close()
        for head in result.chains:
            console.print(f"chain {head.sensor_id}: {head.count} records, head #{head.head_seq} {head.head_hash[:16]}…", highlight=False, markup=False)
        for problem in result.problems:
            console.print(Text.assemble(("BROKEN ", "red"), problem.line()), highlight=False)
        if not result.ok:
            raise typer.Exit(1)
        console.print(f"[green]OK[/] {result.records} records in {len(result.chains)} chains verify")


@rules_app.command("validate")
def rules_validate(
    pack: Annotated[Optional[Path], typer.Argument(help="Rule pack YAML (default: the shipped Gretel Hybrid pack).")] = None,
    overlay: OverlayOpt = None,
) -> None:
    """Check a pack and its overlays; one line naming file, line and fix on error (exit 3)."""
    from auditor.rules import load_pack
    from auditor.rules.explain import validate_summary

    for line in validate_summary(load_pack(pack, overlay or [])):
        console.print(line, highlight=False, markup=False)


@rules_app.command("show")
def rules_show(
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    all_rules: Annotated[bool, typer.Option("--rules", help="Also list every rule.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output: the composed pack.")] = False,
) -> None:
    """What is allowed, to whom, how, and which line of the contract says so."""
    from auditor.rules import load_pack
    from auditor.rules.explain import contract_table, forbidden_table, kinds_table, pack_json, pack_table, rules_table

    loaded = load_pack(pack, overlay or [])
    if as_json:
        console.print_json(pack_json(loaded))
        return
    console.print(pack_table(loaded))
    console.print(contract_table(loaded))
    console.print(kinds_table(loaded))
    console.print(forbidden_table(loaded))
    if all_rules:
        console.print(rules_table(loaded))


@rules_app.command("explain")
def rules_explain(
    target: Annotated[str, typer.Argument(help="HOST or HOST:PORT (port 443 when omitted).")],
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="HTTP method.")] = None,
    path: Annotated[Optional[str], typer.Option("--path", "-p", help="HTTP path, e.g. /bucket/key.")] = None,
    scope: Annotated[Optional[str], typer.Option("--scope", help="pod or node (default: both).")] = None,
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
) -> None:
    """Which rule decides HOST[:PORT] and why; exit 0 allowed, 1 violation, 2 unverified."""
    from auditor.rules import load_pack
    from auditor.rules.explain import explain, explain_exit_code, explanation_renderable, explanations_json

    explanations = explain(load_pack(pack, overlay or []), target, method=method, path=path, scope=scope)
    if as_json:
        console.print_json(explanations_json(explanations))
    else:
        for ex in explanations:
            console.print(explanation_renderable(ex), highlight=False)
    raise typer.Exit(explain_exit_code(explanations))


keys_app = typer.Typer(help="Signing keys for report attestations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="Directory for auditor-signing.key (mode 0600) and auditor-signing.pub.")],
) -> None:
    """Create an Ed25519 key pair for signing report bundles."""
    from auditor.report.intoto import generate_keys

    private, public, kid = generate_keys(out)
    console.print(f"private key {private} (mode 0600)\npublic key  {public}\nkey id      {kid}", highlight=False, markup=False)


@app.command()
def report(
    store: StoreOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    since: Annotated[Optional[datetime], TimeOpt] = None,
    until: Annotated[Optional[datetime], TimeOpt] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="Comma-separated: html,json,sarif,junit,intoto (default: all; intoto needs --sign).")] = None,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key: sign an in-toto attestation of the bundle.")] = None,
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    min_coverage: Annotated[Optional[str], typer.Option("--min-coverage", help="Below this share (0.95 or 95%) the verdict cannot be PASS.")] = None,
) -> None:
    """Write the attestation report; exit 0 PASS, 1 FAIL, 2 INCONCLUSIVE."""
    from auditor.report.bundle import make_report, parse_formats, parse_min_coverage
    from auditor.rules import load_pack
    from auditor.store.base import open_store

    open_store(store, create=False).close()  # a store that is missing or not a store is refused before --out is made
    outcome = make_report(
        store, out, load_pack(pack, overlay or []),
        formats=parse_formats(fmt, sign is not None), since=_utc(since), until=_utc(until),
        min_coverage=parse_min_coverage(min_coverage), sign_key=sign,
        pack_path=str(pack) if pack else None, overlays=[str(o) for o in overlay or []],
    )
    for kind, path in outcome.files.items():
        console.print(f"{kind:7} {path}", highlight=False, markup=False, soft_wrap=True)
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}[outcome.status]
    console.print(f"[{colour}]{outcome.status}[/]: ", end="")
    console.print(f"{outcome.reason} ({outcome.findings} findings in all)", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


@app.command("classify")
def classify_cmd(
    file: Annotated[Path, typer.Argument(help="A request body saved to a file.")],
    route: Annotated[Optional[str], typer.Option("--route", help="As sent on this route, e.g. 'POST /v1/workflows'.")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Destination host (default: judge by route alone).")] = None,
    content_type: Annotated[Optional[str], typer.Option("--content-type", help="Content-Type of the body.")] = None,
    encoding: Annotated[Optional[str], typer.Option("--encoding", help="Content-Encoding, e.g. gzip or 'gzip, br'.")] = None,
    fingerprints: Annotated[Optional[Path], typer.Option("--fingerprints", help="Fingerprint file from `auditor fingerprint`.")] = None,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help="The key the fingerprints were made with.")] = None,
    canaries: Annotated[Optional[Path], typer.Option("--canaries", help="Canary token list from `auditor canary`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
) -> None:
    """Classify one body: labels, metadata kinds, findings, what was not inspected; exit 1 on a violation label."""
    from auditor.classify.commands import classify_file, exit_code, summary_lines, summary_table

    info = classify_file(file, route=route, host=host, content_type=content_type, encoding=encoding, fingerprints=fingerprints, key_file=key_file, canaries=canaries)
    if as_json:
        console.print_json(info.model_dump_json())
    else:
        for line in summary_lines(info):
            console.print(line, highlight=False, markup=False)
        if info.findings:
            console.print(summary_table(info))
    raise typer.Exit(exit_code(info))


@app.command("fingerprint")
def fingerprint_cmd(
    data: Annotated[Path, typer.Argument(help="Training data: .csv, .tsv, .jsonl or .parquet.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Fingerprint file to write.")],
    key_file: Annotated[Path, typer.Option("--key-file", help="Secret key (16+ bytes); keep it apart from the fingerprint file.")],
) -> None:
    """Keyed hashes of every informative cell with its row, so egress holding two cells of a row is caught."""
    from auditor.classify.commands import fingerprint

    result = fingerprint(data, out, key_file)
    h = result.header
    console.print(f"{result.path}: {h.rows} rows, {h.distinct} distinct cells ({h.records} cell-row records, {h.dropped_common} common values left out), key id {h.key_id}", highlight=False, markup=False)


@app.command("canary")
def canary_cmd(
    count: Annotated[int, typer.Option("--count", help="How many canary records.")] = 10,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Records file (default: stdout).")] = None,
    tokens: Annotated[Optional[Path], typer.Option("--tokens", help="Token list for `auditor classify --canaries` (default: OUT.tokens, or ./canaries.tokens).")] = None,
) -> None:
    """Synthetic records with unique tokens to plant in training data; any sighting in egress is critical."""
    from auditor.classify.commands import canary

    result = canary(count, fmt, out, tokens)
    if out is None:
        sys.stdout.write(result.text)
    else:
        err.print(f"wrote {result.records} canary records to {out}", highlight=False, markup=False)
    err.print(f"token list: {result.tokens}", highlight=False, markup=False)


proxy_app = typer.Typer(help="The proxy sensor (mitmproxy): record and judge every request; `proxy ca` makes its CA.", invoke_without_command=True)
app.add_typer(proxy_app, name="proxy")
ConfdirOpt = Annotated[Path, typer.Option("--confdir", help="Where the proxy CA lives (mitmproxy's confdir).")]


@proxy_app.callback()
def proxy(
    ctx: typer.Context,
    store: Annotated[Optional[str], typer.Option("--store", "-s", help="Evidence store: a SQLite file path or a postgresql:// URL.")] = None,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on.")] = "127.0.0.1:8080",
    mode: Annotated[str, typer.Option("--mode", help="audit (record only) or enforce (refuse violations).")] = "audit",
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    upstream_ca: Annotated[Optional[Path], typer.Option("--upstream-ca", help="Also trust this CA for upstream servers.")] = None,
    connect_to: Annotated[Optional[list[str]], typer.Option("--connect-to", help="HOST:PORT:ADDR:PORT, curl's semantics; repeatable.")] = None,
    passthrough: Annotated[Optional[list[str]], typer.Option("--passthrough", help="Host (SNI) whose TLS is not opened; repeatable.")] = None,
    inspect_cap: Annotated[int, typer.Option("--inspect-cap", help="Bodies up to this many bytes are classified whole.")] = 1024 * 1024,
    enforce_cap: Annotated[int, typer.Option("--enforce-cap", help="Enforce mode: request bodies are held and judged whole up to this many bytes; larger ones are refused (413).")] = 32 * 1024 * 1024,
    confdir: ConfdirOpt = Path("~/.auditor/proxy"),
    sensor_id: Annotated[Optional[str], typer.Option("--sensor-id", help="Sensor id (starts with 'proxy').")] = None,
    inventory: Annotated[Optional[Path], typer.Option("--inventory", help="Kubernetes inventory snapshot (auditor k8s snapshot) naming the pods.")] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Watch pods and nodes live to name them (in-cluster or kubeconfig).")] = False,
    fingerprints: Annotated[Optional[Path], typer.Option("--fingerprints", help="Dataset fingerprints to look for (auditor fingerprint).")] = None,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help="The key the fingerprints were made with.")] = None,
    canaries: Annotated[Optional[Path], typer.Option("--canaries", help="Canary token list to look for (auditor canary).")] = None,
    classify_workers: Annotated[Optional[int], typer.Option("--classify-workers", help="Processes classifying held bodies of 32 KiB and more off the event loop (default: cores - 1, at most 4; 0: none).")] = None,
) -> None:
    """Run the proxy until SIGINT/SIGTERM; the store is flushed and a stop record chained on exit."""
    if ctx.invoked_subcommand is not None:
        return
    from auditor.proxy.runner import ProxyConfig, run_proxy
    from auditor.store.base import redact_url

    if store is None:
        raise AuditorError("no evidence store", fix="pass --store FILE.db or a postgresql:// URL")
    if mode not in ("audit", "enforce"):
        raise AuditorError(f"--mode {mode!r} is not audit or enforce", fix="pass --mode audit or --mode enforce")
    config = ProxyConfig.from_cli(
        listen, store=store, mode=mode, pack=pack, overlays=overlay or [], upstream_ca=upstream_ca,
        connect_to=connect_to or [], passthrough=passthrough or [], inspect_cap=inspect_cap, enforce_cap=enforce_cap, confdir=confdir,
        sensor_id=sensor_id, inventory=inventory, kubernetes=kubernetes, fingerprints=fingerprints, key_file=key_file,
        canaries=canaries, classify_workers=classify_workers,
    )
    addon = run_proxy(config, on_ready=lambda host, port: err.print(f"proxy listening on {host}:{port} ({mode} mode), evidence to {redact_url(store)}", highlight=False, markup=False))
    counts = ", ".join(f"{n} {k}" for k, n in addon.counts.items())
    err.print(f"proxy stopped: {counts}", highlight=False, markup=False)


@proxy_app.command("ca")
def proxy_ca(confdir: ConfdirOpt = Path("~/.auditor/proxy")) -> None:
    """Create the proxy CA (key mode 0600) unless it exists, and print the certificate for the pods."""
    from auditor.proxy.ca import ensure_ca

    ca = ensure_ca(confdir)
    err.print(
        f"{'created' if ca.created else 'using'} CA {ca.subject} (sha256 {ca.sha256}, valid until {ca.not_after}); "
        f"key {ca.key_and_cert} (0600), certificate {ca.cert}. Give the certificate to the pods "
        "(Gretel's chart: gretelConfig.caOverride).",
        highlight=False, markup=False,
    )
    sys.stdout.write(ca.pem)


@store_app.command("migrate")
def store_migrate(store: StoreOpt) -> None:
    """Bring the store's schema to this auditor's version (creates an empty store's schema)."""
    from auditor.store.ops import migrate_store

    result = migrate_store(store)
    done = f"applied {', '.join(map(str, result.applied))}" if result.applied else "up to date"
    console.print(f"{result.store}: schema version {result.before} -> {result.after} ({done})", highlight=False, soft_wrap=True)


@store_app.command("copy")
def store_copy(
    source: Annotated[str, typer.Argument(help="Store to copy from: a SQLite path or a postgresql:// URL.")],
    destination: Annotated[str, typer.Argument(help="Store to copy into (created if empty; must not hold the same chains).")],
) -> None:
    """Copy every chain byte for byte, then verify the copy against the source's chain heads."""
    from auditor.store.ops import copy_store

    result = copy_store(source, destination)
    for head in result.chains:
        console.print(f"chain {head.sensor_id}: {head.count} records, head #{head.head_seq} {head.head_hash[:16]}…", highlight=False, soft_wrap=True)
    console.print(f"[green]OK[/] copied {result.records} records from {result.source} to {result.destination}; the copy verifies", highlight=False, soft_wrap=True)


@store_app.command("retain")
def store_retain(
    store: StoreOpt,
    before: Annotated[datetime, typer.Option("--before", help="Remove records older than this (UTC).", formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"])],
    force: Annotated[bool, typer.Option("--force", help="Accept a --before in the future: every record written so far goes.")] = False,
) -> None:
    """Remove each chain's records older than --before and chain what was removed, so verify still passes."""
    from auditor.store.ops import retain_store

    result = retain_store(store, _utc(before), force=force)  # type: ignore[arg-type]
    for sensor_id, prefix in sorted(result.chains.items()):
        console.print(f"chain {sensor_id}: removed {prefix.removed} records, now starts after #{prefix.through_seq} {prefix.last_hash[:16]}…", highlight=False, soft_wrap=True)
    if result.record_seq is None:
        console.print(f"nothing older than {result.before.isoformat()} to remove", highlight=False, soft_wrap=True)
    else:
        console.print(f"removed {result.removed} records older than {result.before.isoformat()}; recorded as retention record #{result.record_seq}", highlight=False, soft_wrap=True)


k8s_app = typer.Typer(help="Kubernetes: inventory snapshot, sensor manifests, preflight of a Gretel Hybrid install.", no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")
KubeconfigOpt = Annotated[Optional[Path], typer.Option("--kubeconfig", help="Kubeconfig file (default: in-cluster account, else ~/.kube/config).")]
ContextOpt = Annotated[Optional[str], typer.Option("--context", help="Kubeconfig context.")]
HybridNsOpt = Annotated[str, typer.Option("--namespace", "-n", help="The Gretel Hybrid namespace.")]
AuditorNsOpt = Annotated[str, typer.Option("--auditor-namespace", help="Where the probe and proxy run.")]
ApiServerOpt = Annotated[Optional[list[str]], typer.Option("--api-server", help="Kubernetes API server IP/CIDR the hybrid pods may reach; repeatable.")]


@k8s_app.command("snapshot")
def k8s_snapshot(
    out: Annotated[Path, typer.Option("--out", "-o", help="Snapshot file (JSON) to attribute imported evidence with.")],
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: Annotated[Optional[list[str]], typer.Option("--namespace", "-n", help="Namespace to inventory; repeatable; '*' for all (default gretel-hybrid).")] = None,
    selector: Annotated[Optional[list[str]], typer.Option("--selector", "-l", help="Label selector; repeatable (each is listed on its own).")] = None,
    node: Annotated[Optional[str], typer.Option("--node", help="Only pods on this node.")] = None,
    overlay: Annotated[Optional[Path], typer.Option("--overlay", help="Site overlay: its cluster CIDRs are used when the API has none.")] = None,
    follow: Annotated[float, typer.Option("--follow", help="Keep watching this many seconds before writing (pods that come and go are kept).")] = 0.0,
    store: Annotated[Optional[str], typer.Option("--store", "-s", help="With --follow: chain API outages (gaps) into this store.")] = None,
) -> None:
    """Write IP → pod/node over time to a file; `auditor import` evidence can then be attributed after the fact."""
    from auditor.k8s.commands import snapshot

    s = snapshot(out, kubeconfig=kubeconfig, context=context, namespaces=namespace or ["gretel-hybrid"], selectors=selector or [],
                 node=node, overlay=overlay, follow=follow, store=store)
    cidrs = ", ".join(f"{k} from {v}" for k, v in sorted(s.cidr_sources.items()))
    console.print(f"wrote {s.path}: {s.pods} pods, {s.nodes} nodes, {s.holdings} IP holdings, {s.gaps} API gaps ({cidrs})", highlight=False)


@k8s_app.command("attribute")
def k8s_attribute(
    events_file: Annotated[Path, typer.Argument(help="JSON lines, one EgressEvent per line.")],
    inventory: Annotated[Path, typer.Option("--inventory", "-i", help="A snapshot from `auditor k8s snapshot`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Attributed JSON lines (then `auditor ingest` them).")],
) -> None:
    """Fill each event's source pod/node from a saved inventory: attribution after the fact."""
    from auditor.k8s.attribute import attribute_jsonl

    result = attribute_jsonl(events_file, inventory, out)
    for problem in result.problems:
        err.print(problem, highlight=False, markup=False)
    console.print(f"wrote {out}: {result.events} events, {result.to_pods} to pods, {result.to_nodes} to nodes, rejected {result.rejected} lines", highlight=False)
    if result.rejected:
        raise typer.Exit(3)


@k8s_app.command("manifests")
def k8s_manifests(
    namespace: HybridNsOpt = "gretel-hybrid",
    mode: Annotated[str, typer.Option("--mode", help="audit (record) or enforce (the proxy refuses violations).")] = "audit",
    store_url: Annotated[Optional[str], typer.Option("--store-url", help="Where the sensors write (postgresql://... to collect centrally; default a SQLite file per node).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write boundary-auditor.yaml and gretel-values.yaml here (default: print the manifests).")] = None,
    auditor_namespace: AuditorNsOpt = "boundary-auditor",
    image: Annotated[str, typer.Option("--image", help="The auditor's container image.")] = "boundary-auditor:0.1.0",
    ca: Annotated[Optional[Path], typer.Option("--ca", help="The proxy CA (mitmproxy-ca.pem or its confdir, from `auditor proxy ca`); default: a new one.")] = None,
    api_server: ApiServerOpt = None,
    service_cidr: Annotated[Optional[list[str]], typer.Option("--service-cidr", help="Service CIDR to leave out of the proxy (no_proxy); repeatable.")] = None,
) -> None:
    """Probe DaemonSet, proxy Deployment/Service/CA, RBAC, egress NetworkPolicy, and values for Gretel's chart."""
    from auditor.k8s.commands import manifests

    if mode not in ("audit", "enforce"):
        raise AuditorError(f"--mode {mode!r} is not audit or enforce", fix="pass --mode audit or --mode enforce")
    result, written = manifests(out, hybrid_namespace=namespace, namespace=auditor_namespace, mode=mode,  # type: ignore[arg-type]
                                store_url=store_url, image=image, ca=ca, api_servers=api_server or [], service_cidrs=service_cidr or [])
    if not written:
        sys.stdout.write(result.manifests_yaml())
    for path in written:
        err.print(f"wrote {path}", highlight=False, markup=False)
    err.print(f"{len(result.objects)} objects, each checked against the Kubernetes client's models", highlight=False, markup=False)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False, markup=False)


@k8s_app.command("preflight")
def k8s_preflight(
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: HybridNsOpt = "gretel-hybrid",
    auditor_namespace: AuditorNsOpt = "boundary-auditor",
    store_url: Annotated[Optional[str], typer.Option("--store-url", help="The store the sensors write to (checked for reachability).")] = None,
    api_server: ApiServerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
) -> None:
    """Check a live Gretel Hybrid install is ready to audit; exit 0 all pass, 1 any fail, 2 warnings only."""
    from auditor.k8s.commands import run_preflight
    from auditor.k8s.preflight import preflight_table

    result = run_preflight(kubeconfig=kubeconfig, context=context, hybrid_namespace=namespace, namespace=auditor_namespace,
                           store_url=store_url, api_servers=api_server or [])
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        console.print(preflight_table(result))
    raise typer.Exit(result.exit_code)


@app.command()
def probe(
    store: StoreOpt,
    iface: Annotated[str, typer.Option("--iface", help="Interface to capture on live ('any' for all).")] = "any",
    pcap: Annotated[Optional[Path], typer.Option("--pcap", help="Read this pcap/pcapng file (gzip'd or not) instead of capturing.")] = None,
    bpf: Annotated[Optional[str], typer.Option("--bpf", help="libpcap filter for live capture (default: all IP).")] = None,
    pack: PackOpt = None,
    overlay: OverlayOpt = None,
    duration: Annotated[Optional[float], typer.Option("--duration", help="Seconds to capture live (default: until Ctrl-C).")] = None,
    sensor_id: Annotated[str, typer.Option("--sensor-id", help="This probe's chain in the store (must start with 'probe').")] = "probe",
    cidr: Annotated[Optional[list[str]], typer.Option("--cluster-cidr", help="Inside the cluster (default: the overlay's, else private ranges); repeatable.")] = None,
    dns_server: Annotated[Optional[list[str]], typer.Option("--cluster-dns", help="The cluster's resolver IP (default: the overlay's); repeatable.")] = None,
    proxy: Annotated[Optional[list[str]], typer.Option("--proxy", help="Audit proxy IP:PORT for bypass checks (default: the overlay's); repeatable.")] = None,
    inventory: Annotated[Optional[Path], typer.Option("--inventory", help="Kubernetes inventory snapshot (auditor k8s snapshot) naming pods and nodes.")] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Watch the Kubernetes API to name pods and nodes (live capture).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Capture flows, DNS and TLS/QUIC server names (live or from a file) into the store; Ctrl-C flushes and stops."""
    import signal
    import threading

    from rich.live import Live

    from auditor.probe.capture import DEFAULT_BPF
    from auditor.probe.runner import ProbeSummary, probe_options, run_probe, summary_table

    if not sensor_id.startswith("probe"):
        raise AuditorError(f"sensor id {sensor_id!r} must start with 'probe'", fix="e.g. --sensor-id probe-node1")
    if pcap is not None and bpf is not None:
        raise AuditorError("--bpf filters a live capture; a file is read whole", fix=f"drop --bpf, or filter the file first: tcpdump -r {pcap} -w part.pcap 'FILTER'")
    options = probe_options(
        store=store, pcap=pcap, iface=iface, bpf=bpf or DEFAULT_BPF, duration=duration, pack=pack, overlays=overlay or [],
        inventory=inventory, kubernetes=kubernetes,
        config=dict(sensor_id=sensor_id, cluster_cidrs=cidr or [], cluster_dns=dns_server or [], proxies=proxy or []),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    live = Live(console=err, refresh_per_second=4, transient=as_json)

    def show(summary: ProbeSummary) -> None:
        if not live.is_started:  # started late: the judging process is forked before a display thread exists
            live.start()
        live.update(summary_table(summary))

    try:
        summary = run_probe(options, stop=stop, on_tick=show)
    finally:
        live.stop()
    if as_json:
        console.print_json(summary.model_dump_json())
    if summary.problem:
        err.print(f"warning: {summary.problem} (recorded in the store)", highlight=False, markup=False)


def main() -> None:
    """Entry point: errors of use become one line and exit 3, never a traceback."""
    try:
        rv = app(standalone_mode=False)
    except AuditorError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(3)
    except FileNotFoundError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(3)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
