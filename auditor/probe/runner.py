"""Runs the probe: a capture source into the engine, the engine's events through
the policy into the store, with the sensor's own life (start, config, drops,
errors, stop) chained beside them so a gap in monitoring is evidence.

`run_pcap` and `run_live` are what `auditor probe` calls; `events_from_pcap`
is the same pipeline without a store, for importers. Reading a file into a store,
the policy and the store run in a forked process (`judge.JudgeProcess`), beside the
reader; live, they run here, behind the writer's queue, which never blocks capture.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError
from rich.table import Table

from auditor.errors import AuditorError
from auditor.model import Decision, EgressEvent, sensor_event
from auditor.probe.capture import DEFAULT_BPF, CaptureStats, FileCapture, LiveCapture
from auditor.probe.coverage import ProxyIndex, mark_bypass, mark_unnamed_registries, proxy_heads, timestamp_us
from auditor.probe.engine import EventDoc, Probe, ProbeConfig, ProbeStats, when
from auditor.probe.flows import Networks
from auditor.probe.judge import JudgeProcess, peak_memory_mb
from auditor.rules import registry
from auditor.store.base import Store, open_store
from auditor.store.writer import BatchWriter

if TYPE_CHECKING:
    from auditor.k8s.inventory import Inventory, InventoryConfig, InventoryWatcher
    from auditor.rules import Pack

VERSION = "0.1.0"
TICK_SECONDS = 0.5
BYPASS_GRACE_S = 5.0  # a proxy records a request when it completes: wait for it
MAX_BACKLOG = 20_000  # offline: how far the reader may run ahead of the writer


class ProbeSummary(BaseModel):
    sensor_id: str
    source: str
    started: datetime
    seconds: float = 0.0
    stats: ProbeStats = Field(default_factory=ProbeStats)
    capture: CaptureStats = Field(default_factory=CaptureStats)
    events_submitted: int = 0
    events_written: int = 0
    writer_dropped: int = 0
    bypass: int = 0
    judged: bool = False
    problem: str | None = None
    peak_memory_mb: int = 0  # this process
    judge_peak_memory_mb: int = 0  # the forked judging process, when reading a file into a store

    @property
    def packets_per_second(self) -> float:
        return self.stats.packets / self.seconds if self.seconds else 0.0


def config_from_pack(pack: Pack | None, base: ProbeConfig | None = None) -> tuple[ProbeConfig, Networks]:
    """Cluster CIDRs, cluster DNS and the proxy from the pack's site overlay; flags given
    in `base` win. The pack's own internal networks (cluster DNS, proxy address) count as inside too."""
    cfg = (base or ProbeConfig()).model_copy(deep=True)
    if pack is not None:
        site = pack.site
        if not cfg.cluster_cidrs:
            cfg.cluster_cidrs = [*site.pod_cidrs, *site.service_cidrs, *site.node_cidrs]
        if not cfg.cluster_dns:
            cfg.cluster_dns = list(site.dns_servers)
        hp = site.proxy_host_port
        if hp is not None and not cfg.proxies:
            host, port = hp
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                cfg.proxies = sorted({f"{info[4][0]}:{port}" for info in infos})
            except OSError as exc:
                raise AuditorError(f"cannot resolve the proxy {host} from the site overlay: {exc}", fix="give the proxy as an IP address in the overlay") from exc
    return cfg, Networks(cfg.cluster_cidrs or None, [str(n) for n in pack.internal_networks] if pack is not None else ())


class _Session:
    """Engine -> policy -> writer, plus lifecycle records and bypass matching."""

    def __init__(
        self,
        config: ProbeConfig,
        networks: Networks,
        source: str,
        pack: Pack | None,
        *,
        store_url: str | None,
        sink: Callable[[EgressEvent], None] | None = None,
        inventory: Inventory | None = None,
        kubernetes: InventoryConfig | None = None,
        fork_judge: bool = False,
    ) -> None:
        self.config = config
        self.pack = pack
        self.inventory = inventory
        self.watcher: InventoryWatcher | None = None
        self.probe = Probe(config, networks=networks)
        self.summary = ProbeSummary(sensor_id=config.sensor_id, source=source, started=datetime.now(UTC), judged=pack is not None)
        # Judged and stored by a forked process (`judge`), or here (`writer`, after `evaluate`).
        self.judge = JudgeProcess(store_url, config.sensor_id, pack) if store_url and fork_judge else None
        self.store: Store | None = open_store(store_url) if store_url and self.judge is None else None
        self.reader: Store | None = open_store(store_url) if store_url else None
        self.writer = BatchWriter(self.store, config.sensor_id) if self.store is not None else None
        self._sink = sink
        self.index = ProxyIndex()
        self._proxy_seqs: dict[str, int] | None = None  # the proxy chains' seqs read so far (`ProxyIndex.tail`)
        self._index_from = datetime.max.replace(tzinfo=UTC)  # the proxy's records are read from here on
        self._t0 = time.monotonic()
        self._dropped_seen = CaptureStats()
        detail = {
            "source": source,
            "cluster_cidrs": config.cluster_cidrs or "default private ranges",
            "cluster_dns": config.cluster_dns or "any resolver inside the cluster",
            "proxies": config.proxies,
            "bypass_check": config.bypass_enabled,
            "pack": pack.digest if pack is not None else None,
        }
        self.submit(sensor_event(config.sensor_id, "start", version=VERSION, config_digest=config.digest(), detail=f"probe on {source}"))
        if kubernetes is not None:
            from auditor.k8s.cluster import api_client  # noqa: PLC0415 - only with --kubernetes
            from auditor.k8s.inventory import start_inventory  # noqa: PLC0415

            self.watcher = start_inventory(api_client(), kubernetes, self.writer)
            self.inventory = self.watcher.inventory
        detail["inventory"] = "kubernetes" if kubernetes is not None else "snapshot" if inventory is not None else None
        self.submit(
            sensor_event(config.sensor_id, "config", version=VERSION, config_digest=config.digest(), detail=json.dumps(detail, sort_keys=True))
        )

    def submit(self, ev: EgressEvent) -> None:
        self.submit_all((ev,))

    def submit_all(self, events: Iterable[EgressEvent | EventDoc]) -> None:
        """Attribute (the pod or node that held the address then: the policy needs the scope),
        judge, and hand on. In bursts: this runs once per event of a busy capture."""
        inventory, pack = self.inventory, self.pack
        attribute: Callable[[EgressEvent, Inventory], EgressEvent] | None = None
        evaluate: Callable[[EgressEvent, Pack], Decision | None] | None = None
        if inventory is not None:
            from auditor.k8s import attribute as k8s_attribute  # noqa: PLC0415

            attribute = k8s_attribute.attribute
        if pack is not None:
            from auditor.rules import policy  # noqa: PLC0415 - the policy is optional for raw capture

            evaluate = policy.evaluate
        hand_on = self.writer.submit if self.writer is not None else None
        sink = self._sink
        n = 0
        if self.judge is not None:  # the judge process validates and evaluates; attribution stays here, with the inventory
            docs = [e if isinstance(e, dict) else e.model_dump() for e in events]
            if attribute is not None and inventory is not None:
                docs = [d if d["kind"] == "sensor" else attribute(EgressEvent.model_validate(d), inventory).model_dump() for d in docs]
            self.judge.send(docs)
            self.summary.events_submitted += len(docs)
            return
        for e in events:
            ev = EgressEvent.model_validate(e) if isinstance(e, dict) else e
            if ev.kind != "sensor":
                if attribute is not None and inventory is not None:
                    ev = attribute(ev, inventory)
                if evaluate is not None and pack is not None:
                    ev.decision = evaluate(ev, pack)
            if hand_on is not None:
                hand_on(ev)
            if sink is not None:
                sink(ev)
            n += 1
        self.summary.events_submitted += n

    def pump(self, now_us: int | None, *, final: bool = False, backpressure: bool = False) -> None:
        """Move what the engine produced on; decide held flows once the proxy had time to record them."""
        probe = self.probe
        if probe.out:
            out, probe.out = probe.out, []
            self.submit_all(out)
        if probe.held:
            if final:
                ready, probe.held = probe.held, []
            else:
                cutoff = when(now_us or 0) - timedelta(seconds=BYPASS_GRACE_S)
                ready = [e for e in probe.held if e.flow and e.flow.last_seen and e.flow.last_seen <= cutoff]
                if ready:
                    probe.held = [e for e in probe.held if not (e.flow and e.flow.last_seen and e.flow.last_seen <= cutoff)]
            if ready:
                self._refresh_index(ready)
                n = mark_bypass(ready, self.index, BYPASS_GRACE_S)
                self.summary.bypass += n
                mark_unnamed_registries(ready, self.index)
                for ev in ready:
                    probe.obs_counts.update(ev.observations)  # held events were not counted when built
                self.submit_all(ready)
        if backpressure and self.writer is not None:
            while self.summary.events_submitted - self.writer.written - self.writer.dropped > MAX_BACKLOG:
                time.sleep(0.005)

    def prime_index(self, start: datetime) -> None:
        """The proxy's records from `start` on, and the get_login answer in force then,
        read once; after that a refresh reads only what the proxy appends. A live probe
        primes before its capture loop, so that read never holds the loop up."""
        if self.reader is None or self._proxy_seqs is not None:
            return
        self._proxy_seqs = proxy_heads(self.reader)  # before the read: whatever lands after it is tailed
        for host, at in registry.named_in(self.reader, start - registry.LOOKBACK, start).items():
            self.index.name_registry(host, timestamp_us(at))
        self.index.load(self.reader, start, None)
        self._index_from = start

    def _refresh_index(self, flows: list[EgressEvent]) -> None:
        """Read the proxy's records the flows need: what it appended since the last read
        (however late it wrote them), and anything older than ever read."""
        if self.reader is None:
            return
        pad = timedelta(seconds=BYPASS_GRACE_S)
        lo = min(e.flow.first_seen for e in flows if e.flow and e.flow.first_seen) - pad
        if self._proxy_seqs is None:
            self.prime_index(lo)
        else:
            if lo < self._index_from:
                self.index.load(self.reader, lo, self._index_from)
                self._index_from = lo
            self.index.tail(self.reader, self._proxy_seqs)
        held = [e.flow.first_seen for e in self.probe.held if e.flow and e.flow.first_seen]
        oldest = min([*held, *(e.flow.first_seen for e in flows if e.flow and e.flow.first_seen)]) - pad
        self.index.prune(oldest)  # a long-running probe keeps only what open questions need
        self._index_from = max(self._index_from, oldest)

    def drops(self, stats: CaptureStats) -> None:
        """Chain any growth of the kernel's or the interface's drop counters."""
        sid = self.config.sensor_id
        seen = self._dropped_seen
        if stats.dropped > seen.dropped:
            self.submit(sensor_event(sid, "drop", dropped=stats.dropped - seen.dropped, detail="kernel: capture buffer full (libpcap ps_drop)"))
        if stats.if_dropped > seen.if_dropped:
            self.submit(sensor_event(sid, "drop", dropped=stats.if_dropped - seen.if_dropped, detail="interface or driver (libpcap ps_ifdrop)"))
        self._dropped_seen = stats.model_copy()
        self.summary.capture = stats

    def refresh_summary(self) -> ProbeSummary:
        s = self.summary
        s.seconds = time.monotonic() - self._t0
        s.stats = self.probe.stats()
        s.peak_memory_mb = peak_memory_mb()
        if self.writer is not None:
            s.events_written = self.writer.written
            s.writer_dropped = self.writer.dropped
        elif self.judge is not None:
            s.events_written, s.writer_dropped = self.judge.progress()
        return s

    def close(self) -> ProbeSummary:
        self.pump(None, final=True)
        s = self.refresh_summary()
        detail = {
            "packets": s.stats.packets,
            "bytes": s.stats.bytes,
            "flows": s.stats.flows,
            "dns": s.stats.dns,
            "tls": s.stats.tls,
            "malformed": s.stats.malformed,
            "non_ip": s.stats.non_ip,
            "fragments": s.stats.fragments,
            "reassembled": s.stats.reassembled,
            "other_protocols": s.stats.other_protocols,
            "evicted_flows": s.stats.evicted_flows,
            "kernel_dropped": s.capture.dropped,
            "if_dropped": s.capture.if_dropped,
            "observations": s.stats.observations,
        }
        self.submit(sensor_event(self.config.sensor_id, "stop", version=VERSION, detail=json.dumps(detail, sort_keys=True)))
        if self.watcher is not None:
            self.watcher.stop()
        if self.writer is not None:
            self.writer.close()
            s.events_written = self.writer.written
            s.writer_dropped = self.writer.dropped
        try:
            if self.judge is not None:
                self.judge.close()
                s.events_written = self.judge.written
                s.writer_dropped = self.judge.dropped
                s.judge_peak_memory_mb = self.judge.peak_memory_mb
        finally:
            for st in (self.store, self.reader):
                if st is not None:
                    st.close()
        return s


def feed_file(probe: Probe, cap: FileCapture) -> Iterator[int]:
    """Read the whole capture into the probe, yielding the packets read after each step
    so the caller can move events on: pcap files in blocks through the batched path,
    pcapng frame by frame."""
    if cap.format == "pcap":
        for block in cap.blocks():
            yield probe.feed_block(block)
        return
    frames = cap.frames()
    while n := probe.feed(frames, 1024):
        yield n


def run_pcap(
    path: str | Path,
    store_url: str | None,
    *,
    config: ProbeConfig | None = None,
    pack: Pack | None = None,
    stop: threading.Event | None = None,
    on_tick: Callable[[ProbeSummary], None] | None = None,
    sink: Callable[[EgressEvent], None] | None = None,
    inventory: Inventory | None = None,
) -> ProbeSummary:
    """Read a pcap/pcapng file (gzip'd or not) into the store. A truncated or corrupt
    file keeps everything before the damage and records the damage as an error."""
    cfg, nets = config_from_pack(pack, config)
    cap = FileCapture(path)
    # With a store and no sink, a second process judges and stores (see judge.py); a sink
    # takes the judged events here, in this process.
    try:
        session = _Session(
            cfg, nets, f"pcap {Path(path).name}", pack, store_url=store_url, sink=sink, inventory=inventory, fork_judge=sink is None
        )
    except BaseException:
        cap.close()
        raise
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)  # flows are long-lived objects: collect them less often
    gc.freeze()  # what exists now (modules, the pack) is never scanned again in this run
    probe = session.probe
    next_tick = time.monotonic() + TICK_SECONDS
    try:
        for _ in feed_file(probe, cap):
            session.pump(probe.now_us, backpressure=True)
            if stop is not None and stop.is_set():
                session.summary.problem = "stopped before the end of the file"
                break
            if on_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_SECONDS
                on_tick(session.refresh_summary())
    finally:
        cap.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    probe.finish()
    if cap.problem:
        session.summary.problem = cap.problem
        session.submit(sensor_event(cfg.sensor_id, "error", detail=f"{Path(path).name}: {cap.problem}"))
    if cap.interface_drops:
        session.drops(CaptureStats(if_dropped=cap.interface_drops))
    summary = session.close()
    if on_tick is not None:
        on_tick(summary)
    return summary


def events_from_pcap(path: str | Path, *, config: ProbeConfig | None = None, pack: Pack | None = None) -> Iterator[EgressEvent]:
    """The events a capture file yields, lifecycle records included, without a store:
    streamed through a bounded queue, so a large capture never sits in memory."""
    cfg, _ = config_from_pack(pack, config)
    FileCapture(path).close()  # a file that is not a capture fails here, in the caller's thread
    out: queue.Queue[EgressEvent | BaseException | None] = queue.Queue(maxsize=10_000)
    stop = threading.Event()

    def work() -> None:
        try:
            run_pcap(path, None, config=cfg, pack=pack, sink=out.put, stop=stop)
            out.put(None)
        except BaseException as exc:  # handed to the consumer, who raises it
            out.put(exc)

    worker = threading.Thread(target=work, name="probe-pcap", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # let a stopped producer finish its last puts
            try:
                out.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()


def run_live(
    iface: str,
    store_url: str | None,
    *,
    bpf: str | None = DEFAULT_BPF,
    config: ProbeConfig | None = None,
    pack: Pack | None = None,
    duration: float | None = None,
    stop: threading.Event | None = None,
    on_tick: Callable[[ProbeSummary], None] | None = None,
    sink: Callable[[EgressEvent], None] | None = None,
    ready: threading.Event | None = None,
    inventory: Inventory | None = None,
    kubernetes: InventoryConfig | None = None,
) -> ProbeSummary:
    """Capture until `duration` passes or `stop` is set, then flush every open flow."""
    cfg, nets = config_from_pack(pack, config)
    stop = stop or threading.Event()
    cap = LiveCapture(iface, bpf)
    try:
        session = _Session(
            cfg, nets, f"live {iface} bpf={cap.bpf!r}", pack, store_url=store_url, sink=sink, inventory=inventory, kubernetes=kubernetes
        )
    except BaseException:
        cap.close()
        raise
    probe = session.probe
    probe.tick(int(time.time() * 1_000_000))
    session.prime_index(datetime.now(UTC) - timedelta(seconds=BYPASS_GRACE_S))
    handle = probe.packet
    deadline = time.monotonic() + duration if duration else None
    next_tick = time.monotonic() + TICK_SECONDS
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            frame = cap.next()
            if frame is not None:
                handle(*frame)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                wall = int(time.time() * 1_000_000)
                probe.tick(wall)
                session.pump(wall)
                session.drops(cap.stats())
                if on_tick is not None:
                    on_tick(session.refresh_summary())
            if deadline is not None and now >= deadline:
                break
        while (frame := cap.next()) is not None:  # drain what the kernel still holds
            handle(*frame)
    finally:
        session.drops(cap.stats())
        cap.close()
        probe.finish()
        summary = session.close()
    if on_tick is not None:
        on_tick(summary)
    return summary


def summary_table(s: ProbeSummary) -> Table:
    """The live view: what was seen, what was flagged, what was missed."""
    st = s.stats
    table = Table(title=f"probe {s.sensor_id}: {s.source}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    rate = f"{s.packets_per_second:,.0f}/s" if s.seconds else "-"
    rows = [
        ("packets", f"{st.packets:,} ({rate})"),
        ("bytes", f"{st.bytes:,}"),
        ("flows reported / open", f"{st.flows:,} / {st.active_flows:,}"),
        ("dns lookups", f"{st.dns:,}"),
        ("tls / quic hellos", f"{st.tls:,}"),
        ("events written", f"{s.events_written:,} of {s.events_submitted:,}"),
        ("malformed", f"{sum(st.malformed.values()):,}"),
        ("kernel / interface drops", f"{s.capture.dropped:,} / {s.capture.if_dropped:,}"),
        ("writer drops", f"{s.writer_dropped:,}"),
        ("peak memory", f"{s.peak_memory_mb:,} MB" + (f" (+ {s.judge_peak_memory_mb:,} MB judging)" if s.judge_peak_memory_mb else "")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for obs, count in sorted(st.observations.items()):
        table.add_row(f"[yellow]{obs}[/]", f"{count:,}")
    if s.problem:
        table.add_row("[red]problem[/]", s.problem)
    return table


class ProbeOptions(BaseModel):
    """What `auditor probe` was asked to do."""

    store: str
    pcap: Path | None = None
    iface: str = "any"
    bpf: str | None = DEFAULT_BPF
    duration: float | None = None
    pack: Path | None = None
    overlays: list[Path] = Field(default_factory=list)
    config: ProbeConfig = Field(default_factory=ProbeConfig)
    inventory: Path | None = None  # a snapshot from `auditor k8s snapshot`
    kubernetes: bool = False  # watch the API (in-cluster config or kubeconfig); also on with AUDITOR_K8S_INVENTORY


def probe_options(**fields: object) -> ProbeOptions:
    """Options from the command line; a bad value becomes one line naming it and the fix."""
    try:
        config = ProbeConfig(**fields.pop("config", {}))  # type: ignore[arg-type]
        return ProbeOptions(config=config, **fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "option"
        raise AuditorError(f"{where}: {first['msg']}", fix="--cluster-cidr takes a CIDR, --cluster-dns an IP, --proxy IP:PORT") from None


def run_probe(
    options: ProbeOptions, *, stop: threading.Event | None = None, on_tick: Callable[[ProbeSummary], None] | None = None
) -> ProbeSummary:
    """Load the pack (shipped one by default) and run on the file or the interface."""
    from auditor.rules import load_pack  # noqa: PLC0415

    pack = load_pack(options.pack, options.overlays)
    inventory = None
    if options.inventory is not None:
        from auditor.k8s.attribute import inventory_from_file  # noqa: PLC0415

        inventory = inventory_from_file(options.inventory)
    if options.pcap is not None:
        if not options.pcap.exists():
            raise AuditorError("no such capture file", file=str(options.pcap), fix="pass an existing pcap or pcapng file to --pcap")
        return run_pcap(options.pcap, options.store, config=options.config, pack=pack, stop=stop, on_tick=on_tick, inventory=inventory)
    kubernetes = None
    if inventory is None:
        from auditor.k8s.inventory import InventoryConfig, config_from_env  # noqa: PLC0415

        kubernetes = config_from_env(dict(os.environ)) or (InventoryConfig() if options.kubernetes else None)
        if kubernetes is not None:
            site = pack.site
            kubernetes = kubernetes.model_copy(update={
                "pod_cidrs": kubernetes.pod_cidrs or list(site.pod_cidrs), "service_cidrs": kubernetes.service_cidrs or list(site.service_cidrs),
                "node_cidrs": kubernetes.node_cidrs or list(site.node_cidrs), "sensor_id": f"{options.config.sensor_id}-k8s",
            })  # fmt: skip
    return run_live(
        options.iface, options.store, bpf=options.bpf, config=options.config, pack=pack, duration=options.duration, stop=stop,
        on_tick=on_tick, inventory=inventory, kubernetes=kubernetes,
    )  # fmt: skip
