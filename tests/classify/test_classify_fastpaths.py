"""The fast paths catch what the slow paths catch.

Each fast path is checked against the slow one it replaces: the structure-only walk of
a proven-quiet JSON body against the full per-string walk (forced by a fingerprint
context, which the quiet proof refuses), the C-level tokeniser against the regex one,
the long-run search against the split it replaced, the query split against parse_qsl,
and the one-pass fingerprint hashing against leaks in escaped and encoded forms.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import unicodedata
from itertools import repeat
from urllib.parse import parse_qsl, quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.classify import ClassifyContext, Limits, classify, load_context
from auditor.classify import fingerprint as fpm
from auditor.classify.decode import _B64_BYTES, _HEX_CHARS, maybe_encoded
from auditor.classify.fingerprint import build, candidates
from auditor.classify.routes import query_of
from auditor.model import PayloadInfo

from verdicts import verdict  # tests/classify/verdicts.py (pytest puts this folder on the path)

HOST = "api.gretel.cloud"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])



def _same_both_ways(body: bytes, method: str, path: str, ctx: ClassifyContext, limits: Limits | None = None) -> PayloadInfo:
    fast = classify(body, method=method, path=path, host=HOST, content_type="application/json", limits=limits)
    slow = classify(body, method=method, path=path, host=HOST, content_type="application/json", limits=limits, context=ctx)
    assert verdict(fast, in_order=False) == verdict(slow, in_order=False), body
    return fast


STRUCTURED = [
    # plain metadata: the quiet path's bread and butter
    ("POST", "/projects/models/logs?uid=64f1c0ffee0ddba11c0ffee1&type=train", {"uid": "64f1c0ffee0ddba11c0ffee1", "logs": [{"ts": "2024-02-01T10:00:00Z", "msg": "Epoch complete", "ctx": {"epoch": 3, "loss": 0.12}, "seq": 1, "stage": "train"}]}),
    ("PATCH", "/projects/models?uid=abc&type=run", {"uid": "abc", "status": "active", "status_history": [{"status": "created", "ts": "2024-02-01T09:00:00Z"}]}),
    # extra fields at the top and inside a nested model, one holding a record array
    ("PATCH", "/projects/models?uid=abc&type=train", {"uid": "abc", "status": "active", "rows": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 5, "b": 6}], "status_history": [{"status": "x", "note": "y"}]}),
    # a record array and a row array inside ctx (free text)
    ("POST", "/projects/models/logs", {"logs": [{"ts": "t", "msg": "m", "ctx": {"sample": [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5, "y": 6}], "grid": [[1, 2], [3, 4], [5, 6]]}}]}),
    # runner_mode in the body and nested inside a config, data_source inline and as a URI
    ("POST", "/projects", {"name": "p", "runner_mode": "cloud"}),
    ("POST", "/v1/workflows", {"name": "w", "config": {"steps": [{"task": "x", "config": {"data_source": [{"a": 1}, {"a": 2}], "runner_mode": "cloud"}}]}}),
    ("POST", "/v1/workflows", {"name": "w", "config": {"steps": [{"config": {"data_source": "s3://bucket/key.csv"}}]}}),
    ("POST", "/v1/workflows", {"name": "w", "config_text": "name: w\nsteps:\n  - data_source: s3://bucket/train.csv\n"}),
    # schema errors and plaintext credentials
    ("PATCH", "/projects/models", {"uid": 5, "status": None}),
    ("POST", "/v1/connections", {"name": "c", "type": "s3", "credentials": {"k": "v"}}),
    ("POST", "/projects/models/logs", [{"ts": "t", "msg": "one"}, {"ts": "t", "msg": "two"}]),
    # field names that are no names (spaces, a slash): reported by position both ways
    ("PATCH", "/projects/models?uid=abc&type=train", {"uid": "abc", "status": "active", "my rows": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 5, "b": 6}]}),
    ("POST", "/projects/models/logs", {"logs": [{"ts": "t", "msg": "m", "ctx": {"a/b": {"grid": [[1, 2], [3, 4], [5, 6]]}}}]}),
]


@pytest.mark.parametrize("method,path,doc", STRUCTURED)
def test_quiet_walk_equals_full_walk(method: str, path: str, doc: object, unrelated_fps: ClassifyContext) -> None:
    _same_both_ways(json.dumps(doc).encode(), method, path, unrelated_fps)


def test_quiet_walk_trips_the_same_caps(unrelated_fps: ClassifyContext) -> None:
    doc = {"logs": [{"ts": "t", "msg": "m", "ctx": {"k": [{"x": 1, "y": 2}] * 3, "s": ["a"] * 40}} for _ in range(10)]}
    for cap in (5, 17, 60, 200, 411):
        info = _same_both_ways(json.dumps(doc).encode(), "POST", "/projects/models/logs", unrelated_fps, Limits(max_nodes=cap))
        assert info.inspected is False and (info.not_inspected_reason or "").startswith("node-count")
    deep: object = "x"
    for _ in range(12):
        deep = {"d": [deep]}
    info = _same_both_ways(json.dumps({"logs": [{"ts": "t", "msg": "m", "ctx": deep}]}).encode(), "POST", "/projects/models/logs", unrelated_fps, Limits(max_structure_depth=8))
    assert (info.not_inspected_reason or "").startswith("structure-depth")


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "hybrid", "cloud", "s3://b/k", "x y", "runner_mode"]))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "b", "runner_mode", "data_source", "msg", "ctx", "steps"]), inner, max_size=4)), max_leaves=20)
_line = st.fixed_dictionaries({"ts": st.just("2024-02-01T10:00:00Z"), "msg": st.sampled_from(["ok", "done"])}, optional={"ctx": _json, "seq": st.integers(0, 9), "stage": st.sampled_from(["pre", "train", "bogus"]), "extra": _json})


@FUZZ
@given(lines=st.lists(_line, max_size=5), top=st.dictionaries(st.sampled_from(["uid", "runner_mode", "other"]), _json, max_size=2))
def test_quiet_walk_equals_full_walk_fuzzed(lines: list[dict[str, object]], top: dict[str, object], unrelated_fps: ClassifyContext) -> None:
    _same_both_ways(json.dumps({**top, "logs": lines}).encode(), "POST", "/projects/models/logs?uid=x", unrelated_fps)


@FUZZ
@given(cfg=_json)
def test_quiet_walk_equals_full_walk_in_configs(cfg: object, unrelated_fps: ClassifyContext) -> None:
    _same_both_ways(json.dumps({"name": "w", "config": {"steps": [cfg]}}).encode(), "POST", "/v1/workflows", unrelated_fps)


# --- the C-level tokeniser -------------------------------------------------------------------


def _regex_candidates(text: str) -> set[str]:
    """candidates() as it was: the two regexes over the normalised text."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    low = text.casefold()
    if "  " in low:
        low = re.sub(r" {2,}", " ", low)
    out = set(map(str.strip, fpm._SEG.split(low), repeat(fpm.STRIP)))
    if " " in low:
        words = list(map(str.strip, fpm._WORD.findall(low), repeat(fpm.STRIP)))
        out.update(words)
        if len(low) <= fpm._NGRAM_TEXT:
            out.update(f"{a} {b}" for a, b in zip(words, words[1:]))
            out.update(f"{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:]))
    return out - {""}


_TEXT = st.text(alphabet=st.sampled_from(list("aZ9 :,;|\"{}[]<>=&().'!?-@\n\r\t\x0b\x0c\x1c\x1f") + ["é", "\xa0", "\u2028", "\x85", "Ａ"]), max_size=60)


@FUZZ
@given(text=_TEXT)
def test_tokeniser_equals_the_regexes(text: str) -> None:
    assert candidates(text) - {""} == _regex_candidates(text)


def test_tokeniser_on_log_lines() -> None:
    text = 'ERROR: row "Alice  Smith"; email=alice@example.com,city:  Springfield\tACC-1234567 [ok] (x)\x1cnext: value\n'
    assert candidates(text) - {""} == _regex_candidates(text)
    assert {"alice smith", "alice@example.com", "springfield", "acc-1234567"} <= candidates(text)


# --- encoded runs -----------------------------------------------------------------------


def _split_maybe_encoded(text: str, min_len: int) -> bool:
    """maybe_encoded as it was: translate, split, then the same checks per run; and one
    search of the whole text for two lines of the alphabet (the break raw or escaped),
    from run starts and possessive, as a backtracking search of a long run is quadratic;
    and a stretch of base85's alphabet, 40 long, with three of its own characters."""
    table = bytes(b if b in _B64_BYTES else 0x20 for b in range(256))
    data = text.encode("utf-8", "surrogatepass")
    if len(text) >= min_len and re.search(rb"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{8,}+(?:\r?\n|\\r\\n|\\n)[A-Za-z0-9+/]{8}", data):
        return True
    for r in re.findall(rb"[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]{40,}", data):
        if len(text) >= min_len and sum(r.count(c) for c in b"!#$%&()*;<>?@^`{|}~") >= 3:
            return True
    for r in data.translate(table).split():
        if len(r) < min_len:
            continue
        if re.search(rb"\d", r) is None and (r.islower() or r.isupper()):
            continue
        if len(r) < 128 and not len(r) % 2 and _HEX_CHARS.issuperset(r) and not binascii.unhexlify(r).isascii():
            continue
        return True
    return False


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("aB7f+/=_-.: \"\n{;~") + ["é"]), max_size=120), min_len=st.sampled_from([4, 8, 16]))
def test_maybe_encoded_equals_the_split(text: str, min_len: int) -> None:
    assert maybe_encoded(text, min_len) == _split_maybe_encoded(text, min_len)


# --- query strings ---------------------------------------------------------------------------


@FUZZ
@given(query=st.text(alphabet=st.sampled_from(list("ab=&;#?%+2F")), max_size=30))
def test_query_split_equals_parse_qsl(query: str) -> None:
    expected = parse_qsl(query.split("#", 1)[0], keep_blank_values=True, max_num_fields=1000)
    assert query_of("/p?" + query) == expected


# --- fingerprints: one pass, nothing lost ----------------------------------------------------------


ROWS = [
    ("Alice Smith", "alice.smith@example.com", "123456789", "ACC-00012345", "Springfield"),
    ("Bob Jones", "bob.jones@example.org", "987654321", "ACC-00067890", "Shelbyville"),
    ("Carol White", "carol.w@example.net", "555123456", "ACC-00011111", "Ogdenville"),
]


@pytest.fixture(scope="module")
def row_fps(tmp_path_factory: pytest.TempPathFactory) -> ClassifyContext:
    tmp = tmp_path_factory.mktemp("rows")
    (tmp / "d.csv").write_text("name,email,ssn,account,city\n" + "".join(",".join(r) + "\n" for r in ROWS))
    (tmp / "K").write_bytes(os.urandom(32))
    build(tmp / "d.csv", tmp / "d.fp", tmp / "K")
    return load_context(fingerprints=tmp / "d.fp", key_file=tmp / "K")


def _status(msg: str) -> bytes:
    return json.dumps({"uid": "x", "status": "error", "error_msg": msg}).encode()


def _fp_rows(info: PayloadInfo) -> int:
    return next((f.count for f in info.findings if f.label == "fingerprint-match"), 0)


@pytest.mark.parametrize(
    "body",
    [
        # the digit-only cell (9 digits: fingerprinted, and kept by the skip rule) and a name
        _status("lookup failed for 987654321 (bob jones)"),
        # JSON \u escapes of every character
        ('{"uid": "x", "status": "error", "error_msg": "' + "".join(f"\\u{ord(c):04x}" for c in "carol white / ogdenville") + '"}').encode(),
        # URL-encoded inside a string
        _status(quote("name=Alice Smith&acct=ACC-00012345", safe="")),
        # base64 of a CSV row
        _status(base64.b64encode(b"Bob Jones,ACC-00067890\n").decode()),
        # upper case, full-width and extra whitespace
        _status("ALICE   SMITH  |  ＳＰＲＩＮＧＦＩＥＬＤ"),
    ],
)
def test_fingerprints_caught_in_escaped_and_encoded_forms(body: bytes, row_fps: ClassifyContext) -> None:
    info = classify(body, method="PATCH", path="/projects/models", host=HOST, context=row_fps)
    assert _fp_rows(info) == 1 and "training-data" in info.labels


def test_fingerprints_in_a_big_text_body(row_fps: ClassifyContext) -> None:
    filler = "".join(f"2024-02-01T10:00:{i % 60:02d}Z worker step {i} loss={i / 7:.4f}\n" for i in range(20_000))
    leak = "\n".join(",".join(r) for r in ROWS) + "\n"
    body = (filler + leak + filler).encode()
    info = classify(body, method="PUT", path="/upload", host="storage.example.com", content_type="text/plain", limits=Limits(time_budget_s=60), context=row_fps)
    assert _fp_rows(info) == 3
    clean = classify((filler + "Alice Smith alone\n").encode(), method="PUT", path="/upload", host="storage.example.com", content_type="text/plain", limits=Limits(time_budget_s=60), context=row_fps)
    assert _fp_rows(clean) == 0


def test_skip_rules_only_drop_what_was_never_fingerprinted(row_fps: ClassifyContext) -> None:
    fps = row_fps.fingerprints
    assert fps is not None
    tokens = {"12345", "2021", "abc", "x" * (fps.header.max_len + 1), "alice smith", "123456789", "acc-00012345"}
    found = fpm.hits(fps, tokens)
    assert sorted(found.values()) == ["123456789", "acc-00012345", "alice smith"]
    for t in ("12345", "2021", "abc", "x" * (fps.header.max_len + 1)):
        assert not fpm.informative(t) or len(t) > fps.header.max_len


# --- big texts: the gate's keyword sightings stand in for a second pass ------------------------------


def test_big_text_credentials_from_the_gate_sightings() -> None:
    from auditor.classify import detectors as det

    filler = "".join(f"2024-02-01T10:00:{i % 60:02d}Z worker step {i} token bucket refill\n" for i in range(1_000))
    secret = "AKIA" + "Q7RT2MZK4XWP9LBN"
    text = filler + f"export AWS_ACCESS_KEY_ID={secret}\npassword = 'Vr8#kq2!Lm9z'\n" + filler
    assert len(text) > det.WINDOWED
    sightings: list[det.Sighting] = []
    hits = det.keyword_hits(text.lower(), sightings)
    with_sightings = det.credential_findings(text, hits, "body", sightings)
    second_pass = det.credential_findings(text, hits, "body")
    assert [(f.detector, f.offset) for f in with_sightings] == [(f.detector, f.offset) for f in second_pass]
    assert {"credential:aws-access-key", "credential:password-value"} <= {f.detector for f in with_sightings}
    info = classify(text.encode(), method="PUT", path="/upload", host="storage.example.com", content_type="text/plain")
    assert "credential" in info.labels and secret not in info.model_dump_json()


# --- personal data: upper-case ids tried only where they can start --------------------------------


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("AZGBQ0123456789 -.\tab") + ["é"]), max_size=60))
def test_upper_candidates_equal_finditer(text: str) -> None:
    from auditor.classify import detectors as det

    expected = [(m.start(), m.end()) for m in det._UPPER_CAND.finditer(text)]
    data = text.encode("utf-8", "surrogatepass")
    openings = det._shapes(data)[2] if len(data) == len(text) else None
    assert [(m.start(), m.end()) for m in det._upper_candidates(text, openings)] == expected


def test_ninos_and_ibans_in_a_big_text() -> None:
    from auditor.classify.detectors import pii_hits

    filler = "".join(f"ACC-{i:08d} AB-12 step {i} ok\n" for i in range(3_000))
    text = filler + "nino JK 12 34 56 C, iban GB82 WEST 1234 5698 7654 32\n" + filler
    kinds = sorted(h.kind for h in pii_hits(text))
    assert kinds == ["iban", "nino"]


def test_personal_data_in_a_long_query_value_is_reported() -> None:
    # the route facts are cached per path; the query is judged per call, its PII included
    note = quote("contact alice.smith@example.com bob.jones@example.org carol@example.net for the rows please")
    for _ in range(2):
        info = classify(b"", method="GET", path="/users/me/invites?note=" + note, host=HOST)
        assert {"pii", "training-data"} <= set(info.labels)
        assert {f.field_path for f in info.findings if f.label == "pii"} == {"query.note"}


@pytest.mark.parametrize(
    "name",
    ["model.tar.gz", "x/MODEL.TAR.GZ", "a/data.gz\n", "report_json.json.gz?sig=1", "Classification_Report_v2.GZ", "up/GRETEL_0123abcd_train.csv", "data.gzip", "model.tar", "plain/path", ""],
)
def test_artifact_name_prefilter_drops_no_match(name: str) -> None:
    from auditor.classify import detectors as det

    bare = name.split("?", 1)[0]
    expected = next(((label, what) for rx, label, what in det._ARTIFACT_NAMES if rx.search(bare)), None)
    assert det.artifact_name(name) == (expected if name else None)


# --- one-pass proofs and prefilters: never a miss --------------------------------------------------

_SIGN_TEXT = st.lists(
    st.sampled_from(list('aZ09 -.\t)+:/@%"[{}\\,\n') + ["é", "K", "İ", "Secret", "PASSWORD", "grt", "AKIA", "%2f", "123-45-6789", "GB82 WEST", "://", "eyJ"]),
    max_size=30,
).map("".join)


@FUZZ
@given(text=_SIGN_TEXT)
def test_silent_text_is_quiet_to_the_gate(text: str) -> None:
    """det.silent's one pass says nothing where the keyword pass, the percent check and the
    PII detector would each find something (the typed path and the query skip them on it)."""
    from auditor.classify import detectors as det
    from auditor.classify.decode import has_percent_escapes

    marks: set[str] = set()
    found = det.keyword_hits(text.lower(), None, marks)
    if det.silent(text):
        assert not found and not marks and not has_percent_escapes(text) and not det.pii_hits(text)


def test_silent_ends_at_the_first_sign() -> None:
    from auditor.classify import detectors as det

    clean = '{"uid": "64f1c0ffee0ddba11c0ffee1", "logs": [{"ts": "2024-02-01T10:00:00.123456Z", "msg": "Epoch complete", "seq": 1}]}'
    assert det.silent(clean)
    for sign in ("Token", "x\\u0040y", "%41", "a@b.c", "555-123-4567", "GB82 WEST", '"[1]', "café"):
        assert not det.silent(clean + sign), sign


def _magic_in_order(data: bytes) -> str | None:
    """detectors.magic as one ordered chain, without its first-byte shortcut."""
    import struct

    head = data[:16]
    chain: list[tuple[bool, str]] = [
        (head[:4] == b"PAR1", "Parquet file"),
        (head[:6] == b"ARROW1", "Arrow IPC file"),
        (head[:4] == b"Obj\x01", "Avro container"),
        (head[:3] == b"ORC", "ORC file"),
        (head[:4] == b"\xff\xff\xff\xff" and len(data) > 16 and 0 < struct.unpack("<i", data[4:8])[0] < len(data) and data[8:12] != b"\xff\xff\xff\xff", "Arrow IPC stream"),
        (head[:4] == b"GGUF", "GGUF model"),
        (head[:4] in (b"ggml", b"ggjt", b"lmgg", b"ggmf"), "GGML model"),
        (head[:6] == b"\x93NUMPY", "NumPy array"),
        (head[:8] == b"\x89HDF\r\n\x1a\n", "HDF5 (Keras) weights"),
        (data[4:8] == b"TFL3", "TensorFlow Lite model"),
        (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5, f"Python pickle (protocol {head[1] if len(head) > 1 else 0})"),
    ]
    for hit, what in chain:
        if hit:
            return what
    if len(data) >= 10:
        (n,) = struct.unpack("<Q", data[:8])
        if 2 <= n <= min(len(data) - 8, 100 << 20) and data[8:9] == b"{":
            header = data[8 : 8 + min(n, 4096)]
            if b"dtype" in header and (b"data_offsets" in header or b"__metadata__" in header):
                return "safetensors weights"
    if head[:1] == b"\x08" and len(data) > 32:
        window = data[:512]
        if b"onnx" in window.lower() or (b"pytorch" in window and b"\x3a" in window):
            return "ONNX model"
    return None


_LEADS = [b"PAR1", b"ARROW1", b"Obj\x01", b"ORC", b"\xff\xff\xff\xff", b"GGUF", b"ggml", b"lmgg", b"\x93NUMPY", b"\x89HDF\r\n\x1a\n", b"\x80\x04", b"\x08", b"{", b"P", b"g"]


@FUZZ
@given(lead=st.sampled_from(_LEADS), middle=st.sampled_from([b"", b"TFL3", b"\x00\x00\x00\x00", b"\x10\x00\x00\x00"]), rest=st.binary(max_size=40))
def test_magic_first_byte_shortcut_keeps_the_order(lead: bytes, middle: bytes, rest: bytes) -> None:
    from auditor.classify import detectors as det

    for data in (lead + rest, lead[:4].ljust(4, b"x") + middle + rest, lead + middle + b'{"dtype": 1, "data_offsets": 2}' + rest):
        found = det.magic(data)
        assert (found.what if found else None) == _magic_in_order(data), data


def _csv_block_reference(text: str, min_rows: int = 3) -> tuple[int, int, int, str] | None:
    """detectors._csv_block_walked without its count prefilters."""
    from auditor.classify.detectors import _DELIMS, _csv_cols

    for delim in _DELIMS:
        if delim not in text:
            continue
        run_start, run_len, run_cols, pos = 0, 0, -1, 0
        for line in text.split("\n"):
            cols = _csv_cols(line, delim)
            if cols >= 2 and cols == run_cols:
                run_len += 1
            elif cols >= 2:
                run_start, run_len, run_cols = pos, 1, cols
            else:
                run_len, run_cols = 0, -1
            if run_len >= min_rows:
                rows = run_len
                for extra in text[pos + len(line) + 1 :].split("\n"):
                    if extra.strip().count(delim) == run_cols:
                        rows += 1
                    else:
                        break
                return run_start, rows, run_cols + 1, delim
            pos += len(line) + 1
    return None


@FUZZ
@given(lines=st.lists(st.lists(st.sampled_from(list("a,;|\t ") + ['File "', "at "]), max_size=8).map("".join), max_size=10), min_rows=st.sampled_from([1, 2, 3]))
def test_csv_block_prefilters_drop_no_block(lines: list[str], min_rows: int) -> None:
    from auditor.classify.detectors import _csv_block_walked

    text = "\n".join(lines)
    assert _csv_block_walked(text, min_rows) == _csv_block_reference(text, min_rows)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("aB7f+/=_-.: \"\n") + ["é"]), max_size=80), at=st.floats(0, 1), min_len=st.sampled_from([4, 16]))
def test_maybe_encoded_prefilter_on_big_texts(text: str, at: float, min_len: int) -> None:
    """Past 64 KiB a Hyperscan pass first looks for any long run: the same answer."""
    filler = "ok step 12 done. " * 4_000
    cut = int(len(filler) * at)
    big = filler[:cut] + text + filler[cut:]
    assert maybe_encoded(big, min_len) == _split_maybe_encoded(big, min_len)


@FUZZ
@given(values=st.lists(st.sampled_from(["train", "64f1c0ffee0ddba11c0ffee1", "a%2Fb", "token", "Secret", "x" * 70, "hybrid", "QUJDREVGR0hJSktMTU5PUFFSU1RVVg", "a@b.co"]), max_size=4), keys=st.sampled_from(["uid", "type", "runner_mode", "note"]))
def test_query_fast_path_equals_the_leaves(values: list[str], keys: str, unrelated_fps: ClassifyContext) -> None:
    """Query values the gate finds nothing in only count nodes; the fingerprint context
    forces the per-value leaves: the same verdict either way."""
    query = "&".join(f"{keys}{i}={v}" if keys != "runner_mode" else f"{keys}={v}" for i, v in enumerate(values))
    _same_both_ways(b"", "GET", "/users/me/invites?" + query, unrelated_fps)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-20, 20) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=2), inner, max_size=6),
    max_leaves=60,
)


def _count_values(doc: object) -> int:
    if isinstance(doc, list):
        return 1 + sum(_count_values(v) for v in doc)
    if isinstance(doc, dict):
        return 1 + sum(_count_values(v) for v in doc.values())
    return 1


@given(st.lists(_JSON_VALUES, min_size=1, max_size=4), st.booleans())
@settings(max_examples=300, deadline=None)
def test_values_fit_never_admits_more_values_than_the_text_holds(docs: list[object], ndjson: bool) -> None:
    """The length bound behind `_values_fit`: compact JSON (or NDJSON lines) of n characters
    holds at most (n + 1) // 2 values, so a text it admits cannot walk past the node cap."""
    from auditor.classify.engine import _values_fit

    docs = docs if ndjson else docs[:1]
    text = "\n".join(json.dumps(d, separators=(",", ":")) for d in docs)
    values = sum(_count_values(d) for d in docs)
    assert values <= (len(text) + 1) // 2
    assert not _values_fit(text, 0, 3 * values + 7)  # one node short of the worst case: refused
    assert _values_fit(text, 0, 3 * ((len(text) + 1) // 2) + 8)


_RUN_PIECES = st.sampled_from(["x", "Q9", "deadbeef" * 3, "a" * 17, "Zz0+/=_-" * 3, " ", ".", "\n", "é", "ok step 12 done. "])


@FUZZ
@given(pieces=st.lists(_RUN_PIECES, max_size=60), repeat=st.sampled_from([1, 40, 800, 6000]), min_len=st.sampled_from([4, 16]))
def test_long_runs_by_hyperscan_equal_the_walk(pieces: list[str], repeat: int, min_len: int) -> None:
    """Past 64 KiB Hyperscan finds the runs from their window ends (or gives up to the
    translate walk when there are too many): the same runs, the same answer."""
    from auditor.classify.decode import _long_runs

    big = ("ok step 12 done. " * 4_000) + "".join(pieces) * repeat
    raw = big.encode("utf-8", "surrogatepass")
    runs = _long_runs(raw, min_len)
    if runs is not None:
        assert runs == [m.span() for m in re.finditer(rb"[A-Za-z0-9+/=_\-]{%d,}" % min_len, raw)]
    assert maybe_encoded(big, min_len) == _split_maybe_encoded(big, min_len)
