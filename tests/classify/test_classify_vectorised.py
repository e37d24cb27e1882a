"""The vectorised paths give what their references give.

AES-CMAC of many messages against the SP 800-38B / RFC 4493 known answers and the
`cryptography` CMAC (OpenSSL); the numpy tokeniser of big texts against `candidates()`;
the counted CSV-block search against the line walk; the Hyperscan keyword and
personal-data-shape passes against plain substring searches; the lazy schema check of
the quiet walk against pydantic run first; format 1 fingerprint files refused clearly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.ciphers import algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditor.classify import ClassifyContext, classify, load_context
from auditor.classify import detectors as det
from auditor.classify import fingerprint as fpm
from auditor.classify.cmac import PAD, Cmac64
from auditor.errors import AuditorError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HOST = "api.gretel.cloud"

# --- AES-CMAC -------------------------------------------------------------------------------------

_M64 = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"


@pytest.mark.parametrize(
    "key,length,tag",
    [
        # RFC 4493 section 4 (AES-128)
        ("2b7e151628aed2a6abf7158809cf4f3c", 0, "bb1d6929e95937287fa37d129b756746"),
        ("2b7e151628aed2a6abf7158809cf4f3c", 16, "070a16b46b4d4144f79bdd9dd04a287c"),
        ("2b7e151628aed2a6abf7158809cf4f3c", 40, "dfa66747de9ae63030ca32611497c827"),
        ("2b7e151628aed2a6abf7158809cf4f3c", 64, "51f0bebf7e3b9d92fc49741779363cfe"),
        # NIST SP 800-38B, appendix D.3 (AES-256), the key size the fingerprints use
        ("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", 0, "028962f61b7bf89efc6b551f4667d983"),
        ("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", 16, "28a7023f452e8f82bd4bf28d8c37c35c"),
        ("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", 40, "aaf3d8f1de5640c232f5b169b9c911e6"),
        ("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", 64, "e1992190549f6ed5696a2c056c315410"),
    ],
)
def test_cmac_known_answers(key: str, length: int, tag: str) -> None:
    message = bytes.fromhex(_M64)[:length]
    assert Cmac64(bytes.fromhex(key)).one(message) == int(tag[:16], 16)
    # all four messages of a key at once, in one buffer, give the same tags
    lengths = np.array([0, 16, 40, 64])
    buf = b"".join(bytes.fromhex(_M64)[:n] for n in lengths) + bytes(PAD)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    assert Cmac64(bytes.fromhex(key)).many(buf, starts, lengths)[list(lengths).index(length)] == int(tag[:16], 16)


def _reference(key: bytes, message: bytes) -> int:
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    return int.from_bytes(mac.finalize()[:8], "big")


@FUZZ
@given(
    key=st.binary(min_size=32, max_size=32),
    messages=st.lists(st.binary(max_size=80), min_size=1, max_size=40),
    gap=st.integers(0, 7),
)
def test_cmac_many_equals_openssl(key: bytes, messages: list[bytes], gap: int) -> None:
    """Any lengths (1 to 6 blocks, empty, exact multiples), at unaligned offsets."""
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    starts = np.array([gap + sum(len(m) + gap for m in messages[:i]) for i in range(len(messages))], dtype=np.int64)
    buf = b"".join(bytes(gap) + m for m in messages) + bytes(PAD)
    assert Cmac64(key).many(buf, starts, lengths).tolist() == [_reference(key, m) for m in messages]


def test_cmac_never_reads_past_a_buffer_without_padding() -> None:
    """A short last block is read 16 bytes wide: past the end, numpy's bounds check stops it."""
    with pytest.raises(IndexError):
        Cmac64(os.urandom(32)).many(b"0123456789abcdef0123", np.array([16]), np.array([4]))


# --- the numpy tokeniser of big texts ------------------------------------------------------------

_PIECES = st.sampled_from(["Alice", "SMITH", "acc-00012345", " ", "  ", "\t", "\n", "\r", ",", ";", "|", '"', "{", "}", "[", "]", "<", ">", "=", "&", "(", ")", ":", ": ", ":\t", ":\x0b", "'", ".", "!", "?", "...", "..x..", "'q'", "\x0c", "\x1c", "\x1f", "12345", "0.5", "a:b", "x"])
_FILLER = "".join(f"2024-02-01T10:00:{i % 60:02d}Z worker step {i} loss={i / 7:.4f}\n" for i in range(120))


def _span_tokens(text: str) -> set[str]:
    sp = fpm.spans(text)
    return {sp.token(i) for i in range(len(sp.starts))} - {""}


@FUZZ
@given(head=st.lists(_PIECES, max_size=40), tail=st.lists(_PIECES, max_size=40))
def test_spans_equal_candidates(head: list[str], tail: list[str]) -> None:
    text = "".join(head) + _FILLER + "".join(tail)
    assert len(text) > fpm._NGRAM_TEXT
    assert _span_tokens(text) == fpm.candidates(text) - {""}
    assert isinstance(fpm.cells_of(text), fpm.Spans)


@FUZZ
@given(bits=st.lists(st.booleans(), max_size=64))
def test_false_runs_equal_the_loop(bits: list[bool]) -> None:
    runs: list[tuple[int, int]] = []
    for i, b in enumerate(bits):
        if not b:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
    starts, ends = fpm.false_runs(np.array(bits, dtype=bool))
    assert list(zip(starts.tolist(), ends.tolist())) == runs


def test_spans_fold_runs_of_spaces() -> None:
    text = _FILLER + "alice   smith,  bob  jones ,x" + " " * 9 + "y\n"
    assert _span_tokens(text) == fpm.candidates(text) - {""}
    assert "alice smith" in _span_tokens(text)


def test_spans_strip_long_runs_of_strip_characters() -> None:
    text = _FILLER + "." * 100 + "alice smith" + "!" * 50 + " " + "(" * 40 + "x" + ")" * 40 + "\n"
    assert _span_tokens(text) == fpm.candidates(text) - {""}


def test_spans_without_spaces_have_no_words() -> None:
    text = ",".join(f"cell{i}:value{i}" for i in range(2_000))
    assert " " not in text and _span_tokens(text) == fpm.candidates(text) - {""}


@pytest.fixture(scope="module")
def fps_ctx(tmp_path_factory: pytest.TempPathFactory) -> ClassifyContext:
    tmp = tmp_path_factory.mktemp("fps")
    rows = [f"name{i} surname{i},user{i}@example.com,{100000000 + i},ACC-{i:08d},city{i % 7}x,{i % 10}" for i in range(300)]
    (tmp / "d.csv").write_text("name,email,ssn,account,city,n\n" + "\n".join(rows) + "\n")
    (tmp / "K").write_bytes(os.urandom(32))
    fpm.build(tmp / "d.csv", tmp / "d.fp", tmp / "K")
    return load_context(fingerprints=tmp / "d.fp", key_file=tmp / "K")


@FUZZ
@given(picks=st.lists(st.integers(0, 299), max_size=8), noise=st.lists(_PIECES, max_size=30))
def test_span_hits_equal_hits_of_the_candidates(picks: list[int], noise: list[str], fps_ctx: ClassifyContext) -> None:
    fps = fps_ctx.fingerprints
    assert fps is not None
    leaked = "".join(f"User{i}@Example.com; {100000000 + i} ; acc-{i:08d}. NAME{i}  SURNAME{i}\n" for i in picks)
    text = _FILLER + leaked + "".join(noise) + "1234 12345 123456 city1x"
    assert fpm.span_hits(fps, fpm.spans(text)) == fpm.hits(fps, fpm.candidates(text))


def test_format_1_fingerprint_files_are_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "K").write_bytes(os.urandom(32))
    (tmp_path / "old.fp").write_bytes(b'BAFP1\n{"format": "boundary-auditor-fingerprints", "version": 1}\n')
    with pytest.raises(AuditorError) as err:
        load_context(fingerprints=tmp_path / "old.fp", key_file=tmp_path / "K")
    assert "format 1" in str(err.value) and "auditor fingerprint" in str(err.value)


def test_fingerprint_file_reveals_no_cell(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b\nalice smith,springfield\nbob jones,shelbyville\n")
    (tmp_path / "K").write_bytes(os.urandom(32))
    fpm.build(tmp_path / "d.csv", tmp_path / "d.fp", tmp_path / "K")
    raw = (tmp_path / "d.fp").read_bytes()
    assert raw.startswith(fpm.MAGIC) and b"aes256-cmac-64" in raw
    for cell in (b"alice smith", b"springfield", b"bob jones", b"shelbyville"):
        assert cell not in raw


# --- CSV blocks counted per line -------------------------------------------------------------------


@FUZZ
@given(lines=st.lists(st.lists(st.sampled_from(["a", "b,", ",", ";", "|", "\t", " ", 'File "x",', "at y,", "Traceback,", "é"]), max_size=8), max_size=30))
def test_counted_csv_block_equals_the_walk(lines: list[list[str]]) -> None:
    text = "\n".join("".join(parts) for parts in lines)
    if not text.isascii():
        text = text.replace("é", "e")
    for min_rows in (2, 3):
        assert det._csv_block_counted(text, min_rows) == det._csv_block_walked(text, min_rows)


def test_counted_csv_block_in_a_big_text() -> None:
    rows = "".join(f"name{i},mail{i}@x.org,{i}\n" for i in range(50))
    text = _FILLER * 30 + rows + _FILLER
    assert len(text) >= det._CSV_BY_LINES
    assert det.csv_block(text) == det._csv_block_walked(text, 3) == (len(_FILLER) * 30, 50, 3, ",")


# --- Hyperscan passes --------------------------------------------------------------------------------


def _naive_sightings(lowered: str) -> list[tuple[int, str]]:
    out = []
    for word in det._KEYWORDS:
        i = lowered.find(word)
        while i != -1:
            out.append((i + len(word) - 1, word))
            i = lowered.find(word, i + 1)
    return sorted(out)


@FUZZ
@given(parts=st.lists(st.sampled_from([*det._KEYWORDS, "x", " ", "é", "ß", "\u2028", "tok", "en", "grtgrt"]), max_size=30))
def test_keyword_pass_equals_substring_search(parts: list[str]) -> None:
    lowered = "".join(parts).lower()
    sightings: list[det.Sighting] = []
    hits = det.keyword_hits(lowered, sightings)
    expected = _naive_sightings(lowered)
    assert sorted((end, word) for end, (word, _) in sightings) == expected
    assert hits == {d: {w for _, w in expected if d in det._KEYWORDS[w]} for d in {d for _, w in expected for d in det._KEYWORDS[w]}}
    gate_words = {w for ws in hits.values() for w in ws}
    for part in set(parts):
        assert det.keyword_hits_among(part.lower(), gate_words) == det.keyword_hits(part.lower())


_SHAPES_RE = re.compile(b"A(?:" + b"|".join(re.escape(s[1:]) for s in det._UPPER_SHAPES) + b")")


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("0123456789AZab -.\t()+") + ["é"]), max_size=40))
def test_shape_pass_equals_the_folded_search(text: str) -> None:
    folded = text.encode().translate(det._SHAPE)
    expected = (any(s in folded for s in det._DIGIT_SHAPES), _SHAPES_RE.search(folded) is not None)
    openings = sorted(i for i in range(len(folded)) if folded.startswith(det._OPENINGS, i))
    digits, upper, found = det._shapes(text.encode())
    assert (digits, upper) == expected and sorted(found) == openings


# --- the quiet walk's schema check ---------------------------------------------------------------

_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=16), st.sampled_from(["x", "train", "bogus", "2024"]), st.just([]), st.just({}), st.just([{"status": "a"}]), st.just({"k": 1}))
_line = st.dictionaries(st.sampled_from(["ts", "msg", "ctx", "seq", "stage", "level"]), _value, max_size=6)


@FUZZ
@given(
    top=st.dictionaries(st.sampled_from(["uid", "status", "status_history", "last_active_hb", "error_msg", "container_image_version"]), _value, max_size=6),
    lines=st.lists(_line, max_size=4),
    as_list=st.booleans(),
)
def test_lazy_schema_check_equals_pydantic_first(top: dict[str, object], lines: list[dict[str, object]], as_list: bool, unrelated: ClassifyContext) -> None:
    """The quiet walk (no site context) vouches for a body or hands it to pydantic; with a
    fingerprint context the body is never quiet and pydantic always runs first."""
    for method, path, doc in (("PATCH", "/projects/models", top), ("POST", "/projects/models/logs", lines if as_list else {"uid": "u", "logs": lines})):
        body = json.dumps(doc).encode()
        fast = classify(body, method=method, path=path, host=HOST, content_type="application/json")
        slow = classify(body, method=method, path=path, host=HOST, content_type="application/json", context=unrelated)
        assert (fast.labels, fast.metadata_kinds, [(f.detector, f.label, f.field_path, f.excerpt, f.count) for f in fast.findings]) == (
            slow.labels,
            slow.metadata_kinds,
            [(f.detector, f.label, f.field_path, f.excerpt, f.count) for f in slow.findings],
        ), body


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory: pytest.TempPathFactory) -> ClassifyContext:
    tmp = tmp_path_factory.mktemp("unrelated")
    (tmp / "d.csv").write_text("a,b\n" + "".join(f"zqxj{i:04d}wv,vwjq{i:04d}xz\n" for i in range(20)))
    (tmp / "K").write_bytes(os.urandom(32))
    fpm.build(tmp / "d.csv", tmp / "d.fp", tmp / "K")
    return load_context(fingerprints=tmp / "d.fp", key_file=tmp / "K")



# --- text or binary, decided on bytes for ASCII ---------------------------------------------------


def _as_text_on_str(data: bytes) -> str | None:
    """as_text as it was: decode, then str.isprintable() over the first 4096 characters."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    sample = text[:4096]
    if sample.isprintable():
        return text
    bad = sum(1 for c in sample if not c.isprintable() and c not in "\n\r\t")
    return text if bad <= len(sample) // 50 else None


@FUZZ
@given(chunks=st.lists(st.binary(max_size=40), max_size=8), printable=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300), repeat=st.integers(1, 40))
def test_as_text_on_bytes_equals_the_str_test(chunks: list[bytes], printable: str, repeat: int) -> None:
    from auditor.classify.decode import as_text

    for data in (b"".join(chunks), (printable.encode() + b"".join(c[:2] for c in chunks)) * repeat, bytes(b & 0x7F for b in b"".join(chunks)) * repeat):
        assert as_text(data) == _as_text_on_str(data)
