"""Detectors: what a piece of a body is, with a likelihood and where, never the value.

Cheapest first: magic bytes, then one multi-literal keyword pass (Hyperscan, ~1 GB/s)
that gates every credential, canary and report pattern, then the regexes the keywords
woke up, then personal data (behind one Hyperscan pass for its shapes) and tabular
shape. Each returns `DetectorFinding`s whose excerpt is redacted: a secret becomes its
type and length, data becomes its shape.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import hyperscan
import numpy as np

from auditor.classify.decode import as_text, compression_of, is_tar, is_zip, utf8
from auditor.classify.scan import any_match, database, scan
from auditor.model import DetectorFinding
from auditor.redact import SECRET_PATTERNS, secret_excerpt

# --- statistics ---------------------------------------------------------------------------


def shannon(data: bytes | str) -> float:
    """Bits per symbol."""
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def _sample(data: bytes, size: int = 1 << 20) -> bytes:
    """At most `size` bytes, spread across the blob, so statistics stay cheap on big bodies."""
    if len(data) <= size:
        return data
    step = len(data) // 16
    part = size // 16
    return b"".join(data[i * step : i * step + part] for i in range(16))


def chi_square(data: bytes) -> float:
    """χ² of the byte histogram against uniform (255 degrees of freedom): ~255 for
    encrypted or random bytes, far higher for compressed streams and anything else."""
    n = len(data)
    if not n:
        return 0.0
    expected = n / 256
    counts = Counter(data)
    return sum((counts.get(i, 0) - expected) ** 2 / expected for i in range(256))


def entropy_finding(data: bytes, path: str, min_size: int = 1024) -> DetectorFinding | None:
    """A high-entropy blob of no known format: χ² tells encrypted/random from compressed."""
    if len(data) < min_size:
        return None
    sample = _sample(data)
    h = shannon(sample)
    if h < 7.2:
        return None
    chi = chi_square(sample)
    # 255 dof: mean 255, sd ~22.6; beyond ~4 sd of uniform we call it compressed
    looks = "encrypted or random" if chi < 350 else "compressed (unknown format)"
    return DetectorFinding(
        detector="entropy",
        label="high-entropy",
        likelihood="LIKELY",
        field_path=path,
        offset=0,
        excerpt=f"{len(data)} bytes, entropy {h:.2f} bits/byte, chi2 {chi:.0f}: {looks}",
    )


def not_ciphertext(value: str) -> str | None:
    """Why a value sent as `encrypted_credentials` is not the KMS ciphertext the contract
    says it is (None when it can be): KMS services return binary ciphertext, sent base64
    encoded, so plaintext, text under base64 or a known file format under it is a leak
    dressed as ciphertext. Short values say too little to judge either way."""
    core = "".join(value.split())
    if len(core) < 24:
        return None
    try:
        raw = base64.b64decode(core.replace("-", "+").replace("_", "/") + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return "not base64: KMS ciphertext is sent base64-encoded"
    if as_text(raw) is not None:
        return "base64 of readable text, not of ciphertext"
    found = magic(raw)
    kind = found.what if found else compression_of(raw) or ("zip archive" if is_zip(raw) else "tar archive" if is_tar(raw) else None)
    return f"base64 of a {kind}, not of ciphertext" if kind else None


# --- magic bytes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Magic:
    label: str  # model-artifact | training-data | report-artifact
    what: str


def magic(data: bytes) -> Magic | None:
    """File formats that must never reach the control plane, by their first bytes."""
    head = data[:16]
    if head[:1] in _LEADS:
        found = _led_magic(data, head)
        if found:
            return found
    if data[4:8] == b"TFL3":
        return Magic("model-artifact", "TensorFlow Lite model")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return Magic("model-artifact", f"Python pickle (protocol {head[1]})")
    if len(data) >= 10:
        (n,) = struct.unpack("<Q", data[:8])
        if 2 <= n <= min(len(data) - 8, 100 << 20) and data[8:9] == b"{":
            header = data[8 : 8 + min(n, 4096)]
            if b"dtype" in header and (b"data_offsets" in header or b"__metadata__" in header):
                return Magic("model-artifact", "safetensors weights")
    if head[:1] == b"\x08" and len(data) > 32:
        window = data[:512]
        if b"onnx" in window.lower() or (b"pytorch" in window and b"\x3a" in window):
            return Magic("model-artifact", "ONNX model")
    return None


_LEADS = frozenset(bytes([b]) for b in b"PAO\xffGgl\x93\x89")  # the first bytes `_led_magic` knows


def _led_magic(data: bytes, head: bytes) -> Magic | None:
    """The formats known by their opening bytes, checked before the rest in `magic`."""
    if head[:4] == b"PAR1":
        return Magic("training-data", "Parquet file")
    if head[:6] == b"ARROW1":
        return Magic("training-data", "Arrow IPC file")
    if head[:4] == b"Obj\x01":
        return Magic("training-data", "Avro container")
    if head[:3] == b"ORC":
        return Magic("training-data", "ORC file")
    if head[:4] == b"\xff\xff\xff\xff" and len(data) > 16:
        (meta_len,) = struct.unpack("<i", data[4:8])
        if 0 < meta_len < len(data) and data[8:12] != b"\xff\xff\xff\xff":
            return Magic("training-data", "Arrow IPC stream")
    if head[:4] == b"GGUF":
        return Magic("model-artifact", "GGUF model")
    if head[:4] in (b"ggml", b"ggjt", b"lmgg", b"ggmf"):
        return Magic("model-artifact", "GGML model")
    if head[:6] == b"\x93NUMPY":
        return Magic("model-artifact", "NumPy array")
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return Magic("model-artifact", "HDF5 (Keras) weights")
    return None


_MODEL_MEMBER = re.compile(r"(^|/)(data\.pkl|version|constants\.pkl|.*\.(pt|pth|bin|ckpt|safetensors|onnx|h5|keras|gguf|pkl|joblib|npy|npz|tflite|mar))$", re.I)


def model_archive_members(names: Iterable[str]) -> str | None:
    """A zip or tar whose member names say "model" (PyTorch archives hold `*/data.pkl`)."""
    for n in names:
        if _MODEL_MEMBER.search(n):
            return n
    return None


# --- the hybrid artifact names ---------------------------------------------------------------------

_ARTIFACT_NAMES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"(^|/)model\.tar\.gz$", re.I), "model-artifact", "trained model archive"),
    (re.compile(r"(^|/)logs\.json\.gz$", re.I), "model-artifact", "model log archive"),
    (re.compile(r"(^|/)(run_)?report(_json)?\.(json|html)\.gz$", re.I), "report-artifact", "quality/privacy report"),
    (re.compile(r"(^|/)classification_report[^/]*\.gz$", re.I), "report-artifact", "classification report"),
    (re.compile(r"(^|/)data_preview\.gz$", re.I), "training-data", "sample data generated in training"),
    (re.compile(r"(^|/)data\.gz$", re.I), "training-data", "generated data"),
    (re.compile(r"(^|/)output_files\.tar\.gz$", re.I), "training-data", "run output files"),
    (re.compile(r"(^|/)gretel_[0-9a-f]{8,}_[^/]+$", re.I), "training-data", "uploaded data source"),
]


def artifact_name(name: str | None) -> tuple[str, str] | None:
    """The label and meaning of a hybrid artifact file name (`model.tar.gz`, ...)."""
    if not name:
        return None
    bare = name.split("?", 1)[0]
    # every pattern ends in ".gz" or names a "gretel_" upload ("$" also matches before a final newline)
    low = bare.lower()
    if not low.endswith((".gz", ".gz\n")) and "gretel_" not in low:
        return None
    for rx, label, what in _ARTIFACT_NAMES:
        if rx.search(bare):
            return label, what
    return None


# --- keyword pass and the patterns behind it -------------------------------------------------------

CANARY_PREFIX = "ba-canary-"
CANARY_RE = re.compile(r"ba-canary-[0-9a-f]{24}")  # the token as made, lower case
# the token as it may leave: case changed, a separator dropped or swapped for another
# (a Unicode dash, space, dot, underscore); `canary_token` gives back the token as made
_SEEN_PREFIX = r"ba[-\u2010-\u2015\u2212\ufe63\uff0d_. ]?canary[-\u2010-\u2015\u2212\ufe63\uff0d_. ]?"
SEEN_CANARY_RE = re.compile(_SEEN_PREFIX + r"([0-9a-f]{24})")
# the same prefix with fewer digits than a token has: the first piece of a split token
PART_CANARY_RE = re.compile(_SEEN_PREFIX + r"([0-9a-f]{4,23})(?![0-9a-f])")
_CANARY_WORD = "canary"  # the keyword that gates them: every variant above holds it


def canary_token(m: re.Match[str]) -> str:
    return CANARY_PREFIX + m.group(1)

_REPORT_KEYS = (
    "synthetic_data_quality_score",
    "synthetic data quality score",
    "privacy_protection_level",
    "privacy protection level",
    "field_correlation_stability",
    "deep_structure_stability",
    "field_distribution_stability",
    "text_semantic_similarity",
    "membership_inference_attack",
    "attribute_inference_attack",
    "gretel synthetic report",
    "data privacy score",
)

_KEYWORDS: dict[str, tuple[str, ...]] = {
    "grt": ("gretel-api-key",),
    "akia": ("aws-access-key",),
    "asia": ("aws-access-key",),
    "agpa": ("aws-access-key",),
    "aida": ("aws-access-key",),
    "aroa": ("aws-access-key",),
    "anpa": ("aws-access-key",),
    "aipa": ("aws-access-key",),
    "secret_access_key": ("aws-secret-key",),
    "secretaccesskey": ("aws-secret-key",),
    "aws_secret": ("aws-secret-key",),
    "service_account": ("gcp-service-account",),
    "private_key": ("gcp-service-account",),
    "-----begin": ("private-key",),
    "accountkey=": ("azure-account-key",),
    "defaultendpointsprotocol": ("azure-account-key",),
    "eyj": ("jwt",),
    "ghp_": ("github-token",),
    "gho_": ("github-token",),
    "ghu_": ("github-token",),
    "ghs_": ("github-token",),
    "github_pat_": ("github-token",),
    "xoxb-": ("slack-token",),
    "xoxp-": ("slack-token",),
    "xoxa-": ("slack-token",),
    "://": ("url-password",),
    "password": ("assignment",),
    "passwd": ("assignment",),
    "pwd": ("assignment",),
    "secret": ("assignment",),
    "api_key": ("assignment",),
    "apikey": ("assignment",),
    "api-key": ("assignment",),
    "token": ("assignment",),
    "access_key": ("assignment",),
    "client_secret": ("assignment",),
    "credential": ("assignment",),
    _CANARY_WORD: ("canary",),
}
for _k in _REPORT_KEYS:
    _KEYWORDS[_k] = ("report",)


_KEYWORD_LIST: list[tuple[str, tuple[str, ...]]] = list(_KEYWORDS.items())
# not keywords: what the quiet proof of a JSON text looks for (an escape, a string opening
# with a bracket), found in the same pass and reported once each; lower() neither makes
# nor unmakes them
MARKS = ("\\", '"[', '"{')
_N_KEYWORDS = len(_KEYWORD_LIST)
_KEYWORD_DB = database(
    [w.encode() for w, _ in _KEYWORD_LIST] + [m.encode() for m in MARKS],
    literal=True,
    flags=[0] * len(_KEYWORD_LIST) + [hyperscan.HS_FLAG_SINGLEMATCH] * len(MARKS),
)


Sighting = tuple[int, tuple[str, tuple[str, ...]]]  # (offset of the keyword's last character, (keyword, detectors))


def keyword_hits(lowered: str | None, sightings: list[Sighting] | None = None, marks: set[str] | None = None, data: bytes | None = None) -> dict[str, set[str]]:
    """One pass for every keyword: detector name -> keywords seen. Empty for most metadata.
    `sightings`, when given, receives every match with its offset (for `_spans`); `marks`
    the MARKS in the text; `data`, `utf8(lowered)` when the caller made it (then `lowered`
    may be None)."""
    if data is None:
        assert lowered is not None
        data = utf8(lowered)
    found = scan(_KEYWORD_DB, data)
    if found:
        words = [f for f in found if f[0] < _N_KEYWORDS]
        if len(words) != len(found):
            if marks is not None:
                marks.update(MARKS[p - _N_KEYWORDS] for p, _ in found if p >= _N_KEYWORDS)
            found = words
    hits: dict[str, set[str]] = {}
    for pattern, _ in found:
        word, detectors = _KEYWORD_LIST[pattern]
        for d in detectors:
            hits.setdefault(d, set()).add(word)
    if sightings is not None and found:
        ends = np.fromiter((end for _, end in found), dtype=np.int64, count=len(found)) - 1
        if not data.isascii():
            # byte offsets to character offsets: less the UTF-8 continuation bytes before each
            u = np.frombuffer(data, dtype=np.uint8)
            ends -= np.searchsorted(np.flatnonzero((u & 0xC0) == 0x80), ends)
        sightings.extend((int(e), _KEYWORD_LIST[p]) for (p, _), e in zip(found, ends))
    return hits


def keyword_hits_among(lowered: str, words: set[str]) -> dict[str, set[str]]:
    """`keyword_hits(lowered)` when only `words` can occur in it (it lies inside a text
    whose keywords they are): a substring search per word instead of a pass."""
    hits: dict[str, set[str]] = {}
    for word in words:
        if word in lowered:
            for d in _KEYWORDS[word]:
                hits.setdefault(d, set()).add(word)
    return hits


_AWS_SECRET = re.compile(r"(?i)(?:aws_secret_access_key|secret_access_key|secretaccesskey|aws_secret)[\"'\s]*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])")
_SA_TYPE = re.compile(r"\"type\"\s*:\s*\"service_account\"")
_SA_KEY = re.compile(r"\"private_key\"\s*:\s*\"(-----BEGIN[^\"]{20,})\"")
_ASSIGN = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|client_secret|api[_-]?key|access[_-]?key|auth[_-]?token|token|credentials?)\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;&}{]{8,})"
)
_PLACEHOLDER = re.compile(r"^(\*+|x+|<[^>]*>|\$\{[^}]*\}|\{\{[^}]*\}\}|redacted|changeme|null|none|true|false|\[redacted.*)$", re.I)


def placeholder(value: str) -> bool:
    """A stand-in for a secret (`***`, `${DB_PASSWORD}`, `<redacted>`), not one."""
    return _PLACEHOLDER.match(value.strip()) is not None


def _entropy_ok(value: str, min_bits: float) -> bool:
    return shannon(value) >= min_bits


WINDOWED = 16 * 1024  # past this size, patterns run only around their keywords
_SPAN: dict[str, tuple[int, int]] = {"private-key": (64, 16384), "gcp-service-account": (8192, 8192)}


def _spans(text: str, sightings: list[Sighting] | None = None) -> dict[str, list[tuple[int, int]]]:
    """Merged windows around each keyword, per detector (only for big texts), from the
    gate's own pass when it kept its sightings, else from a second pass."""
    raw: dict[str, list[tuple[int, int]]] = {}
    if sightings is None:
        sightings = []
        keyword_hits(text.lower(), sightings)
    for end, (word, detectors) in sightings:
        for d in detectors:
            before, after = _SPAN.get(d, (128, 512))
            raw.setdefault(d, []).append((max(0, end - len(word) - before), end + after))
    merged: dict[str, list[tuple[int, int]]] = {}
    for d, spans in raw.items():
        out: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        merged[d] = out
    return merged


def _finditer(rx: re.Pattern[str], text: str, kind: str, spans: dict[str, list[tuple[int, int]]] | None) -> Iterable[re.Match[str]]:
    if spans is None:
        yield from rx.finditer(text)
        return
    last = -1
    for a, b in spans.get(kind, ()):
        for m in rx.finditer(text, a, b):
            if m.start() > last:
                last = m.start()
                yield m


def credential_findings(text: str, hits: dict[str, set[str]], path: str, sightings: list[Sighting] | None = None) -> list[DetectorFinding]:
    """Secrets the keyword pass pointed at, each behind its own pattern and entropy gate.
    `sightings`: that pass's matches over `text.lower()`, so big texts are not scanned twice."""
    out: list[DetectorFinding] = []
    spans = _spans(text, sightings) if len(text) > WINDOWED else None

    def add(kind: str, value: str, offset: int, likelihood: str = "VERY_LIKELY") -> None:
        out.append(
            DetectorFinding(
                detector=f"credential:{kind}",
                label="credential",
                likelihood=likelihood,  # type: ignore[arg-type]
                field_path=path,
                offset=offset,
                excerpt=secret_excerpt(kind, value),
            )
        )

    for kind, rx in SECRET_PATTERNS:
        if kind not in hits:
            continue
        for m in _finditer(rx, text, kind, spans):
            value = m.group(0)
            if kind == "gretel-api-key" and not _entropy_ok(value, 3.0):
                continue
            if kind == "azure-account-key" and not _entropy_ok(value, 4.0):
                continue
            if kind == "url-password":
                secret = value.split(":", 1)[1]
                if _PLACEHOLDER.match(secret):
                    continue
            add(kind, value, m.start())
    if "aws-secret-key" in hits:
        for m in _finditer(_AWS_SECRET, text, "aws-secret-key", spans):
            if _entropy_ok(m.group(1), 4.0):
                add("aws-secret-key", m.group(1), m.start(1))
    if "gcp-service-account" in hits and _SA_TYPE.search(text):
        for m in _finditer(_SA_KEY, text, "gcp-service-account", spans):
            add("gcp-service-account", m.group(1), m.start(1))
    if "assignment" in hits:
        taken = {f.offset for f in out}
        for m in _finditer(_ASSIGN, text, "assignment", spans):
            value = m.group(2)
            if m.start(2) in taken or _PLACEHOLDER.match(value) or value.startswith("[REDACTED"):
                continue
            if len(value) >= 12 and _entropy_ok(value, 3.0) or len(value) >= 8 and _entropy_ok(value, 3.3):
                add(f"{m.group(1).lower()}-value", value, m.start(2), "LIKELY")
    return out


# an AWS secret access key standing alone: 40 characters of base64's alphabet, no more
_BARE_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])(?=[^/+]{0,39}[/+])(?=[^A-Z]{0,39}[A-Z])(?=[^a-z]{0,39}[a-z])(?=[^0-9]{0,39}[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def bare_aws_secret(text: str, at: int, path: str) -> DetectorFinding | None:
    """An AWS secret access key with no keyword beside it (the keyword pass finds the rest):
    asked only of the encoded runs that start at `at` and decode to 30 bytes of noise, so
    the cost is per run. A slash or plus, both cases, a digit and the entropy of random
    bytes: a name, a path or a hash has not all of them."""
    m = _BARE_AWS_SECRET.match(text, at)
    if m is None or not _entropy_ok(m.group(0), 4.0):
        return None
    return DetectorFinding(detector="credential:aws-secret-key", label="credential", likelihood="LIKELY", field_path=path, offset=at, excerpt=secret_excerpt("aws-secret-key", m.group(0)))


def report_finding(hits: dict[str, set[str]], path: str) -> DetectorFinding | None:
    """Three or more quality/privacy report keys in one place: a report, not a metric in a log."""
    keys = hits.get("report", set())
    distinct = {k.replace(" ", "_") for k in keys}
    if len(distinct) < 3:
        return None
    return DetectorFinding(
        detector="report-keys",
        label="report-artifact",
        likelihood="LIKELY",
        field_path=path,
        excerpt=f"{len(distinct)} quality/privacy report keys",
        count=len(distinct),
    )


# --- personal data -------------------------------------------------------------------------------

_DIGIT_RUN = re.compile(r"\d{3}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
_PHONE = re.compile(r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])|(?<![\w+])\+\d{10,14}(?!\w)")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_NINO = re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


@dataclass
class PiiHit:
    kind: str  # email | phone | card | ssn | nino | iban
    offset: int
    value: str


_NO_DIGITS = str.maketrans("", "", "0123456789")
_DIGIT_CAND = re.compile(r"(?<!\d)(?!\d{4}-\d\d-\d\d)[+(]?\d[\d ()+.-]{7,24}\d")
_UPPER_CAND = re.compile(r"\b[A-Z]{2} ?\d{2}[A-Z0-9 ]{4,36}")


_SHAPE_MAP = {**{c: "0" for c in "0123456789"}, **{c: "A" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}, " ": "-", ".": "-", "\t": "-"}
_SHAPE = bytes(ord(_SHAPE_MAP.get(chr(b), chr(b))) if b < 128 else b for b in range(256))
# what every digit-led and upper-case-led pattern below needs, with separators folded to "-"
_DIGIT_SHAPES = (b"000-00-0000", b"000-000-0000", b"000)000-0000", b"000)-000-0000", b"0000-0000-0000", b"0000-000000-00000", b"00000000000", b"+0")
_UPPER_SHAPES = (b"AA00", b"AA-00", b"A000000", b"A-00-")
_OPENINGS = _UPPER_SHAPES[:2]  # how every _UPPER_CAND match opens, shaped


def _shape_regex(shape: bytes) -> bytes:
    """A shape (in _SHAPE's folded alphabet) as a regex over the unfolded bytes: each
    folded character becomes the class of every ASCII byte _SHAPE folds into it."""
    out = b""
    for c in shape:
        members = [b for b in range(128) if _SHAPE[b] == c]
        out += b"[" + b"".join(b"\\x%02x" % m for m in members) + b"]"
    return out


_SHAPES = _DIGIT_SHAPES + _UPPER_SHAPES
# every opening is reported (they are where upper-case ids can start); the rest once
_SHAPE_DB = database(
    [_shape_regex(s) for s in _SHAPES], literal=False, flags=[0 if s in _OPENINGS else hyperscan.HS_FLAG_SINGLEMATCH for s in _SHAPES]
)


def _shapes(data: bytes) -> tuple[bool, bool, list[int]]:
    """Whether digit-led and upper-case-led personal data can be present at all (whether
    the text, folded by _SHAPE, holds one of the shapes), and the byte offset of every
    opening of an upper-case id: one Hyperscan pass over the unfolded UTF-8 bytes (the
    shapes are ASCII, so the bytes hold one exactly when the text does), far cheaper than
    the regexes."""
    found = scan(_SHAPE_DB, data)
    if not found:
        return False, False, []
    first_upper = len(_DIGIT_SHAPES)
    openings = [end - len(_SHAPES[p]) for p, end in found if _SHAPES[p] in _OPENINGS]
    return any(p < first_upper for p, _ in found), any(p >= first_upper for p, _ in found), openings


def _literal_regex(word: str) -> bytes:
    """A literal as a Hyperscan regex: letters and digits as they are, every other byte escaped."""
    return b"".join(bytes([c]) if chr(c).isalnum() else b"\\x%02x" % c for c in word.encode())


# what a string detector starts from besides the PII shapes: a keyword (either case: ASCII
# only, where lower() is exactly ASCII case folding), a MARK, a percent escape, an "@" (emails)
_SIGNS_DB = database(
    [_literal_regex(w) for w, _ in _KEYWORD_LIST] + [_literal_regex(m) for m in MARKS] + [rb"%[0-9A-Fa-f]{2}", rb"@"],
    literal=False,
    flags=[hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH] * _N_KEYWORDS + [hyperscan.HS_FLAG_SINGLEMATCH] * (len(MARKS) + 2),
)


def silent(text: str, data: bytes | None = None) -> bool:
    """True only when an ASCII text holds no keyword, no MARK, no percent escape and no
    personal data: what `keyword_hits(text.lower())`, `has_percent_escapes` and
    `pii_hits` would each find nothing in, proven by two Hyperscan passes that stop at
    the first sign of anything (the PII shapes apart: one database of both runs slower).
    False says only "look the ordinary way". `data`: the text's bytes, when made already."""
    if not text.isascii():
        return False
    data = text.encode("ascii") if data is None else data
    return not any_match(_SIGNS_DB, data) and not any_match(_SHAPE_DB, data)


def pii_hits(text: str, data: bytes | None = None) -> list[PiiHit]:
    """Personal data shapes with their checks (Luhn for cards, SSA rules for SSNs, mod-97 for IBANs).

    Three cheap passes find candidates (an `@`, a run of digits and separators, an
    upper-case id); the exact patterns then run on those few short strings only."""
    out: list[PiiHit] = []
    at = text.find("@")
    last = -1
    while at != -1:
        lo = max(0, at - 64, last)
        m = _EMAIL.search(text, lo, at + 256)
        if m and m.start() <= at < m.end():
            out.append(PiiHit("email", m.start(), m.group(0)))
            last = m.end()
        at = text.find("@", max(at + 1, last))
    data = utf8(text) if data is None else data
    digits, upper, openings = _shapes(data)
    for c in _DIGIT_CAND.finditer(text) if digits else ():
        cand = c.group(0)
        if len(cand) - len(cand.translate(_NO_DIGITS)) < 9:
            continue  # SSNs have 9 digits, phones 10, cards 13: dates and counts have fewer
        a, b = max(0, c.start() - 1), min(len(text), c.end() + 1)
        found: set[int] = set()
        for m in _SSN.finditer(text, a, b):
            if _ssn_ok(*m.groups()):
                out.append(PiiHit("ssn", m.start(), m.group(0)))
                found.add(m.start())
        for m in _CARD.finditer(text, a, b):
            digits = re.sub(r"\D", "", m.group(0))
            if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn(digits):
                out.append(PiiHit("card", m.start(), m.group(0)))
                found.add(m.start())
        for m in _PHONE.finditer(text, a, b):
            if m.start() not in found:
                out.append(PiiHit("phone", m.start(), m.group(0)))
    for c in _upper_candidates(text, openings if len(data) == len(text) else None) if upper else ():
        a, b = c.start(), c.end()
        for m in _NINO.finditer(text, a, min(len(text), b + 1)):
            out.append(PiiHit("nino", m.start(), m.group(0)))
        for m in _IBAN.finditer(text, a, min(len(text), b + 1)):
            if _iban_ok(m.group(0)):
                out.append(PiiHit("iban", m.start(), m.group(0)))
    return out


def _upper_candidates(text: str, openings: list[int] | None) -> Iterable[re.Match[str]]:
    """_UPPER_CAND.finditer(text), visiting only where a match can start: every match opens
    with two capitals, an optional space and two digits, shaped "AA00" or "AA-00"; the
    shape pass found each such opening. In ASCII text the bytes share the text's offsets,
    so trying the pattern at those places in order, past the previous match, yields
    exactly the matches finditer yields. None (not ASCII): finditer itself."""
    if openings is None:
        yield from _UPPER_CAND.finditer(text)
        return
    starts = set(openings)
    last = 0
    for p in sorted(starts):
        if p < last:
            continue
        m = _UPPER_CAND.match(text, p)
        if m:
            last = m.end()
            yield m


# --- tabular shape -------------------------------------------------------------------------------

_DELIMS = (",", "\t", ";", "|")


_CSV_BY_LINES = 64 * 1024  # from this size (ASCII), lines are counted by numpy


def csv_block(text: str, min_rows: int = 3, data: bytes | None = None) -> tuple[int, int, int, str] | None:
    """The first run of >= min_rows consecutive lines with the same number (>= 2) of one
    delimiter: (offset, rows, columns, delimiter). Traceback frames do not count. `data`:
    the text's UTF-8 bytes, when the caller made them."""
    if text.count("\n") < min_rows - 1:
        return None
    if len(text) >= _CSV_BY_LINES and text.isascii():
        return _csv_block_counted(text, min_rows, data)
    return _csv_block_walked(text, min_rows)


def _csv_cols(line: str, delim: str) -> int:
    stripped = line.strip()
    return stripped.count(delim) if stripped and not stripped.startswith(("File \"", "at ", "Traceback")) else 0


def _csv_block_counted(text: str, min_rows: int, data: bytes | None = None) -> tuple[int, int, int, str] | None:
    """`_csv_block_walked` for a big ASCII text: numpy counts each delimiter per line, and
    only lines holding two or more (the only ones that can be in a block) are looked at."""
    u = np.frombuffer(text.encode("ascii") if data is None else data, dtype=np.uint8)
    ends = np.append(np.flatnonzero(u == 0x0A), len(u))  # line k is text[starts[k]:ends[k]]
    starts = np.concatenate(([0], ends[:-1] + 1))
    for delim in _DELIMS:
        if delim not in text:
            continue
        counts = np.bincount(np.searchsorted(ends, np.flatnonzero(u == ord(delim))), minlength=len(ends))
        run_start, run_len, run_cols, prev = 0, 0, -1, -2
        for k in np.flatnonzero(counts >= 2).tolist():
            if k != prev + 1:
                run_len, run_cols = 0, -1  # the lines between had fewer than two
            prev = k
            a, b = int(starts[k]), int(ends[k])
            cols = _csv_cols(text[a:b], delim)
            if cols >= 2 and cols == run_cols:
                run_len += 1
            elif cols >= 2:
                run_start, run_len, run_cols = a, 1, cols
            else:
                run_len, run_cols = 0, -1
            if run_len >= min_rows:
                rows = run_len
                if delim == "\t":  # strip() can take tabs off the ends: count the stripped lines
                    for extra in text[b + 1 :].split("\n"):
                        if extra.strip().count(delim) != run_cols:
                            break
                        rows += 1
                else:
                    differ = np.flatnonzero(counts[k + 1 :] != run_cols)
                    rows += int(differ[0]) if len(differ) else len(counts) - k - 1
                return run_start, rows, run_cols + 1, delim
    return None


def _csv_block_walked(text: str, min_rows: int) -> tuple[int, int, int, str] | None:
    for delim in _DELIMS:
        if text.count(delim) < 2 * min_rows:
            continue  # a block is min_rows lines of two or more delimiters each
        run_start, run_len, run_cols, pos = 0, 0, -1, 0
        for line in text.split("\n"):
            cols = _csv_cols(line, delim) if line.count(delim) >= 2 else 0  # stripping only lowers the count
            if cols >= 2 and cols == run_cols:
                run_len += 1
            elif cols >= 2:
                run_start, run_len, run_cols = pos, 1, cols
            else:
                run_len, run_cols = 0, -1
            if run_len >= min_rows:
                rows = run_len
                for extra in text[pos + len(line) + 1 :].split("\n"):  # extend to the end of the block
                    if extra.strip().count(delim) != run_cols:
                        break
                    rows += 1
                return run_start, rows, run_cols + 1, delim
            pos += len(line) + 1
    return None


def same_shaped_records(items: list[object], min_rows: int = 3) -> tuple[int, int] | None:
    """A JSON array of >= min_rows objects with one key set of >= 2 mostly scalar fields: (rows, columns)."""
    if len(items) < min_rows:
        return None
    first = items[0]
    if not isinstance(first, dict) or len(first) < 2:
        return None
    keys = set(first)
    scalar = 0
    for it in items[: min(len(items), 50)]:
        if not isinstance(it, dict) or set(it) != keys:
            return None
        scalar += sum(1 for v in it.values() if isinstance(v, (str, int, float, bool)) or v is None)
    sampled = min(len(items), 50)
    if scalar < sampled * len(keys) * 0.8:
        return None
    return len(items), len(keys)


MIN_NUMBERS = 256  # numbers in one array that no metadata field holds (hyperparameter lists are short)


def numeric_array(items: list[object], min_len: int = MIN_NUMBERS) -> tuple[str, str, bool] | None:
    """A long array of numbers only: (label, what, bytes?). Fractions are weights or a tensor;
    integers that all fit a byte are bytes (the caller opens them); other integers are a
    column of data."""
    if len(items) < min_len or items[0].__class__ not in (int, float):
        return None
    fractions = False
    for v in items:
        c = v.__class__
        if c is float:
            fractions = True
        elif c is not int:
            return None
    n = len(items)
    if fractions:
        return "model-artifact", f"{n} numbers with fractions in one array: weights or a tensor, values redacted", False
    if all(0 <= v <= 255 for v in items):  # type: ignore[operator]
        return "training-data", f"{n} byte values in one array: raw bytes, judged as a blob", True
    return "training-data", f"{n} integers in one array: a column of data, values redacted", False


def row_shaped_arrays(items: list[object], min_rows: int = 3) -> tuple[int, int] | None:
    """A JSON array of >= min_rows arrays of one length >= 2 with scalar cells: (rows, columns)."""
    if len(items) < min_rows or not isinstance(items[0], list) or len(items[0]) < 2:
        return None
    width = len(items[0])
    for it in items[: min(len(items), 50)]:
        if not isinstance(it, list) or len(it) != width:
            return None
        if not all(isinstance(v, (str, int, float, bool)) or v is None for v in it):
            return None
    return len(items), width
