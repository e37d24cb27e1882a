"""Run the proxy and the probe inside this process, for `demo`, `audit` and `monitor`.

Each sensor runs on its own thread and writes the store through its own batch
writer; stopping them flushes both and chains their `stop` records. When the probe
cannot capture (no root, no CAP_NET_RAW, no libpcap) it says why, and the report
shows probe coverage as unavailable, never as clean.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy.master import Master

from auditor.errors import AuditorError
from auditor.probe.engine import ProbeConfig
from auditor.probe.runner import ProbeSummary, run_live
from auditor.proxy.runner import ProxyConfig, serve

if TYPE_CHECKING:
    from auditor.rules import Pack


class ProxyThread:
    """mitmproxy with the auditor addon on a private event loop."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.address: tuple[str, int] | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._master: Master | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="auditor-proxy", daemon=True)

    @property
    def url(self) -> str:
        assert self.address is not None
        return f"http://{self.address[0]}:{self.address[1]}"

    @property
    def ca_cert(self) -> Path:
        """What the pods must trust (Gretel's chart: gretelConfig.caOverride)."""
        return self.config.confdir.expanduser() / "mitmproxy-ca-cert.pem"

    def start(self, timeout: float = 20.0) -> ProxyThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self.address is None:
            raise AuditorError(f"the proxy did not start: {self.error or 'timed out'}", fix="check --listen and the store")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._master is not None:
            self._loop.call_soon_threadsafe(self._master.shutdown)
        self._thread.join(timeout)

    def _run(self) -> None:
        def ready(host: str, port: int) -> None:
            self.address = (host, port)
            self._ready.set()

        def keep(master: Master) -> None:
            self._master = master
            self._loop = asyncio.get_running_loop()

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(_quiet_cancellations)
            await serve(self.config, on_ready=ready, on_master=keep, install_signals=False)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported through start(); the thread must end quietly
            self.error = exc
        finally:
            self._ready.set()


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Client connections still open at shutdown are cancelled; that is the shutdown, not an error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


class ProbeThread:
    """The probe capturing live on one interface until `stop()`; its store writer flushes on stop.

    Started first and stopped last: it decides which of its flows bypassed the proxy when
    it stops, against the proxy records the store then holds."""

    def __init__(self, iface: str, store_url: str, *, config: ProbeConfig, pack: Pack | None, bpf: str | None) -> None:
        self.iface = iface
        self.store_url = store_url
        self.config = config
        self.pack = pack
        self.bpf = bpf
        self.error: BaseException | None = None
        self.summary: ProbeSummary | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auditor-probe", daemon=True)

    def start(self, timeout: float = 20.0) -> ProbeThread:
        """Returns once capture is open; raises AuditorError (with the reason) when it cannot be."""
        self._thread.start()
        while not self._ready.wait(0.05):
            if not self._thread.is_alive():
                break
            timeout -= 0.05
            if timeout <= 0:
                self.stop()
                raise AuditorError(f"the probe did not start capturing on {self.iface} in time")
        if self.error is not None:
            raise self.error if isinstance(self.error, AuditorError) else AuditorError(f"the probe failed: {self.error}")
        return self

    def stop(self, timeout: float = 30.0) -> ProbeSummary | None:
        self._stop.set()
        self._thread.join(timeout)
        return self.summary

    def _run(self) -> None:
        try:
            self.summary = run_live(self.iface, self.store_url, bpf=self.bpf, config=self.config, pack=self.pack,
                                    stop=self._stop, ready=self._ready)
        except BaseException as exc:  # reported through start() or stop(); the thread ends quietly
            self.error = exc


@dataclass
class LocalSensors:
    """The proxy and the probe of one run on this machine (`demo`, `audit`).

    The probe is optional: without capture rights (root, or CAP_NET_RAW and CAP_NET_ADMIN)
    or libpcap the run goes on with the proxy alone and `probe_reason` says why, so the
    report shows probe coverage as unavailable, never as clean."""

    proxy_config: ProxyConfig
    iface: str
    probe_config: ProbeConfig
    pack: Pack | None
    bpf: str | None = None
    probe_available: bool = False
    probe_reason: str | None = None
    proxy: ProxyThread | None = None
    probe: ProbeThread | None = None
    probe_summary: ProbeSummary | None = None
    notes: list[str] = field(default_factory=list)

    def start(self) -> LocalSensors:
        probe = ProbeThread(self.iface, self.proxy_config.store, config=self.probe_config, pack=self.pack, bpf=self.bpf)
        try:
            self.probe = probe.start()
            self.probe_available = True
        except AuditorError as exc:
            self.probe_available, self.probe_reason = False, str(exc)
        try:
            self.proxy = ProxyThread(self.proxy_config).start()
        except BaseException:
            self._stop_probe()
            raise
        return self

    def stop(self) -> None:
        """The proxy first, so its records are in the store when the probe matches its flows against them."""
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self._stop_probe()

    def _stop_probe(self) -> None:
        if self.probe is not None:
            self.probe_summary = self.probe.stop()
            if self.probe.error is not None:
                self.probe_available = False
                self.probe_reason = f"the probe failed while capturing: {self.probe.error}"
            self.probe = None

    def __enter__(self) -> LocalSensors:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
