"""Coverage against the proxy: probe flows matched to proxy upstream connections in the same store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from auditor.model import Destination, EgressEvent, HttpInfo
from auditor.probe.coverage import proxy_coverage
from auditor.probe.engine import ProbeConfig
from auditor.probe.runner import run_pcap
from auditor.store.base import open_store

from .traffic import T0, Trace, client_hello

POD = "10.42.0.5"


def _proxy_event(ip: str | None, host: str, at: float) -> EgressEvent:
    return EgressEvent(
        sensor_id="proxy-main",
        kind="http",
        time=datetime.fromtimestamp(at, UTC),
        destination=Destination(host=host, sni=host, ip=ip, port=443, tls=True),
        http=HttpInfo(method="GET", scheme="https", path="/users/me/billing", status=200),
    )


def test_flows_the_proxy_did_not_see_are_bypass_and_the_share_is_reported(tmp_path: Path) -> None:
    store_url = str(tmp_path / "ev.db")
    st = open_store(store_url)
    st.append([_proxy_event("34.1.2.3", "api.gretel.cloud", T0 + 0.01), _proxy_event(None, "artifacts.gretel.cloud", T0 + 0.02)])
    st.close()
    t = Trace()
    t.dns(POD, "10.43.0.10", "api.gretel.cloud", [("api.gretel.cloud", "A", "34.1.2.3")])
    t.dns(POD, "10.43.0.10", "artifacts.gretel.cloud", [("artifacts.gretel.cloud", "A", "34.9.9.9")])
    t.tcp(POD, "34.1.2.3", 443, [client_hello("api.gretel.cloud")])  # the proxy's upstream connection, by address
    t.tcp(POD, "34.9.9.9", 443, [client_hello("artifacts.gretel.cloud")])  # the proxy recorded only the name
    t.tcp(POD, "52.9.9.9", 443, [client_hello("api.gretel.cloud")])  # around the proxy
    t.tcp(POD, "10.43.12.7", 3128, [b"CONNECT api.gretel.cloud:443 HTTP/1.1\r\n\r\n"])  # to the proxy: never bypass
    late = Trace(t0=T0 + 600)
    late.tcp(POD, "34.1.2.3", 443, [client_hello("api.gretel.cloud")])  # same place, ten minutes later: not the proxy
    t.packets += late.packets
    path = t.write(tmp_path / "c.pcap")
    cfg = ProbeConfig(proxies=["10.43.12.7:3128"], cluster_cidrs=["10.42.0.0/16", "10.43.0.0/16"])
    summary = run_pcap(path, store_url, config=cfg)
    assert summary.bypass == 2
    st = open_store(store_url, create=False)
    flows = [e for e in st.events() if e.sensor_id == "probe" and e.kind == "flow"]
    bypass = sorted((e.destination.ip, e.time.timestamp() > T0 + 300) for e in flows if "bypass" in e.observations)
    assert bypass == [("34.1.2.3", True), ("52.9.9.9", False)]
    cov = proxy_coverage(st)
    assert (cov.external_flows, cov.matched, cov.proxy_events) == (4, 2, 2) and cov.share == 0.5
    assert len(cov.unmatched_event_ids) == 2 and cov.unmatched_destinations["api.gretel.cloud:443"] == 2
    window = proxy_coverage(st, since=datetime.fromtimestamp(T0 + 300, UTC))
    assert (window.external_flows, window.matched) == (1, 0)
    assert st.verify().ok
    st.close()


def test_without_a_proxy_no_flow_is_called_bypass(tmp_path: Path) -> None:
    t = Trace()
    t.tcp(POD, "52.9.9.9", 443, [client_hello("api.gretel.cloud")])
    path = t.write(tmp_path / "n.pcap")
    summary = run_pcap(path, str(tmp_path / "n.db"))
    assert summary.bypass == 0 and "bypass" not in summary.stats.observations
    st = open_store(str(tmp_path / "n.db"), create=False)
    assert proxy_coverage(st).share == 0.0  # still measurable: the proxy saw none of it
    st.close()
