"""What a live probe's proxy-index refresh costs its capture loop, side by side with
re-reading a window of the store.

    python benchmarks/probe_refresh.py [--rate 1000] [--ticks 20]

Every half second the live probe settles the flows whose grace period ended, and for
that it needs the proxy's records since its last look. A store fills at `--rate`
events a second (one in ten the proxy's, the rest the probe's own flows). Per tick
the script appends half a second of events, then measures:

- ours: `ProxyIndex.tail` from the proxy chains' last seqs (each record read once,
  other sensors' rows never touched);
- the reference: `Store.events` over the last 30.5 s, every event decoded and the
  proxy's picked out: a window wide enough for records the proxy writes late, which
  is how the probe refreshed before.

Both run in the capture loop's thread, so the share of each half-second tick they take
is what the capture loop loses.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from auditor.model import Destination, EgressEvent, FlowInfo, HttpInfo
from auditor.probe.coverage import ProxyIndex, proxy_heads
from auditor.store.base import Store, open_store

TICK_S = 0.5
WINDOW_S = 30.5


def events(rate: int, start: datetime, seconds: float, offset: int) -> list[EgressEvent]:
    out: list[EgressEvent] = []
    for i in range(offset, offset + int(rate * seconds)):
        t = start + timedelta(seconds=(i - offset) / rate)
        if i % 10 == 0:
            out.append(
                EgressEvent(
                    sensor_id="proxy-main", kind="http", time=t,
                    destination=Destination(host="api.gretel.cloud", sni="api.gretel.cloud", ip="34.1.2.3", port=443, tls=True),
                    http=HttpInfo(method="GET", scheme="https", path=f"/projects/{i}", status=200),
                )
            )  # fmt: skip
        else:
            out.append(
                EgressEvent(
                    sensor_id="probe", kind="flow", time=t,
                    destination=Destination(ip=f"52.1.{i % 250}.{i % 199}", port=443, sni="h.example.com", tls=True),
                    flow=FlowInfo(first_seen=t, last_seen=t, direction="egress"),
                )
            )  # fmt: skip
    return out


def append(store: Store, batch: list[EgressEvent]) -> None:
    for i in range(0, len(batch), 1000):
        store.append(batch[i : i + 1000])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000, help="events a second the store receives")
    ap.add_argument("--ticks", type=int, default=20)
    args = ap.parse_args()
    store = open_store(str(Path(tempfile.mkdtemp(prefix="probe-refresh-")) / "ev.db"))
    now = datetime.now(UTC) - timedelta(seconds=60 + args.ticks * TICK_S)
    append(store, events(args.rate, now, 60, 0))
    now += timedelta(seconds=60)
    offset = 60 * args.rate
    ours = ProxyIndex()
    seqs = proxy_heads(store)
    ours.load(store, now - timedelta(seconds=WINDOW_S), None)
    reference = ProxyIndex()
    t_ours: list[float] = []
    t_ref: list[float] = []
    for _ in range(args.ticks):
        batch = events(args.rate, now, TICK_S, offset)
        append(store, batch)
        offset += len(batch)
        now += timedelta(seconds=TICK_S)
        t = time.perf_counter()
        ours.tail(store, seqs)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        for ev in store.events(now - timedelta(seconds=WINDOW_S), None):
            reference.add(ev, ev.id)
        t_ref.append(time.perf_counter() - t)
    assert ours.events >= args.ticks * args.rate * TICK_S / 10, "the tail missed proxy records"
    mine, theirs = statistics.median(t_ours), statistics.median(t_ref)
    print(f"store receiving {args.rate:,} events/s (10% the proxy's), {args.ticks} ticks of {TICK_S} s, median per tick:")
    print(f"  ProxyIndex.tail (ours)                 {mine * 1000:8.2f} ms  ({mine / TICK_S:6.1%} of the capture loop)")
    print(f"  Store.events over {WINDOW_S} s (reference) {theirs * 1000:8.2f} ms  ({theirs / TICK_S:6.1%} of the capture loop)")
    print(f"  ratio: ours takes {mine / theirs:.3f} of the reference's time ({theirs / mine:,.0f}x less)")
    store.close()


if __name__ == "__main__":
    main()
