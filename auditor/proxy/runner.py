"""`auditor proxy`: mitmproxy in-process with the auditor addon, until SIGINT or SIGTERM.

The same addon class as `mitmdump -s auditor/proxy/addon.py`; this runner only turns
the command line into mitmproxy options and shuts down cleanly, so the writer's queue
is flushed and a `stop` record chained.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from mitmproxy import exceptions, options
from mitmproxy.addons import block, core, disable_h2c, dns_resolver, errorcheck, next_layer, proxyauth, proxyserver, tlsconfig, upstream_auth
from mitmproxy.master import Master
from pydantic import BaseModel, Field, ValidationError, field_validator

from auditor.errors import AuditorError
from auditor.proxy.addon import AuditorAddon
from auditor.proxy.routing import ConnectTo
from auditor.proxy.bodies import DEFAULT_ENFORCE_CAP, DEFAULT_INSPECT_CAP
from auditor.proxy.ca import DEFAULT_CONFDIR, ensure_ca
from auditor.rules.hosts import split_host_port


class ProxyConfig(BaseModel):
    """What `auditor proxy` was asked to do (validated at the boundary)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535)
    mode: Literal["audit", "enforce"] = "audit"
    store: str
    pack: Path | None = None
    overlays: list[Path] = Field(default_factory=list)
    upstream_ca: Path | None = None
    connect_to: list[str] = Field(default_factory=list)
    passthrough: list[str] = Field(default_factory=list)
    confdir: Path = DEFAULT_CONFDIR
    sensor_id: str | None = None
    inspect_cap: int = Field(default=DEFAULT_INSPECT_CAP, ge=1)
    enforce_cap: int = Field(default=DEFAULT_ENFORCE_CAP, ge=1)
    classify_workers: int | None = Field(default=None, ge=0)  # None: the addon's default (cores - 1, at most 4)
    nodelay: bool = True
    inventory: Path | None = None
    kubernetes: bool = False
    fingerprints: Path | None = None
    key_file: Path | None = None
    canaries: Path | None = None

    @field_validator("connect_to")
    @classmethod
    def _connect_to(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ConnectTo.parse(value)
            except exceptions.OptionsError as exc:
                raise ValueError(str(exc)) from None
        return values

    @classmethod
    def from_cli(cls, listen: str, **fields: object) -> ProxyConfig:
        host, port = split_host_port(listen)
        if port is None:
            raise AuditorError(f"--listen {listen!r} has no port", fix="write HOST:PORT, e.g. 0.0.0.0:8080")
        try:
            return cls(listen_host=host, listen_port=port, **fields)  # type: ignore[arg-type]
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise AuditorError(f"bad proxy option {where}: {problem['msg'].removeprefix('Value error, ')}") from None


def mitm_options(config: ProxyConfig) -> dict[str, object]:
    """The mitmproxy and addon options for a config (addon options need the addon loaded first)."""
    for path in [config.pack, *config.overlays, config.upstream_ca, config.inventory, config.fingerprints, config.key_file, config.canaries]:
        if path is not None and not path.is_file():
            raise AuditorError("file not found", file=str(path), fix="check the path")
    _check_store(config.store)
    opts: dict[str, object] = {
        "listen_host": config.listen_host,
        "listen_port": config.listen_port,
        "confdir": str(config.confdir.expanduser()),
        "auditor_store": config.store,
        "auditor_mode": config.mode,
        "auditor_pack": str(config.pack) if config.pack else "",
        "auditor_overlay": [str(o) for o in config.overlays],
        "auditor_connect_to": list(config.connect_to),
        "auditor_passthrough": list(config.passthrough),
        "auditor_inspect_cap": config.inspect_cap,
        "auditor_enforce_cap": config.enforce_cap,
        "auditor_nodelay": config.nodelay,
        "auditor_inventory": str(config.inventory) if config.inventory else "",
        "auditor_kubernetes": config.kubernetes,
        "auditor_fingerprints": str(config.fingerprints) if config.fingerprints else "",
        "auditor_fingerprint_key": str(config.key_file) if config.key_file else "",
        "auditor_canaries": str(config.canaries) if config.canaries else "",
    }
    if config.sensor_id:
        opts["auditor_sensor_id"] = config.sensor_id
    if config.classify_workers is not None:
        opts["auditor_classify_workers"] = config.classify_workers
    if config.upstream_ca:
        opts["ssl_verify_upstream_trusted_ca"] = str(config.upstream_ca)
    return opts


def _check_store(url: str) -> None:
    """Open the store once before mitmproxy does: when the addon's open fails, mitmproxy
    rolls the option back and all it reports is that no store is set."""
    from auditor.store.base import open_store, redact_url  # noqa: PLC0415

    try:
        open_store(url).close()
    except AuditorError:
        raise
    except Exception as exc:
        raise AuditorError(f"cannot open the store {redact_url(url)}: {exc}", fix="check --store") from None


class _Ready:
    """Tells the caller where the proxy listens once it does (port 0 picks one)."""

    def __init__(self, callback: Callable[[str, int], None]) -> None:
        self.callback = callback

    def running(self) -> None:
        from mitmproxy import ctx

        server = ctx.master.addons.get("proxyserver")
        addrs = server.listen_addrs() if server else []
        if addrs:
            self.callback(addrs[0][0], addrs[0][1])


def auditor_master() -> Master:
    """mitmproxy with only the addons a sensor needs.

    Every hook of every request visits every loaded addon; mitmdump's thirty (replay,
    rewriting, cookies, export, onboarding, ...) cost about as much per small request
    as recording it does. What stays is the proxy itself, TLS, client blocking and
    proxy auth, upstream auth for upstream modes, and the start-up error check.
    """
    master = Master(options.Options())
    master.addons.add(
        core.Core(),
        block.Block(),
        proxyauth.ProxyAuth(),
        proxyserver.Proxyserver(),
        dns_resolver.DnsResolver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        upstream_auth.UpstreamAuth(),
        disable_h2c.DisableH2C(),
        errorcheck.ErrorCheck(),
    )
    return master


async def serve(
    config: ProxyConfig,
    *,
    on_ready: Callable[[str, int], None] | None = None,
    on_master: Callable[[Master], None] | None = None,
    install_signals: bool = True,
) -> AuditorAddon:
    """Run until shut down; returns the addon (its counts) after the store is flushed."""
    ensure_ca(config.confdir)
    master = auditor_master()
    addon = AuditorAddon()
    master.addons.add(addon)
    if on_ready is not None:
        master.addons.add(_Ready(on_ready))
    try:
        master.options.update(**mitm_options(config))
    except exceptions.OptionsError as exc:
        addon.done()
        raise AuditorError(str(exc)) from None
    if on_master is not None:
        on_master(master)
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
    try:
        await master.run()
    finally:
        addon.done()
    return addon


def run_proxy(config: ProxyConfig, on_ready: Callable[[str, int], None] | None = None) -> AuditorAddon:
    """`auditor proxy`: blocks until SIGINT/SIGTERM, then flushes and returns."""
    return asyncio.run(serve(config, on_ready=on_ready))
