"""Coverage against the proxy: probe flows matched to proxy upstream connections in the same store."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from auditor.model import REFUSED_NOTE, Decision, Destination, EgressEvent, FlowInfo, HttpInfo
from auditor.probe.coverage import ProxyIndex, mark_bypass, proxy_coverage, proxy_heads
from auditor.probe.engine import ProbeConfig
from auditor.probe.flows import Networks
from auditor.probe.runner import _Session, run_pcap
from auditor.rules import load_pack
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


def test_node_pulls_around_the_proxy_are_checked_against_the_registry_get_login_named(tmp_path: Path) -> None:
    """Red flag 10 for pulls the proxy never carries: a node's TLS connection to a
    registry's name other than the one a get_login answer (recorded by the proxy) named."""
    named, other = "074762682575.dkr.ecr.us-west-2.amazonaws.com", "123456789012.dkr.ecr.us-west-2.amazonaws.com"
    node = "192.168.10.7"
    store_url = str(tmp_path / "ev.db")
    login = _proxy_event("34.1.2.3", "api.gretel.cloud", T0 + 0.001)
    assert login.http is not None
    login.http.path, login.http.login_registry = "/opt/containers/get_login", named
    login.decision = Decision(action="allowed", rule_id="allow.gretel-api")
    stray = login.model_copy(deep=True, update={"id": "stray-login", "decision": Decision(action="violation", rule_id="egress.host-not-allowed")})
    assert stray.http is not None
    stray.http.login_registry = other  # an answer the policy did not allow names nothing
    st = open_store(store_url)
    st.append([login, stray])
    st.close()
    t = Trace(t0=T0 - 100)
    t.tcp(node, "52.10.0.9", 443, [client_hello(other)])  # before any get_login answer: nothing to check against
    later = Trace(t0=T0 + 1)
    later.tcp(node, "52.10.0.1", 443, [client_hello(named)])
    later.tcp(node, "52.10.0.2", 443, [client_hello(other)])
    later.tcp(node, "52.10.0.3", 443, [client_hello("quay.io")])
    later.tcp(node, "52.10.0.4", 443, [client_hello("downloads.example.org")])  # not a registry's name
    t.packets += later.packets
    cfg = ProbeConfig(proxies=["10.43.12.7:3128"], cluster_cidrs=["10.42.0.0/16", "10.43.0.0/16", "192.168.10.0/24"])
    run_pcap(t.write(tmp_path / "pulls.pcap"), store_url, config=cfg, pack=load_pack())
    st = open_store(store_url, create=False)
    flows = [e for e in st.events() if e.sensor_id == "probe" and e.kind == "flow"]
    st.close()
    marked = {(e.destination.ip, "registry-not-named" in e.observations) for e in flows}
    assert marked == {("52.10.0.9", False), ("52.10.0.1", False), ("52.10.0.2", True), ("52.10.0.3", True), ("52.10.0.4", False)}
    [pull] = [e for e in flows if e.destination.ip == "52.10.0.2"]
    assert f"get_login named {named}" in pull.notes
    assert pull.decision is not None and "obs.registry-not-named" in pull.decision.rule_ids


def test_the_answer_in_force_before_the_capture_began_is_found_in_the_store(tmp_path: Path) -> None:
    """The agent asks hourly: a probe whose first flow comes twenty minutes after the last
    answer still judges pulls against it."""
    named, other = "074762682575.dkr.ecr.us-west-2.amazonaws.com", "123456789012.dkr.ecr.us-west-2.amazonaws.com"
    store_url = str(tmp_path / "ev.db")
    login = _proxy_event("34.1.2.3", "api.gretel.cloud", T0)
    assert login.http is not None
    login.http.path, login.http.login_registry = "/opt/containers/get_login", named
    login.decision = Decision(action="allowed", rule_id="allow.gretel-api")
    st = open_store(store_url)
    st.append([login])
    st.close()
    t = Trace(t0=T0 + 1200)
    t.tcp("192.168.10.7", "52.10.0.2", 443, [client_hello(other)])
    cfg = ProbeConfig(proxies=["10.43.12.7:3128"], cluster_cidrs=["10.42.0.0/16", "10.43.0.0/16", "192.168.10.0/24"])
    run_pcap(t.write(tmp_path / "later.pcap"), store_url, config=cfg, pack=load_pack())
    st = open_store(store_url, create=False)
    [pull] = [e for e in st.events() if e.sensor_id == "probe" and e.kind == "flow"]
    st.close()
    assert "registry-not-named" in pull.observations


def test_the_index_tails_what_the_proxy_appends_and_never_decodes_other_sensors_rows(tmp_path: Path) -> None:
    store_url = str(tmp_path / "ev.db")
    st = open_store(store_url)
    st.append([_proxy_event("34.1.2.3", "api.gretel.cloud", T0)])
    flow = EgressEvent(sensor_id="probe", kind="flow", time=datetime.fromtimestamp(T0, UTC), destination=Destination(ip="52.9.9.9", port=443))
    st.append([flow])
    db = sqlite3.connect(store_url)
    db.execute("DROP TRIGGER records_no_update")
    db.execute("UPDATE records SET body = 'not an event' WHERE sensor_id = 'probe'")  # a row no proxy index may need
    db.commit()
    db.close()
    index = ProxyIndex()
    seqs = proxy_heads(st)
    index.load(st, datetime.fromtimestamp(T0 - 5, UTC), None)
    assert index.events == 1 and seqs == {"proxy-main": 1}
    st.append([_proxy_event("34.7.7.7", "artifacts.gretel.cloud", T0 - 600)])  # written late, timed long before the window
    index.tail(st, seqs)
    index.tail(st, seqs)
    assert index.events == 2 and seqs == {"proxy-main": 2}
    assert index.seen(((True, ("34.7.7.7", 443)),), int((T0 - 601) * 1e6), int((T0 - 599) * 1e6))
    index.load(st, datetime.fromtimestamp(T0 - 700, UTC), None)  # overlapping reads count each record once
    assert index.events == 2
    st.close()


def test_a_probe_refresh_reads_proxy_records_written_long_after_their_time(tmp_path: Path) -> None:
    """The proxy records a request when it completes; a long upload is written minutes
    after the time it carries. A refresh tails the proxy's chain, not a window of time."""
    store_url = str(tmp_path / "ev.db")
    session = _Session(ProbeConfig(), Networks(None), "test", None, store_url=store_url)
    start = datetime.fromtimestamp(T0, UTC)
    session.prime_index(start)
    st = open_store(store_url)

    def flow_at(first: float, last: float, ip: str) -> EgressEvent:
        return EgressEvent(
            sensor_id="probe", kind="flow", time=datetime.fromtimestamp(first, UTC), destination=Destination(ip=ip, port=443),
            flow=FlowInfo(first_seen=datetime.fromtimestamp(first, UTC), last_seen=datetime.fromtimestamp(last, UTC), direction="egress"),
        )

    session._refresh_index([flow_at(T0 + 1, T0 + 200, "52.1.1.1")])
    st.append([_proxy_event("34.1.2.3", "api.gretel.cloud", T0 + 10)])  # an upload that began at T0 + 10 ends 290 s later
    upload = flow_at(T0 + 10, T0 + 300, "34.1.2.3")
    session._refresh_index([upload])
    assert mark_bypass([upload], session.index) == 0
    session.close()
    st.close()


def test_a_request_the_proxy_refused_accounts_for_no_flow(tmp_path: Path) -> None:
    """Enforce mode refuses before any upstream connection: that record names a host but
    connected nowhere, so a direct flow naming the same host is still around the proxy."""
    cfg = ProbeConfig(proxies=["10.43.12.7:3128"], cluster_cidrs=["10.42.0.0/16", "10.43.0.0/16"])
    bypass = []
    for refused in (False, True):
        store_url = str(tmp_path / f"ev-{refused}.db")
        st = open_store(store_url)
        record = _proxy_event(None, "api.gretel.cloud", T0 + 0.01)
        if refused:
            record.notes.append(REFUSED_NOTE)
        st.append([record])
        st.close()
        t = Trace()
        t.tcp(POD, "52.9.9.9", 443, [client_hello("api.gretel.cloud")])
        bypass.append(run_pcap(t.write(tmp_path / f"c-{refused}.pcap"), store_url, config=cfg).bypass)
    assert bypass == [0, 1]  # a record of only the name accounts for the flow; a refused one does not
