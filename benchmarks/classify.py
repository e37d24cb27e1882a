"""Classifier throughput beside a reference, in one run.

(a) ~1 KB metadata bodies per second: classify() against json.loads of the same bodies.
(b) MB/s over a 10 MB body against a fingerprint set of 1M cells: classify() against
    `grep -F -f` of the same cell values over the same body.
Targets (issue 4): >= 20k metadata bodies/s; >= 50 MB/s on large bodies.

    python benchmarks/classify.py [--bodies 5000] [--mb 10] [--cells 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import subprocess
import tempfile
import time
from pathlib import Path

from auditor.classify import Limits, classify, load_context
from auditor.classify.fingerprint import build


def metadata_bodies(n: int) -> list[tuple[str, str, bytes]]:
    """~1 KB bodies in the shapes hybrid workers send: log batches (60%), status updates
    (20%), task status with an error and a traceback (20%)."""
    rnd = random.Random(1)
    out = []
    for i in range(n):
        uid = f"{rnd.getrandbits(96):024x}"
        kind = i % 5
        if kind < 3:
            logs = [
                {"ts": f"2024-02-01T10:00:{k:02d}.{rnd.randint(0, 999999):06d}Z", "msg": rnd.choice(["Training data loaded", "Epoch complete", "Generating records", "Model saved"]),
                 "ctx": {"epoch": k, "num_epochs": 100, "record_count": rnd.randint(100, 99999), "loss": round(rnd.random(), 4)}, "seq": k, "stage": rnd.choice(["pre", "train", "run", "post"])}
                for k in range(6)
            ]
            out.append(("POST", f"/projects/models/logs?uid={uid}&type=train", json.dumps({"uid": uid, "logs": logs}).encode()))
        elif kind == 3:
            doc = {
                "uid": uid,
                "status": rnd.choice(["pending", "active", "completed"]),
                "last_active_hb": "2024-02-01T10:00:00Z",
                "container_image_version": "2024.01.3",
                "status_history": [{"status": s, "ts": f"2024-02-01T09:{k:02d}:00Z"} for k, s in enumerate(["created", "pending", "active", "active", "active", "active", "active", "active", "active", "active"])],
            }
            out.append(("PATCH", f"/projects/models?uid={uid}&type=train", json.dumps(doc).encode()))
        else:
            doc = {
                "status": "RUN_STATUS_ERROR", "action_name": "train", "action_type": "gretel_model",
                "error_msg": "RuntimeError: CUDA out of memory while allocating 2.00 GiB on device 0", "error_code": 500,
                "stack_trace": 'Traceback (most recent call last):\n  File "/opt/gretel/worker.py", line 212, in run_model\n    trainer.train(config)\n  File "/opt/gretel/trainer.py", line 88, in train\n    raise RuntimeError(msg)\n' * 2,
                "execution_summary": {"records_in": rnd.randint(100, 9999), "records_out": 0}, "log_location": f"s3://customer-bucket/logs/wr_{uid}/t.jsonl",
            }
            out.append(("PATCH", f"/v1/workflows/runs/wr_{uid}/tasks/t_1", json.dumps(doc).encode()))
    return out


def bench_metadata(n: int) -> tuple[float, float, int]:
    bodies = metadata_bodies(n)
    size = sum(len(b) for _, _, b in bodies) // len(bodies)
    for method, path, b in bodies[:200]:
        classify(b, method=method, path=path, host="api.gretel.cloud", content_type="application/json")
    ours = ref = 0.0
    for _ in range(5):  # best of 5 rounds each, interleaved: the machine is shared
        t0 = time.perf_counter()
        for method, path, b in bodies:
            info = classify(b, method=method, path=path, host="api.gretel.cloud", content_type="application/json")
            assert info.labels == ["metadata"], info.findings
        ours = max(ours, n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _, _, b in bodies:
            json.loads(b)
        ref = max(ref, n / (time.perf_counter() - t0))
    return ours, ref, size


def _word(rnd: random.Random, k: int) -> str:
    return "".join(rnd.choices(string.ascii_lowercase, k=k))


def bench_large(mb: int, cells: int, tmp: Path) -> tuple[float, float | None, int, int]:
    rnd = random.Random(2)
    cols = 10
    rows = cells // cols
    data = tmp / "train.csv"
    values: list[list[str]] = []
    with data.open("w") as fh:
        fh.write(",".join(f"c{i}" for i in range(cols)) + "\n")
        for r in range(rows):
            row = [f"{_word(rnd, 6)} {_word(rnd, 7)}", f"{_word(rnd, 8)}@example.com", f"ACC-{r:08d}"] + [_word(rnd, rnd.randint(5, 12)) for _ in range(cols - 3)]
            values.append(row)
            fh.write(",".join(row) + "\n")
    key = tmp / "K"
    key.write_bytes(os.urandom(32))
    t0 = time.perf_counter()
    build(data, tmp / "d.fp", key)
    build_s = time.perf_counter() - t0
    ctx = load_context(fingerprints=tmp / "d.fp", key_file=key)
    # the body: log-like lines of unrelated words, with 50 leaked rows spread through it
    target = mb << 20
    parts: list[str] = []
    size = 0
    leaked = 0
    while size < target:
        if rnd.random() < 0.0005 and leaked < 50:
            line = ",".join(values[rnd.randrange(rows)]) + "\n"
            leaked += 1
        else:
            line = f"2024-02-01T10:00:{rnd.randint(0, 59):02d}Z worker {_word(rnd, 5)} step {rnd.randint(0, 99999)} {_word(rnd, 9)} {_word(rnd, 4)}={rnd.random():.4f}\n"
        parts.append(line)
        size += len(line)
    body = "".join(parts).encode()
    (tmp / "body.txt").write_bytes(body)
    limits = Limits(time_budget_s=600, max_decoded_bytes=64 << 20)
    ours_s = float("inf")
    for _ in range(5):  # best of 5: the machine is shared, and the first call also pays for page faults
        t0 = time.perf_counter()
        info = classify(body, method="PUT", path="/upload/x", host="storage.example.com", content_type="text/plain", limits=limits, context=ctx)
        ours_s = min(ours_s, time.perf_counter() - t0)
    fp = next((f for f in info.findings if f.label == "fingerprint-match"), None)
    matched = fp.count if fp else 0
    ref_mbs = None
    if shutil.which("grep"):
        (tmp / "values.txt").write_text("".join(v + "\n" for row in values for v in row))
        t0 = time.perf_counter()
        subprocess.run(["grep", "-F", "-c", "-f", str(tmp / "values.txt"), str(tmp / "body.txt")], capture_output=True, check=False, env={"LC_ALL": "C"})
        ref_mbs = len(body) / (1 << 20) / (time.perf_counter() - t0)
    print(f"    fingerprint build: {rows} rows / {cells} cells in {build_s:.1f} s; {leaked} rows leaked, {matched} rows matched")
    return len(body) / (1 << 20) / ours_s, ref_mbs, len(body), matched


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bodies", type=int, default=5000)
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--cells", type=int, default=1_000_000)
    args = ap.parse_args()
    ours, ref, size = bench_metadata(args.bodies)
    print(f"(a) metadata bodies (~{size} B: 60% log batches, 20% status updates, 20% task errors with tracebacks), {args.bodies} bodies")
    print(f"    classify():  {ours:,.0f} bodies/s")
    print(f"    json.loads:  {ref:,.0f} bodies/s")
    print(f"    ratio classify/json.loads = {ours / ref:.3f}  (target >= 20,000 bodies/s: {'met' if ours >= 20_000 else 'NOT met'})")
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        print(f"(b) {args.mb} MB body against a fingerprint set of {args.cells:,} cells")
        mbs, ref_mbs, _, _ = bench_large(args.mb, args.cells, Path(tmp))
        print(f"    classify():  {mbs:.1f} MB/s")
        if ref_mbs is not None:
            print(f"    grep -F -f:  {ref_mbs:.1f} MB/s (same values, same body)")
            print(f"    ratio classify/grep = {mbs / ref_mbs:.2f}  (target >= 50 MB/s: {'met' if mbs >= 50 else 'NOT met'})")


if __name__ == "__main__":
    main()
