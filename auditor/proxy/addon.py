"""The proxy sensor: one mitmproxy addon that records and judges every flow.

Loadable by stock mitmproxy (`mitmdump -s auditor/proxy/addon.py --set auditor_store=...`)
and used as is by `auditor proxy`. For every HTTP request, WebSocket message from the
client, raw TCP tunnel and TLS connection it could not open, it builds one `EgressEvent`,
asks the policy for a decision and hands the event to a bounded, batched store writer.
In enforce mode a destination violation is refused before any upstream connection; a
request body is held whole (up to the enforce cap, see `gate.py`) and judged before a
byte of it goes upstream: a payload violation is answered 403, a body over the cap 413.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import ipaddress
import json
import logging
import socket
import time
from collections import deque
from datetime import UTC, datetime
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.addons.next_layer import NextLayer as _NextLayerAddon
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.layers.tls import ServerTLSLayer
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from auditor.classify.decode import Budget, LimitExceeded, Limits, Undecodable, decode_content
from auditor.model import REFUSED_NOTE, Decision, EgressEvent, FlowInfo, PayloadInfo, Source, sensor_event
from auditor.proxy import checks
from auditor.proxy.routing import ConnectTo, Tunnel
from auditor.proxy.bodies import (
    DEFAULT_ENFORCE_CAP,
    DEFAULT_INSPECT_CAP,
    BodyContext,
    CountedBody,
    StreamedBody,
    decoded_size,
    inspect_held,
    inspect_whole,
)
from auditor.proxy.gate import FORWARDED, GATED, Gate, gate_layers
from auditor.proxy.h1 import TRAILERS_REFUSED, guard_responses
from auditor.proxy.pool import POOL_MIN_BYTES, ClassifyPool, ContextFiles, default_workers
from auditor.proxy.events import destination_of, http_info, reroute, rerouted_to, source_of, upstream_of, when
from auditor.rules import registry
from auditor.store.writer import BatchWriter

log = logging.getLogger("auditor.proxy")

try:
    _version = importlib.metadata.version("boundary-auditor")
except importlib.metadata.PackageNotFoundError:  # running from a checkout that was never installed
    _version = "unknown"

MODES = ("audit", "enforce")
BLOCK_STATUS = 403
OVER_CAP_STATUS = 413
# Events reach the writer in bursts, not one by one: waking the writer thread for each
# event costs the proxy more (thread hand-offs, a transaction per event) than the write.
FLUSH_DELAY = 0.05  # seconds an event may wait on the event loop before it is queued
FLUSH_AT = 256  # events held at most; more are queued at once


class AuditorAddon:
    """Records and judges every flow; see the module docstring."""

    def __init__(self) -> None:
        self.writer: BatchWriter | None = None
        self.pack: Any = None
        self.mode = "audit"
        self.nodelay = True
        self.learn_passthrough = True
        self.cap = DEFAULT_INSPECT_CAP
        self.enforce_cap = DEFAULT_ENFORCE_CAP
        self.gate = Gate(lambda: self.mode == "enforce", lambda: self.enforce_cap, self._refuse_over_cap)
        self.limits = Limits()
        self.connect_to: list[ConnectTo] = []
        self.passthrough: set[str] = set()
        self.learned_passthrough: set[str] = set()
        self._tunnels: dict[str, Tunnel] = {}
        self._cert_checks: dict[str, tuple[tuple[str, str], list[str]]] = {}
        self._config_digest: str | None = None
        self._store_url: str | None = None
        self._sensor_id: str | None = None
        self._evaluate: Any = None
        self._pack_loaded = False
        self._scopes: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self.classify_context: Any = None
        self.inventory: Any = None
        self._watcher: Any = None
        self._endpoint_ports: list[tuple[list[str], list[int]]] = []
        self._tls_hosts: list[str] = []
        self.counts: dict[str, int] = {"events": 0, "blocked": 0, "not_inspected": 0, "malformed": 0, "classified_in_workers": 0}
        self._pending: list[EgressEvent] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._client_socks: dict[str, Any] = {}
        self._deferred: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._deferred_handle: asyncio.Handle | None = None
        self._name_check_cache: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self.login_registries: dict[str, float] = {}  # registry host -> when a get_login answer last named it
        self.pool: ClassifyPool | None = None
        self._pool_key: tuple[Any, ...] | None = None
        self._pooled: dict[str, tuple[http.HTTPFlow, asyncio.Future[PayloadInfo]]] = {}

    # --- options and lifecycle -------------------------------------------------

    def load(self, loader: Any) -> None:
        guard_responses()
        loader.add_option("auditor_store", str, "", "Evidence store: SQLite file path or postgresql:// URL (required).")
        loader.add_option("auditor_mode", str, "audit", "audit: record only; enforce: refuse violations.", choices=MODES)
        loader.add_option("auditor_pack", str, "", "Rule pack file (default: the shipped Gretel Hybrid pack).")
        loader.add_option("auditor_overlay", Sequence[str], [], "Site overlay files.")
        loader.add_option("auditor_sensor_id", str, f"proxy-{socket.gethostname()}", "Sensor id; must start with 'proxy'.")
        loader.add_option("auditor_inspect_cap", int, DEFAULT_INSPECT_CAP, "Bodies up to this many bytes are classified whole; larger ones are streamed and scanned.")
        loader.add_option("auditor_enforce_cap", int, DEFAULT_ENFORCE_CAP, "Enforce mode: request bodies are held whole up to this many bytes and judged before any byte goes upstream; a larger body is refused (413), unread.")
        loader.add_option("auditor_connect_to", Sequence[str], [], "HOST:PORT:ADDR:PORT: connect elsewhere, keeping SNI and Host (curl's --connect-to).")
        loader.add_option("auditor_passthrough", Sequence[str], [], "Hosts (SNI) whose TLS is not opened: recorded as unverified.")
        loader.add_option("auditor_learn_passthrough", bool, True, "Audit mode: pass through hosts whose client rejected our CA, so pinned clients keep working.")
        loader.add_option("auditor_fingerprints", str, "", "Dataset fingerprints (auditor fingerprint) to look for in bodies.")
        loader.add_option("auditor_fingerprint_key", str, "", "The key file the fingerprints were made with.")
        loader.add_option("auditor_canaries", str, "", "Canary tokens (auditor canary) to look for in bodies.")
        loader.add_option("auditor_inventory", str, "", "Kubernetes inventory snapshot (auditor k8s snapshot) to attribute clients to pods and nodes.")
        loader.add_option("auditor_kubernetes", bool, False, "Watch pods and nodes live (in-cluster config or kubeconfig) to attribute clients.")
        loader.add_option("auditor_classify_workers", int, default_workers(), "Processes that classify held bodies of 32 KiB and more off the event loop (0: classify every body on the event loop).")
        loader.add_option("auditor_queue", int, 50_000, "Store writer queue size; overflow is chained as a drop count.")
        loader.add_option("auditor_nodelay", bool, True, "TCP_NODELAY on client and server sockets, and an immediate ACK of request headers (removes the ~40 ms Nagle/delayed-ACK stall of clients such as requests).")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "auditor_mode" in updated and opts.auditor_mode == "enforce" and opts.connection_strategy != "lazy":
            # Enforce judges the whole destination (CONNECT, SNI, Host) before connecting upstream.
            ctx.options.update(connection_strategy="lazy")
        if not any(name.startswith("auditor_") for name in updated):
            return
        if not opts.auditor_sensor_id.startswith("proxy"):
            raise exceptions.OptionsError(f"auditor_sensor_id {opts.auditor_sensor_id!r} must start with 'proxy'")
        if opts.auditor_inspect_cap < 1:
            raise exceptions.OptionsError("auditor_inspect_cap must be at least 1 byte")
        if opts.auditor_enforce_cap < 1:
            raise exceptions.OptionsError("auditor_enforce_cap must be at least 1 byte")
        if opts.auditor_classify_workers < 0:
            raise exceptions.OptionsError("auditor_classify_workers must be 0 (classify on the event loop) or more")
        self.mode = opts.auditor_mode
        self.nodelay = opts.auditor_nodelay
        self.learn_passthrough = opts.auditor_learn_passthrough
        self.cap = opts.auditor_inspect_cap
        self.enforce_cap = opts.auditor_enforce_cap
        self.limits = Limits(max_decoded_bytes=max(Limits().max_decoded_bytes, self.cap))
        self.connect_to = [ConnectTo.parse(s) for s in opts.auditor_connect_to]
        self.passthrough = {h.lower().rstrip(".") for h in opts.auditor_passthrough}
        if {"auditor_pack", "auditor_overlay"} & updated or not self._pack_loaded:
            self._pack_loaded = True
            self._load_pack(opts.auditor_pack, list(opts.auditor_overlay))
        if {"auditor_fingerprints", "auditor_fingerprint_key", "auditor_canaries"} & updated:
            self._load_classify_context(opts.auditor_fingerprints, opts.auditor_fingerprint_key, opts.auditor_canaries)
        if not opts.auditor_store:
            raise exceptions.OptionsError("auditor_store is not set (fix: --set auditor_store=/path/evidence.db)")
        config = self._config()
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        if self.writer is None or opts.auditor_store != self._store_url or opts.auditor_sensor_id != self._sensor_id:
            self._open_writer(opts.auditor_store, opts.auditor_sensor_id, opts.auditor_queue, digest, config)
        elif digest != self._config_digest:
            self._flush()
            self.writer.submit(sensor_event(self._sensor_id or "proxy", "config", config_digest=digest, detail=json.dumps(config, sort_keys=True), version=_version))
        self._config_digest = digest
        if {"auditor_inventory", "auditor_kubernetes"} & updated:
            self._load_inventory(opts.auditor_inventory, opts.auditor_kubernetes)
        self._configure_pool(opts.auditor_classify_workers, ContextFiles(opts.auditor_fingerprints, opts.auditor_fingerprint_key, opts.auditor_canaries))

    def _configure_pool(self, workers: int, files: ContextFiles) -> None:
        """Big bodies are classified in worker processes: audit records them later, enforce awaits the verdict."""
        key = (workers, files, self.cap) if workers > 0 else None
        if key == self._pool_key:
            return
        self._close_pool()
        self._pool_key = key
        if key is not None:
            self.pool = ClassifyPool(workers, files, max_bytes=8 * self.cap)

    def _close_pool(self) -> None:
        """Stop the workers once they have answered every body they hold, then record those flows."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        for flow, _ in list(self._pooled.values()):
            if self.mode != "enforce":  # `request` awaits its own verdict
                self._pool_done(flow)
        self._pooled.clear()

    def _config(self) -> dict[str, Any]:
        opts = ctx.options
        return {
            "mode": self.mode,
            "pack": getattr(self.pack, "digest", None),
            "inspect_cap": self.cap,
            "enforce_cap": self.enforce_cap,
            "fingerprints": opts.auditor_fingerprints or None,
            "canaries": opts.auditor_canaries or None,
            "connect_to": list(opts.auditor_connect_to),
            "passthrough": sorted(self.passthrough),
            "learn_passthrough": opts.auditor_learn_passthrough,
            "listen": f"{opts.listen_host or '*'}:{opts.listen_port}",
            "connection_strategy": opts.connection_strategy,
            "upstream_ca": opts.ssl_verify_upstream_trusted_ca,
            "ssl_insecure": opts.ssl_insecure,
            "stream_large_bodies": opts.stream_large_bodies,
            "inventory": opts.auditor_inventory or ("kubernetes" if opts.auditor_kubernetes else None),
        }

    def _load_pack(self, pack: str, overlays: list[str]) -> None:
        from pathlib import Path

        from auditor.errors import AuditorError

        try:
            from auditor.rules import evaluate, load_pack
        except ImportError as exc:  # sensors record facts; `auditor check` can judge them later
            log.warning("policy engine unavailable (%s): events are recorded without a decision", exc)
            self.pack, self._evaluate = None, None
            return
        try:
            self.pack = load_pack(Path(pack) if pack else None, [Path(o) for o in overlays])
        except AuditorError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        self._evaluate = evaluate
        self._endpoint_ports = []
        self._tls_hosts = []
        self._name_check_cache.clear()
        for ep in self.pack.all_endpoints:
            self._endpoint_ports.append((list(ep.hosts), sorted(ep.ports)))
            if ep.tls:
                self._tls_hosts.extend(ep.hosts)
        site = self.pack.site
        self._scopes = [(ipaddress.ip_network(c, strict=False), "pod") for c in site.pod_cidrs]
        self._scopes += [(ipaddress.ip_network(c, strict=False), "node") for c in site.node_cidrs]

    def _load_classify_context(self, fingerprints: str, key: str, canaries: str) -> None:
        from pathlib import Path

        from auditor.classify import load_context
        from auditor.errors import AuditorError

        if not (fingerprints or canaries):
            self.classify_context = None
            return
        try:
            self.classify_context = load_context(
                Path(fingerprints) if fingerprints else None, Path(key) if key else None, Path(canaries) if canaries else None
            )
        except AuditorError as exc:
            raise exceptions.OptionsError(str(exc)) from None

    def _load_inventory(self, snapshot: str, live: bool) -> None:
        from pathlib import Path

        from auditor.errors import AuditorError
        from auditor.k8s.inventory import Inventory, InventoryConfig, load_snapshot

        self._stop_watcher()
        self.inventory = None
        try:
            if snapshot:
                self.inventory = Inventory.from_snapshot(load_snapshot(Path(snapshot)))
            elif live:
                import os

                from auditor.k8s.cluster import api_client
                from auditor.k8s.inventory import InventoryWatcher, config_from_env

                site = getattr(self.pack, "site", None)
                # the namespaces `auditor k8s manifests` sets in the environment, else Gretel's default;
                # the proxy serves every node, so no node narrowing here
                base = config_from_env(dict(os.environ)) or InventoryConfig()
                config = base.model_copy(update={
                    "node_name": None,
                    "pod_cidrs": list(getattr(site, "pod_cidrs", [])), "service_cidrs": list(getattr(site, "service_cidrs", [])),
                    "node_cidrs": list(getattr(site, "node_cidrs", [])), "sensor_id": f"{self._sid()}-k8s",
                })
                self.inventory = Inventory(pod_cidrs=config.pod_cidrs, service_cidrs=config.service_cidrs, node_cidrs=config.node_cidrs)
                self._watcher = InventoryWatcher(self.inventory, api_client(), config, self.writer)
                self._watcher.start()
        except AuditorError as exc:
            raise exceptions.OptionsError(str(exc)) from None

    def _stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _open_writer(self, url: str, sensor_id: str, queue: int, digest: str, config: dict[str, Any]) -> None:
        from auditor.store.base import open_store

        if self.writer is not None:
            self._flush()
            self.writer.stop(detail="reconfigured")
        try:
            store = open_store(url)
        except Exception as exc:
            raise exceptions.OptionsError(f"cannot open store {url!r}: {exc}") from None
        try:  # the registry in force when this proxy (re)starts between two get_login answers
            for host, at in registry.named_in(store, datetime.now(UTC) - registry.LOOKBACK).items():
                self.login_registries.setdefault(host, at.timestamp())
        except Exception as exc:  # an unreadable store still takes writes; the next answer names the registry
            log.warning("auditor: could not read earlier get_login answers: %s", exc)
        self.writer = BatchWriter(store, sensor_id, max_queue=queue, on_error=lambda e: log.error("store write failed: %s", e))
        self._store_url = url
        self._sensor_id = sensor_id
        self.writer.start(config_digest=digest, detail=json.dumps(config, sort_keys=True), version=_version)

    def done(self) -> None:
        """mitmproxy is shutting down: chain `stop` and flush everything queued."""
        self._stop_watcher()
        self._run_deferred()
        self._close_pool()
        self._flush()
        if self.writer is not None:
            self.writer.stop(detail=f"clean shutdown; {self.counts['events']} events, {self.counts['blocked']} refused")
            self.writer.store.close()
            self.writer = None

    # --- connections -------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self._tunnels[client.id] = Tunnel()

    def client_disconnected(self, client: connection.Client) -> None:
        self._client_socks.pop(client.id, None)
        if self._deferred:  # recording still to come for this client needs its tunnel
            self._later(self._tunnels.pop, client.id, None)
        else:
            self._tunnels.pop(client.id, None)

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """--connect-to: reach another address while SNI and Host keep the name."""
        address = data.server.address
        if not address:
            return
        host, port = address[0], address[1]
        for rule in self.connect_to:
            if rule.matches(host, port):
                if data.server.sni is None and not checks.direct_ip([host]):
                    data.server.sni = data.client.sni or host
                reroute(data.server, (host, port), (rule.addr, rule.to_port))
                return

    def server_connected(self, data: ServerConnectionHookData) -> None:
        if self.nodelay:
            _nodelay_for(data.client, data.server)
            _nodelay_for(data.client, data.client)

    def server_disconnected(self, data: ServerConnectionHookData) -> None:
        if self._deferred:
            self._later(self._cert_checks.pop, data.server.id, None)
        else:
            self._cert_checks.pop(data.server.id, None)

    def _cert_observations(self, server: connection.Server, sni: str | None) -> list[str]:
        """Whether the upstream leaf names the SNI, checked once per upstream connection."""
        certs = server.certificate_list
        if not certs or not sni:
            return []
        key = (server.id, sni)
        cached = self._cert_checks.get(server.id)
        if cached is None or cached[0] != key:
            cached = (key, checks.cert_mismatch(x509.load_pem_x509_certificate(certs[0].to_pem()), sni))
            self._cert_checks[server.id] = cached
        return cached[1]

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Passthrough for TLS to configured (or learned) hosts; every HTTP layer gets the enforce gate."""
        if nextlayer.layer is None and ctx.master is not None:
            builtin = ctx.master.addons.get("nextlayer")  # under `mitmdump -s` scripts are asked first
            if builtin is not None:
                builtin.next_layer(nextlayer)
        self._passthrough(nextlayer)
        gate_layers(nextlayer.layer, self.gate)

    def _passthrough(self, nextlayer: layer.NextLayer) -> None:
        """TLS to configured (or learned) hosts is relayed as counted raw TCP."""
        if not isinstance(nextlayer.layer, ServerTLSLayer):
            return
        if not (self.passthrough or self.learned_passthrough):
            return
        try:
            hello = _NextLayerAddon._get_client_hello(nextlayer.context, nextlayer.data_client())
        except Exception:  # NeedsMoreData: decide when the rest of the hello has arrived
            nextlayer.layer = None
            return
        sni = (hello.sni or "").lower().rstrip(".") if hello else ""
        reason = None
        if sni and sni in self.passthrough:
            reason = "passthrough configured"
        elif sni and sni in self.learned_passthrough and self.mode == "audit":
            reason = "client rejected the proxy CA earlier (pinned); passed through"
        if reason:
            tunnel = self._tunnels.setdefault(nextlayer.context.client.id, Tunnel())
            tunnel.passthrough_sni, tunnel.passthrough_reason = sni, reason
            nextlayer.layer = layers.TCPLayer(nextlayer.context)

    # --- HTTP ----------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        target = (flow.request.host, flow.request.port)
        self._tunnels.setdefault(flow.client_conn.id, Tunnel()).target = target
        if self.mode != "enforce":
            return
        event = EgressEvent(
            sensor_id=self._sid(),
            time=when(flow.request.timestamp_start),
            kind="tls",
            source=self._source(flow.client_conn),
        )
        event.destination.host, event.destination.port, event.destination.tls = target[0], target[1], True
        event.observations = checks.direct_ip([target[0]]) + checks.port_mismatch(target[0], target[1], self._endpoint_ports)
        decision = self._judge(event)
        if decision is not None and decision.action == "violation":
            event.kind = "http"
            event.http = http_info(flow)
            event.http.status = BLOCK_STATUS
            event.decision = self._refused(event, decision)
            flow.response = self._block_response(decision, event.id)
            flow.metadata["auditor_done"] = True
            self._emit(event)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """The CONNECT failed upstream (unresolvable, refused): the attempt is evidence too."""
        if flow.metadata.get("auditor_done"):
            return
        flow.metadata["auditor_done"] = True
        target = (flow.request.host, flow.request.port)
        event = EgressEvent(
            sensor_id=self._sid(),
            time=when(flow.request.timestamp_start),
            kind="tcp",
            source=self._source(flow.client_conn),
            flow=FlowInfo(direction="egress", tcp_state="attempted", first_seen=when(flow.request.timestamp_start)),
        )
        d = event.destination
        d.host, d.port, d.app_protocol = target[0], target[1], "tcp"
        d.ip = upstream_of(flow.server_conn)[0]
        event.http = http_info(flow)
        reason = flow.error.msg if flow.error else (flow.response.get_text(strict=False) if flow.response else "")
        event.notes.append(f"CONNECT failed: {reason[:300]}")
        for o in checks.direct_ip([target[0]]) + checks.port_mismatch(target[0], target[1], self._endpoint_ports):
            _add(event.observations, o)
        event.decision = self._judge(event)
        self._emit(event)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        declared, chunked = req.headers.get("content-length"), req.headers.get("transfer-encoding")
        if self.nodelay and req.http_version != "HTTP/2.0" and ((declared is not None and declared != "0") or chunked is not None):
            self._quickack(flow.client_conn)
        length = _parse_length(declared)
        if self.mode == "enforce":
            self._enforce_headers(flow)
            return
        body_expected = length is None and (chunked or req.http_version == "HTTP/2.0") and req.method not in ("GET", "HEAD")
        if (length is not None and length > self.cap) or body_expected or req.stream:
            streamer = StreamedBody(self._body_ctx(flow), self.cap, self.limits)
            if req.stream is True:
                flow.metadata["auditor_note"] = "stream_large_bodies is set: body streamed through the auditor's scanner, not unseen"
            req.stream = streamer
            flow.metadata["auditor_stream"] = streamer

    def _quickack(self, client: connection.Client) -> None:
        """`_quickack` on the client's socket, found once per connection (the lookup costs more than the call)."""
        sock = self._client_socks.get(client.id)
        if sock is None:
            sock = _socket_of(client, client)
            if sock is None:
                return
            self._client_socks[client.id] = sock
        _quickack(sock)

    def _enforce_headers(self, flow: http.HTTPFlow) -> None:
        """Enforce: refuse a destination violation now; otherwise the body is held whole and judged in `request`."""
        req = flow.request
        gated = GATED in flow.metadata  # the gate saw a body coming and bounds what is held
        length = _body_length(req)
        event = self._base_event(flow)
        decision = self._judge(event)
        if decision is not None and decision.action == "violation":
            event.decision = self._refused(event, decision)
            flow.metadata["auditor_refused"] = event
            if gated or (length is not None and length <= self.enforce_cap):
                flow.response = self._block_response(decision, event.id)
            else:  # no gate to bound what we would have to hold: cut it off instead
                flow.kill()
            return
        req.stream = False  # never streamed in enforce mode, whoever asked
        if not gated and (length is None or length > self.enforce_cap):
            # Fail closed: nothing bounds this body here, so it is neither held nor forwarded.
            event.payload = PayloadInfo(size=length or 0, inspected=False, not_inspected_reason="enforce gate missing on this connection: refused unread")
            fallback = Decision(action="unverified", rule_id="payload.not-inspected", severity="medium", reasons=[event.payload.not_inspected_reason or ""])
            event.decision = self._refused(event, decision if decision is not None and decision.action != "allowed" else fallback)
            flow.metadata["auditor_refused"] = event
            self.counts["not_inspected"] += 1
            log.error("auditor: enforce gate missing for %s; request cut", req.pretty_url)
            flow.kill()

    def _refuse_over_cap(self, flow: http.HTTPFlow, size: int, declared: bool) -> http.Response:
        """The gate's answer to a body over the enforce cap: recorded as not inspected, refused 413, never allowed."""
        reason = f"body over the enforce cap ({self.enforce_cap} bytes): refused unread, nothing sent upstream"
        event = self._base_event(flow)
        event.payload = PayloadInfo(size=size, inspected=False, not_inspected_reason=reason)
        event.notes.append(f"Content-Length {size} is over the enforce cap" if declared else f"body of unknown length crossed the enforce cap at {size} bytes")
        decision = self._judge(event)
        if decision is None or decision.action == "allowed":
            decision = Decision(action="unverified", rule_id="payload.not-inspected", severity="medium", reasons=[f"body of {size} bytes not inspected: {reason}"])
        event.decision = self._refused(event, decision)
        flow.metadata["auditor_refused"] = event
        self.counts["not_inspected"] += 1
        return self._block_response(event.decision, event.id, OVER_CAP_STATUS)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Body complete (or streamed): classify and, in enforce mode, refuse a payload violation."""
        if flow.metadata.get("auditor_refused") or flow.response is not None:
            return
        if flow.metadata.get("auditor_stream") is not None:
            return
        if self.mode != "enforce":  # audit never changes traffic: forward first, classify right after
            self._later(self._prepare_event, flow)
            return
        payload = None
        if self._to_pool(flow):  # this flow waits for its verdict; the others keep moving
            await asyncio.wait((self._pooled[flow.id][1],))
            payload = self._pool_result(flow)
        event = self._http_event(flow, payload)
        flow.metadata["auditor_event"] = event
        if self.mode == "enforce" and event.decision is not None and event.decision.action == "violation":
            event.decision = self._refused(event, event.decision)
            flow.response = self._block_response(event.decision, event.id)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        # a get_login answer of unknown length (chunked, HTTP/2) streams too: its head is kept for the registry it names
        keep = registry.MAX_LOGIN_BODY if registry.is_get_login(flow.request.method, flow.request.path) else 0
        if resp is None or resp.stream:
            if resp is not None and resp.stream is True:
                counter = CountedBody(keep)
                resp.stream = counter
                flow.metadata["auditor_response_stream"] = counter
            return
        length = _content_length(resp)
        if length is None or length > self.cap:
            counter = CountedBody(keep)
            resp.stream = counter
            flow.metadata["auditor_response_stream"] = counter

    def response(self, flow: http.HTTPFlow) -> None:
        if self.mode != "enforce":  # answer the client first, record right after
            self._later(self._finish_http, flow)
        else:
            self._finish_http(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.mode != "enforce":
            self._later(self._finish_http, flow)
        else:
            self._finish_http(flow)

    def _prepare_event(self, flow: http.HTTPFlow) -> None:
        """Audit mode: the request event, built while the upstream works on the request."""
        if flow.metadata.get("auditor_done") or flow.metadata.get("auditor_event") is not None:
            return
        pooled = self._pooled.get(flow.id)
        if pooled is None and self._to_pool(flow) or pooled is not None and not pooled[1].done():
            return
        try:
            flow.metadata["auditor_event"] = self._http_event(flow, self._pool_result(flow))
        except Exception:  # `_finish_http` builds it again and records the failure if it fails there too
            log.exception("auditor: could not classify flow; retried when it ends")

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` once the current hook has returned (so mitmproxy moves the traffic first), in order.

        Audit mode only: the work is the same, done off the request's critical path while
        the other side is busy. `done` runs whatever is still queued before the last flush.
        """
        self._deferred.append((fn, args))
        if self._deferred_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside an event loop: nothing would run it later
                self._run_deferred()
                return
            self._deferred_handle = loop.call_soon(self._run_deferred)

    def _run_deferred(self) -> None:
        if self._deferred_handle is not None:
            self._deferred_handle.cancel()
            self._deferred_handle = None
        while self._deferred:
            fn, args = self._deferred.popleft()
            try:
                fn(*args)
            except Exception:  # the recorders catch their own failures; this keeps the queue moving
                log.exception("auditor: deferred recording failed")

    def _to_pool(self, flow: http.HTTPFlow) -> bool:
        """Hand a big held body to a classifier process; the event is built when its answer comes back."""
        body = flow.request.raw_content
        if self.pool is None or body is None or len(body) < POOL_MIN_BYTES:
            return False
        future = self.pool.submit(body, self._body_ctx(flow), self.cap, self.limits)
        if future is None:
            return False
        self._pooled[flow.id] = (flow, future)
        self.counts["classified_in_workers"] += 1
        flow.metadata["auditor_tunnel"] = self._tunnels.get(flow.client_conn.id)  # the client may be gone when the answer comes
        future.add_done_callback(lambda _: self._pool_done(flow))
        return True

    def _pool_done(self, flow: http.HTTPFlow) -> None:
        if flow.id not in self._pooled or self.mode == "enforce":  # recorded at shutdown, or awaited by `request`
            return
        if flow.metadata.get("auditor_finish_wanted"):
            self._finish_http(flow)
        else:
            self._prepare_event(flow)

    def _pool_result(self, flow: http.HTTPFlow) -> PayloadInfo | None:
        """The payload a classifier process found, once; a worker that failed is recorded like an inline failure."""
        pooled = self._pooled.pop(flow.id, None)
        if pooled is None:
            return None
        try:
            return pooled[1].result()
        except Exception as exc:
            body = flow.request.raw_content or b""
            return PayloadInfo(size=len(body), inspected=False, not_inspected_reason=f"classifier failed: {type(exc).__name__}: {exc}")

    def _finish_http(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("auditor_done"):
            return
        pooled = self._pooled.get(flow.id)
        if pooled is not None and not pooled[1].done():
            flow.metadata["auditor_finish_wanted"] = True  # `_pool_done` comes back here
            return
        flow.metadata["auditor_done"] = True
        try:
            refused: EgressEvent | None = flow.metadata.get("auditor_refused")
            if refused is not None:
                refused.http = http_info(flow)
                refused.http.status = flow.response.status_code if flow.response else None
                if flow.error:
                    refused.notes.append(f"refused: connection cut ({flow.error.msg})")
                self._emit(refused)
                return
            event: EgressEvent | None = flow.metadata.get("auditor_event")
            if event is None:
                event = self._http_event(flow, self._pool_result(flow))
            self._complete(flow, event)
            self._cut_request(flow, event)
            self._emit(event)
        except Exception as exc:  # one bad flow must never take the sensor down
            log.exception("auditor: could not record flow")
            self._emit(self._failure_event(flow, exc))

    def _complete(self, flow: http.HTTPFlow, event: EgressEvent) -> None:
        """Fill in what is known only at the end: response, timing, errors, upstream address."""
        assert event.http is not None
        req, resp = flow.request, flow.response
        event.http.status = resp.status_code if resp is not None else None
        end = resp.timestamp_end if resp is not None and resp.timestamp_end else req.timestamp_end
        if end and req.timestamp_start and end >= req.timestamp_start:
            event.http.duration_us = int((end - req.timestamp_start) * 1_000_000)
        ip, port = upstream_of(flow.server_conn)
        if ip:
            event.destination.ip, event.destination.port = ip, port
        _note_reroute(event, flow.server_conn)
        counter: CountedBody | None = flow.metadata.get("auditor_response_stream")
        if resp is not None:
            if counter is not None:
                event.http.response_bytes_wire = counter.size
                event.notes.append("response body streamed (over the inspect cap or of unknown length); not decoded")
            elif resp.raw_content is not None:
                sizes = decoded_size(resp.raw_content, resp.headers.get("content-encoding"), self.limits)
                event.http.response_bytes_wire, event.http.response_bytes_decoded = sizes.wire, sizes.decoded
                event.notes.extend(f"response: {n}" for n in sizes.notes)
            if flow.websocket is not None:
                event.destination.app_protocol = "websocket"
            named = self._login_registry(flow)
            if named is not None and event.decision is not None and event.decision.action == "allowed":  # only the contract's API names it
                event.http.login_registry = named
                self.login_registries[named] = time.time()
        for obs in self._cert_observations(flow.server_conn, event.destination.sni):
            _add(event.observations, obs)
        if flow.error is not None:
            msg = flow.error.msg
            event.notes.append(f"error: {msg}")
            if "client disconnected" in msg.lower() or "peer closed" in msg.lower() or "connection closed" in msg.lower():
                _add(event.observations, "client-disconnect")
            if flow.request.raw_content is None and flow.metadata.get("auditor_stream") is None:
                _add(event.observations, "body-truncated")
            if "certificate" in msg.lower() and "hostname" in msg.lower():
                _add(event.observations, "cert-name-mismatch")
            if "malformed" in msg.lower() or "invalid" in msg.lower() or "protocol error" in msg.lower():
                _add(event.observations, "malformed")
        streamer: StreamedBody | None = flow.metadata.get("auditor_stream")
        if streamer is not None:
            event.http.request_bytes_wire = streamer.size
            if streamer.info is not None:
                event.payload = streamer.info
                if streamer.streamed:
                    _note_not_inspected(event.payload, "streamed past the inspect cap")
            else:  # the body never ended: the client hung up or the proxy cut it
                event.payload = PayloadInfo(sha256=streamer.sha.hexdigest(), size=streamer.size, inspected=False, not_inspected_reason="body-truncated")
                _add(event.observations, "body-truncated")
            if flow.metadata.get("auditor_note"):
                event.notes.append(flow.metadata["auditor_note"])
            event.decision = self._judge(event)
        if event.payload is not None and not event.payload.inspected:
            self.counts["not_inspected"] += 1

    def _cut_request(self, flow: http.HTTPFlow, event: EgressEvent) -> None:
        """A request that failed before its body ended (HTTP/1 trailers, a client hang-up):
        its body was never whole, so never inspected, and the event may not say "allowed";
        it says how much of the request reached the upstream."""
        req = flow.request
        if flow.error is None or req.timestamp_end is not None or _body_length(req) == 0:
            return
        trailers = TRAILERS_REFUSED in flow.error.msg
        if trailers:
            event.notes.append("the chunked request body ended with trailer fields, which the proxy cannot inspect or forward: it closed the connection")
        streamer: StreamedBody | None = flow.metadata.get("auditor_stream")
        forwarded = bool(flow.metadata.get(FORWARDED))
        if forwarded:  # a streamer holds bytes back until the inspect cap is crossed, then passes all it gets
            sent = streamer.size if streamer is not None and streamer.streamed else 0
            event.notes.append(f"forwarded in part: the request head and {sent} bytes of its body reached the upstream before the cut; the end of the body did not")
        else:
            event.notes.append("not forwarded: nothing of this request was sent upstream")
        reason = "request ended before its body did: " + flow.error.msg[:200]
        if event.payload is None:
            event.payload = PayloadInfo(size=streamer.size if streamer is not None else 0, inspected=False, not_inspected_reason=reason)
            self.counts["not_inspected"] += 1
        _add(event.observations, "body-truncated")
        decision = event.decision
        if decision is None or decision.action == "allowed":
            decision = Decision(action="unverified", rule_id="payload.not-inspected", severity="medium", reasons=[f"request body not inspected: {reason}"])
        # enforce mode holds bodies: a request refused for its trailers connected nowhere (REFUSED_NOTE)
        event.decision = self._refused(event, decision) if trailers and not forwarded and self.mode == "enforce" else decision

    def _login_registry(self, flow: http.HTTPFlow) -> str | None:
        """The registry a get_login answer names (red flag 10); its bytes are decoded within
        the answer's size cap, and only the registry's name is kept."""
        req, resp = flow.request, flow.response
        raw = resp.raw_content if resp is not None else None
        counter: CountedBody | None = flow.metadata.get("auditor_response_stream")
        if raw is None and counter is not None and counter.size <= registry.MAX_LOGIN_BODY:
            raw = bytes(counter.head)  # streamed for want of a length, and whole within the cap
        if resp is None or raw is None or not registry.is_get_login(req.method, req.path):
            return None
        try:
            body = decode_content(raw, resp.headers.get("content-encoding"), Budget(Limits(max_decoded_bytes=registry.MAX_LOGIN_BODY)))
        except (LimitExceeded, Undecodable):
            return None
        return registry.login_registry(req.method, req.path, resp.status_code, body)

    def _http_event(self, flow: http.HTTPFlow, payload: PayloadInfo | None = None) -> EgressEvent:
        """The event for a request whose body (if any) is held whole; `payload` when a classifier process judged it."""
        event = self._base_event(flow)
        req = flow.request
        assert event.http is not None
        body = req.raw_content
        if body is None:
            if flow.metadata.get("auditor_stream") is None:
                event.notes.append("request body not available (streamed by mitmproxy or cut off)")
        elif body:
            sizes = decoded_size(body, req.headers.get("content-encoding"), self.limits)
            event.http.request_bytes_wire, event.http.request_bytes_decoded = sizes.wire, sizes.decoded
            event.notes.extend(sizes.notes)
            if sizes.malformed:
                _add(event.observations, "malformed")
                self.counts["malformed"] += 1
            declared = _content_length(req)
            if declared is not None and declared != len(body):
                event.notes.append(f"Content-Length says {declared} bytes, body has {len(body)}")
                _add(event.observations, "malformed")
            try:
                event.payload = payload if payload is not None else inspect_held(body, self._body_ctx(flow), self.cap, self.limits)
            except Exception as exc:  # a classifier bug is recorded, never fatal to the proxy
                event.payload = PayloadInfo(size=len(body), inspected=False, not_inspected_reason=f"classifier failed: {type(exc).__name__}: {exc}")
        else:
            event.http.request_bytes_wire = event.http.request_bytes_decoded = 0
            try:  # a bodyless request still carries its path, query and headers out
                event.payload = inspect_whole(b"", self._body_ctx(flow), self.limits)
            except Exception as exc:  # a classifier bug is recorded, never fatal to the proxy
                event.payload = PayloadInfo(size=0, inspected=False, not_inspected_reason=f"classifier failed: {type(exc).__name__}: {exc}")
        event.decision = self._judge(event)
        return event

    def _base_event(self, flow: http.HTTPFlow) -> EgressEvent:
        tunnel = flow.metadata.get("auditor_tunnel") or self._tunnels.get(flow.client_conn.id)
        target = tunnel.target if tunnel else None
        dest = destination_of(flow, target)
        event = EgressEvent(
            sensor_id=self._sid(),
            time=when(flow.request.timestamp_start),
            kind="http",
            source=self._source(flow.client_conn),
            destination=dest,
            http=http_info(flow),
        )
        for o in self._name_checks(target, dest.sni, dest.http_host, flow.request.host, flow.request.port, dest.host, bool(dest.tls)):
            _add(event.observations, o)
        req = flow.request
        if self.login_registries and registry.is_pull(req.method, req.path):
            self._registry_check(event, req.pretty_host)
        return event

    def _name_checks(
        self, target: tuple[str, int] | None, sni: str | None, http_host: str | None, req_host: str, req_port: int, host: str | None, tls: bool
    ) -> tuple[str, ...]:
        """The consistency checks of one request's names; a connection asks the same question per request, so answers are kept (per pack)."""
        key = (target, sni, http_host, req_host, req_port, host, tls)
        cached = self._name_check_cache.get(key)
        if cached is not None:
            return cached
        names = [target[0] if target else None, sni, http_host, req_host]
        obs = checks.fronting(target[0] if target else None, sni, http_host)
        obs += checks.direct_ip(names)
        obs += checks.port_mismatch(http_host or host, target[1] if target else req_port, self._endpoint_ports)
        obs += checks.plaintext(http_host or host, tls, self._tls_hosts)
        if len(self._name_check_cache) >= 4096:
            self._name_check_cache.clear()
        self._name_check_cache[key] = result = tuple(obs)
        return result

    def _body_ctx(self, flow: http.HTTPFlow) -> BodyContext:
        req = flow.request
        return BodyContext(
            method=req.method,
            path=req.path,
            host=req.host_header or req.host,
            content_type=req.headers.get("content-type"),
            content_encoding=req.headers.get("content-encoding"),
            context=self.classify_context,
            headers=tuple(req.headers.items(multi=True)),
        )

    # --- WebSocket -----------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        try:
            if not message.from_client:
                return
            event = self._base_event(flow)
            event.kind = "websocket"
            event.destination.app_protocol = "websocket"
            ip, port = upstream_of(flow.server_conn)
            event.destination.ip, event.destination.port = ip, port
            event.time = when(message.timestamp)
            content = message.content
            if len(content) <= self.cap:
                event.payload = inspect_whole(content, BodyContext("WEBSOCKET", flow.request.path, flow.request.host_header, "text/plain" if message.is_text else "application/octet-stream", None, self.classify_context), self.limits)
            else:
                event.payload = PayloadInfo(sha256=hashlib.sha256(content).hexdigest(), size=len(content), inspected=False, not_inspected_reason="message over the inspect cap")
            assert event.http is not None
            event.http.request_bytes_wire = event.http.request_bytes_decoded = len(content)
            event.http.status = 101
            event.decision = self._judge(event)
            if self.mode == "enforce" and event.decision is not None and event.decision.action == "violation":
                message.drop()
                event.decision = self._refused(event, event.decision)
            self._emit(event)
        finally:
            flow.websocket.messages.clear()  # each message is judged once; holding them all is a flood's memory

    # --- raw TCP and TLS not opened ------------------------------------------------

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        flow.metadata["auditor_up"] = 0
        flow.metadata["auditor_down"] = 0

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        message = flow.messages[-1]
        key = "auditor_up" if message.from_client else "auditor_down"
        flow.metadata[key] = flow.metadata.get(key, 0) + len(message.content)
        flow.messages.clear()  # counted; raw bytes are never kept

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._finish_tcp(flow)

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._finish_tcp(flow)

    def _finish_tcp(self, flow: tcp.TCPFlow) -> None:
        if flow.metadata.get("auditor_done"):
            return
        flow.metadata["auditor_done"] = True
        tunnel = self._tunnels.get(flow.client_conn.id) or Tunnel()
        ip, port = upstream_of(flow.server_conn)
        target = tunnel.target
        passthrough = tunnel.passthrough_sni is not None
        event = EgressEvent(
            sensor_id=self._sid(),
            time=when(flow.client_conn.timestamp_start),
            kind="tls" if passthrough else "tcp",
            source=self._source(flow.client_conn),
            flow=FlowInfo(
                direction="egress",
                tcp_state="closed",
                bytes_up=flow.metadata.get("auditor_up", 0),
                bytes_down=flow.metadata.get("auditor_down", 0),
                first_seen=when(flow.client_conn.timestamp_start),
                last_seen=when(flow.client_conn.timestamp_end or time.time()),
            ),
        )
        d = event.destination
        d.host = target[0] if target else (flow.server_conn.address[0] if flow.server_conn.address else None)
        d.sni = tunnel.passthrough_sni or flow.client_conn.sni
        d.ip, d.port = ip, port if port is not None else (target[1] if target else None)
        d.app_protocol = "tls" if passthrough else "tcp"
        d.tls = True if passthrough else None
        _note_reroute(event, flow.server_conn)
        if passthrough:
            _add(event.observations, "tls-not-opened")
            event.payload = PayloadInfo(size=event.flow.bytes_up if event.flow else 0, inspected=False, not_inspected_reason="tls-not-opened")
            event.notes.append(tunnel.passthrough_reason or "passthrough")
        else:
            event.payload = PayloadInfo(size=event.flow.bytes_up if event.flow else 0, inspected=False, not_inspected_reason="raw-tcp")
        for o in checks.direct_ip([d.host, d.sni]) + checks.fronting(d.host, d.sni, None):
            _add(event.observations, o)
        self._tunnel_registry_check(event)
        if flow.error:
            event.notes.append(f"error: {flow.error.msg}")
        event.decision = self._judge(event)
        self._emit(event)

    def _tunnel_registry_check(self, event: EgressEvent) -> None:
        """Red flag 10 for a tunnel the proxy could not open (passthrough, a client that
        rejects its CA: containerd often does): the name is all there is, as for the probe."""
        name = event.destination.sni or event.destination.host
        if name and registry.is_registry_name(name):
            self._registry_check(event, name)

    def _registry_check(self, event: EgressEvent, host: str) -> None:
        """A pull from `host`: `registry-not-named` once get_login has named other registries."""
        if registry.unnamed(host, self.login_registries):
            _add(event.observations, registry.OBSERVATION)
            event.notes.append(registry.note(self.login_registries))

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """The client would not finish TLS with our certificate: a pinned client or one that rejects our CA."""
        conn = data.conn
        tunnel = self._tunnels.get(data.context.client.id) or Tunnel()
        target = tunnel.target
        ip, port = upstream_of(data.context.server)
        event = EgressEvent(
            sensor_id=self._sid(),
            time=when(conn.timestamp_start),
            kind="tls",
            source=self._source(data.context.client),
            flow=FlowInfo(direction="egress", tcp_state="closed", first_seen=when(conn.timestamp_start), last_seen=when(time.time())),
        )
        d = event.destination
        d.host = target[0] if target else (data.context.server.address[0] if data.context.server.address else None)
        d.sni, d.ip, d.port, d.tls, d.app_protocol = conn.sni, ip, port if port is not None else (target[1] if target else None), True, "tls"
        _add(event.observations, "tls-not-opened")
        event.payload = PayloadInfo(inspected=False, not_inspected_reason="tls-not-opened")
        event.notes.append(f"client rejected the proxy's certificate: {conn.error or 'handshake failed'}")
        for o in checks.direct_ip([d.host, d.sni]) + checks.fronting(d.host, d.sni, None):
            _add(event.observations, o)
        self._tunnel_registry_check(event)
        event.decision = self._judge(event)
        if conn.sni and self.mode == "audit" and self.learn_passthrough:
            self.learned_passthrough.add(conn.sni.lower().rstrip("."))
            event.notes.append("later connections to this SNI are passed through (audit mode)")
        self._emit(event)

    def tls_failed_server(self, data: tls.TlsData) -> None:
        """Upstream TLS failed: usually a certificate that does not name the server asked for."""
        conn = data.conn
        err = (conn.error or "").lower()
        tunnel = self._tunnels.get(data.context.client.id) or Tunnel()
        event = EgressEvent(sensor_id=self._sid(), kind="tls", source=self._source(data.context.client))
        d = event.destination
        ip, port = upstream_of(conn)  # type: ignore[arg-type]
        d.host = tunnel.target[0] if tunnel.target else (conn.address[0] if conn.address else None)
        d.sni, d.ip, d.port, d.tls, d.app_protocol = conn.sni, ip, port, True, "tls"
        if "hostname" in err or "mismatch" in err or "doesn't match" in err:
            _add(event.observations, "cert-name-mismatch")
        event.notes.append(f"upstream TLS failed: {conn.error}")
        event.payload = PayloadInfo(inspected=False, not_inspected_reason="upstream-tls-failed")
        event.decision = self._judge(event)
        self._emit(event)

    # --- judging and recording -----------------------------------------------------

    def _sid(self) -> str:
        return self._sensor_id or "proxy"

    def _source(self, client: connection.Client) -> Source:
        """The client, attributed to a pod or node by the inventory, else to a scope by the overlay's CIDRs."""
        src = source_of(client)
        if src.ip and self.inventory is not None:
            from auditor.k8s.attribute import attribute

            probe = EgressEvent(sensor_id=self._sid(), kind="tcp", time=when(client.timestamp_start), source=src)
            return attribute(probe, self.inventory).source
        if src.ip and self._scopes:
            try:
                ip = ipaddress.ip_address(src.ip)
            except ValueError:
                return src
            for net, scope in self._scopes:
                if ip in net:
                    src.scope = scope  # type: ignore[assignment]
                    break
        return src

    def _judge(self, event: EgressEvent) -> Decision | None:
        if self._evaluate is None:
            return None
        try:
            decision = self._evaluate(event, self.pack)
        except Exception as exc:  # the policy failing on one event is recorded on it
            event.notes.append(f"policy failed: {type(exc).__name__}: {exc}")
            return None
        if decision is not None and decision.action == "allowed" and "tls-not-opened" in event.observations:
            # What could not be opened cannot be vouched for, whatever the destination.
            decision = decision.model_copy(update={"action": "unverified", "reasons": [*decision.reasons, "TLS not opened: content unseen"]})
        return decision

    def _refused(self, event: EgressEvent, decision: Decision) -> Decision:
        """The decision to refuse `event` upstream; its note says nothing went there, which
        keeps the record from accounting for a probe flow to the same name (`proxy_keys`)."""
        if REFUSED_NOTE not in event.notes:
            event.notes.append(REFUSED_NOTE)
        return decision.model_copy(update={"reasons": [*decision.reasons, "refused by the proxy (enforce mode)"]})

    def _block_response(self, decision: Decision, event_id: str, status: int = BLOCK_STATUS) -> http.Response:
        self.counts["blocked"] += 1
        message = decision.reasons[0] if decision.reasons else ""
        rule = getattr(self.pack, "rule", None)
        if rule is not None:
            try:
                message = rule(decision.rule_id).message
            except Exception:  # a decision citing an unknown rule still blocks; the reason says which
                pass
        body = {
            "error": "blocked by Boundary Auditor",
            "rule": decision.rule_id,
            "severity": decision.severity,
            "message": message,
            "reasons": decision.reasons,
            "event": event_id,
        }
        return http.Response.make(status, json.dumps(body).encode(), {"content-type": "application/json", "x-boundary-auditor": decision.rule_id})

    def _failure_event(self, flow: http.HTTPFlow, exc: BaseException) -> EgressEvent:
        event = EgressEvent(sensor_id=self._sid(), kind="http", source=source_of(flow.client_conn))
        event.destination.host = flow.request.host
        _add(event.observations, "malformed")
        event.notes.append(f"sensor could not record this flow: {type(exc).__name__}: {exc}")
        return event

    def _emit(self, event: EgressEvent) -> None:
        """Hand the event to the writer with the others of the next few milliseconds (see FLUSH_DELAY)."""
        self.counts["events"] += 1
        if self.writer is None:
            return
        self._pending.append(event)
        if len(self._pending) >= FLUSH_AT:
            self._flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside an event loop: nothing would flush later
                self._flush()
                return
            self._flush_handle = loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        """Queue every held event, in order; a full queue counts them as dropped (chained as `drop`)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._pending = self._pending, []
        if self.writer is not None:
            for event in pending:
                self.writer.submit(event)


def _nodelay_for(client: connection.Client, conn: connection.Connection) -> None:
    """Disable Nagle on the proxy's sockets: a small write after a small write must not wait for an ACK."""
    sock = _socket_of(client, conn)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _quickack(sock: Any) -> None:
    """ACK what the client sent now instead of after the delayed-ACK timer.

    Clients that write headers and body separately with Nagle on (Python `requests`
    through a proxy tunnel: urllib3 does not set TCP_NODELAY there) hold the body until
    the headers are ACKed; a proxy that has nothing to answer yet delays that ACK by
    ~40 ms. Linux sends the pending ACK at once when TCP_QUICKACK is set (it does not
    stick, so it is set again for every request).
    """
    if _TCP_QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass


def _socket_of(client: connection.Client, conn: connection.Connection) -> Any:
    """The OS socket behind a connection of mitmproxy's proxy server, if it has one."""
    server = ctx.master.addons.get("proxyserver") if ctx.master else None
    handler = server.connections.get(client.id) if server is not None else None
    io = handler.transports.get(conn) if handler is not None else None
    writer = io.writer if io is not None else None
    get_extra = getattr(writer, "get_extra_info", None)
    return get_extra("socket") if get_extra is not None else None


def _body_length(req: http.Request) -> int | None:
    """Bytes of request body to come, when known: Content-Length, or none for HTTP/1 without chunking."""
    length = _content_length(req)
    if length is None and req.http_version != "HTTP/2.0" and "transfer-encoding" not in req.headers:
        return 0
    return length


def _content_length(message: http.Message) -> int | None:
    return _parse_length(message.headers.get("content-length"))


def _parse_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _note_reroute(event: EgressEvent, server: connection.Server) -> None:
    """Where --connect-to delivered what the event records as sent to the name and port asked for."""
    via = rerouted_to(server)
    if via:
        event.notes.append(f"delivered to {via} by --connect-to")


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _note_not_inspected(info: PayloadInfo, reason: str) -> None:
    if not info.inspected and not info.not_inspected_reason:
        info.not_inspected_reason = reason


addons = [AuditorAddon()]
