"""classify(): one body in, one PayloadInfo out, within the limits, never an exception.

Order of work: the route (forbidden, unrecognised), what the request carries outside
its body (query keys and values, path segments, header values: `carried_checks`),
the content codings, then
the body by what it is (archive, compressed, magic, multipart, form, JSON, NDJSON,
YAML, text), validated against its route model when it has one, and last the pieces
of known canaries in the target and the decoded body. Whole-part gates (one
keyword pass, which also spots escapes and strings opening with a bracket, and one
encoded-run search) decide which per-field detectors run. Plain metadata (no keyword,
escape, encoded run or personal data anywhere in the raw text) on a route whose model
has a msgspec mirror (`routes.typed`) is parsed and validated in one C pass into
Structs, and only the metadata kinds are read off it: no dict per object and no walk,
so a 5,000-entry status history costs what its decoding costs. That the raw text is
plain is proven without making a gate: two Hyperscan passes that stop at the first
sign of anything (`detectors.silent`) and the encoded-run search. Query and header
strings the keyword pass and the run search find nothing in only count nodes. Other plain metadata
costs one parse, a few C-level scans and a structure-only walk (one loop per shape of
dict, not per dict) that also checks each value's type against the route schema, so
pydantic runs only for a body the walk cannot vouch for. Measured on a shared 2-core
machine (2026-11-26, load ~1.5-1.8, wall clock, best of 5): the benchmarks/classify.py mix
of ~1 KB bodies at ~21-22k/s (the code before the one-pass proofs: ~19.5-20.4k/s in the
same runs; json.loads of the same: ~132k/s), the 256 KB status update of
benchmarks/proxy_overhead.py in ~1.8 ms (was ~1.9 ms; orjson.loads alone ~0.7 ms).
On 2026-11-27 the same machine ran ~30% slower (97a11c5 itself: 14.4k/s): with the
unmarked encodings, number arrays, invisible characters and canary pieces, 14.0-14.8k/s.
"""

from __future__ import annotations

import functools
import hashlib
import re
import typing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus

import msgspec
import orjson
import yaml

from auditor.classify import detectors as det
from auditor.classify import routes as rt
from auditor.classify.canary import PART, CanarySet, mask_token, parts_in
from auditor.classify.decode import (
    Budget,
    LimitExceeded,
    Limits,
    Undecodable,
    as_text,
    compression_of,
    decode_content,
    decompress,
    encoded_runs,
    form,
    has_percent_escapes,
    maybe_encoded,
    open_unmarked,
    is_tar,
    is_zip,
    media_type,
    multipart,
    tar_entries,
    utf8,
    zip_entries,
)
from auditor.classify.fingerprint import Candidates, FingerprintSet, cells_of
from auditor.classify.fingerprint import match as fp_match
from auditor.model import DetectorFinding, PayloadInfo
from auditor.redact import is_sensitive_param, mask, redact_text

VIOLATION_LABELS = frozenset(
    {
        "training-data",
        "fingerprint-match",
        "canary",
        "model-artifact",
        "report-artifact",
        "credential",
        "pii",
        "extra-field",
        "runner-mode",
        "inline-data-source",
        "plaintext-credentials",
        "forbidden-route",
        "high-entropy",
    }
)


@dataclass
class ClassifyContext:
    """What a site knows that the classifier cannot guess: its data's fingerprints and canaries."""

    fingerprints: FingerprintSet | None = None
    canaries: CanarySet | None = None


_JSON_START = re.compile(rb"^\s*[\[{]")
_SHORT_FIELD = 256  # a "name" longer than this is treated as free text
_MAX_FINDINGS = 200


@dataclass(slots=True)
class _Gate:
    """What one pass over a text found; every string inside that text is judged under it."""

    hits: dict[str, set[str]]
    runs: bool
    sightings: list[det.Sighting] | None = None  # kept for big texts: their keyword offsets
    verbatim: bool = True  # the text holds its strings' characters as they are (no escapes)
    words: set[str] | None = None  # the keywords seen, once asked for
    lowered: str | None = None  # the text in lower case, as the pass read it (None for ASCII: see low_data)
    marks: set[str] | None = None  # det.MARKS in the text (None: not looked for)
    data: bytes | None = None  # the text's UTF-8 bytes, made once for every detector that reads bytes
    low_data: bytes | None = None  # the same of `lowered`

    def hits_in(self, inner: str) -> dict[str, set[str]]:
        """`keyword_hits(inner.lower())` for a string inside the gated text: when the text
        holds it verbatim, only the keywords the gate saw can be in it, so only those are
        looked for (keywords hold no quote, backslash or control character, so JSON's
        escapes of those do not hide one)."""
        if not self.verbatim:
            return det.keyword_hits(inner.lower())
        return det.keyword_hits_among(inner.lower(), self.seen())

    def may_hit(self, inner: str) -> bool:
        """False when `hits_in(inner)` is surely empty, told without building it: the
        common case of a string without any of the few keywords the gate saw."""
        if not self.verbatim:
            return True
        low = inner.lower()
        for w in self.seen():
            if w in low:
                return True
        return False

    def seen(self) -> set[str]:
        if self.words is None:
            self.words = {w for words in self.hits.values() for w in words}
        return self.words


@dataclass(slots=True)
class _Run:
    limits: Limits
    budget: Budget
    ctx: ClassifyContext
    findings: list[DetectorFinding] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    tokens: list[tuple[str, Candidates]] = field(default_factory=list)  # (path, candidate cells)
    pii: list[tuple[str, det.PiiHit]] = field(default_factory=list)
    schema_ok: bool = True
    model_run: bool = False  # PATCH /projects/models?type=run: uid and status are the run's
    quiet: bool = False  # strings proven clean by the raw-text checks (see _quiet)
    quiet_depth: int = 0  # the encoding depth of the document the quiet walk is in
    uncapped: bool = False  # the quiet walk cannot reach the node cap (see json_doc)
    unsure: bool = False  # the quiet walk met a value it cannot prove fits the route schema

    def add(self, f: DetectorFinding) -> None:
        # a key, a file name or a path segment can itself be a secret
        if f.field_path:
            f.field_path = redact_text(f.field_path)
        if f.excerpt and not f.excerpt.startswith("[REDACTED"):
            f.excerpt = redact_text(f.excerpt)
        for old in self.findings:
            if old.detector == f.detector and old.field_path == f.field_path and old.label == f.label:
                old.count += f.count
                return
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(f)

    def finding(self, detector: str, label: str, path: str | None, excerpt: str, likelihood: str = "VERY_LIKELY", offset: int | None = None, count: int = 1) -> None:
        self.add(DetectorFinding(detector=detector, label=label, likelihood=likelihood, field_path=path, offset=offset, excerpt=excerpt, count=count))  # type: ignore[arg-type]

    # --- per-text detectors -------------------------------------------------------------

    def gate(self, text: str, data: bytes | None = None) -> _Gate:
        """`data`: the text's UTF-8 bytes, when the caller decoded the text from them."""
        sightings: list[det.Sighting] | None = [] if len(text) > det.WINDOWED else None
        marks: set[str] = set()
        data = utf8(text) if data is None else data
        lowered: str | None = None
        if len(data) == len(text):
            low_data = data.lower()  # ASCII: the bytes' lower() is str.lower(), without the str
        else:
            lowered = text.lower()
            low_data = utf8(lowered)
        hits = det.keyword_hits(lowered, sightings, marks, low_data)
        runs = maybe_encoded(text, self.limits.min_embedded, data)
        return _Gate(hits=hits, runs=runs, sightings=sightings, lowered=lowered, marks=marks, data=data, low_data=low_data)

    def keyworded(self, text: str, path: str, gate: _Gate, *, whole: bool) -> None:
        """Credentials, canaries and report keys in one string (the gate said some may be there)."""
        hits = gate.hits if whole else gate.hits_in(text)
        if not hits:
            return
        for f in det.credential_findings(text, hits, path, gate.sightings if whole else None):
            self.add(f)
        if "canary" in hits:
            known = self.ctx.canaries.tokens if self.ctx.canaries else frozenset()
            for m in det.SEEN_CANARY_RE.finditer(text.lower()):
                tok = det.canary_token(m)
                if tok in known:
                    self.finding("canary", "canary", path, f"known canary {mask_token(tok)}", "VERY_LIKELY", m.start())
                else:
                    self.finding("canary", "canary", path, f"canary-shaped token {mask_token(tok)} (not in the loaded list)", "LIKELY", m.start())
            for m in det.PART_CANARY_RE.finditer(text.lower()):
                head = m.group(1)
                match = next((t for t in known if t.startswith(det.CANARY_PREFIX + head)), None)
                if match:
                    self.finding("canary", "canary", path, f"the start of known canary {mask_token(match)} ({len(head)} of its 24 hex digits)", "LIKELY", m.start())
                else:
                    self.finding("canary", "canary", path, f"the start of a canary-shaped token ({len(head)} of 24 hex digits; not in the loaded list)", "POSSIBLE", m.start())
        if whole:
            rep = det.report_finding(hits, path)
            if rep:
                self.add(rep)

    def free_text(self, text: str, path: str, depth: int, data: bytes | None = None) -> None:
        """What only free text gets: personal data, CSV blocks, JSON records inside a string.
        `data`: the text's UTF-8 bytes, when made already."""
        self.budget.tick()
        for hit in det.pii_hits(text, data):
            self.pii.append((path, hit))
        block = det.csv_block(text, data=data)
        if block:
            off, rows, cols, delim = block
            self.finding("tabular:csv", "training-data", path, f"{rows} delimited rows x {cols} columns ({delim!r}), values redacted", "LIKELY", off, rows)
        stripped = text.lstrip()
        if stripped[:1] in ("{", "[") and len(stripped) > 2:
            try:
                doc = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return
            if isinstance(doc, (dict, list)):
                gate = self.gate(stripped)
                gate.verbatim = "\\" not in stripped  # JSON escapes can hide a keyword from the pass
                self.walk(doc, f"{path}<json>", None, depth, free=True, opaque=False, config=False, gate=gate, level=0)

    def leaf(self, s: str, path: str, depth: int, gate: _Gate, *, free: bool, opaque: bool, key: str | None = None) -> None:
        budget = self.budget
        budget.nodes += 1
        if budget.nodes > self.limits.max_nodes:
            budget.node(0)
        if self.quiet:
            return
        if gate.hits:
            # the key travels with the value: `secret_access_key: …` is what the patterns know
            keyed = f"{key}: {s}" if key else s
            if gate.may_hit(keyed):
                self.keyworded(keyed, path, gate, whole=False)
        if self.ctx.fingerprints is not None and not opaque:
            self.tokens.append((path, cells_of(s)))
        if len(s) >= self.limits.min_embedded and gate.runs and not opaque and maybe_encoded(s, self.limits.min_embedded):
            self.embedded(s, path, depth)
        if "%" in s and has_percent_escapes(s):
            self.budget.depth(depth + 1, "URL encoding")
            dec = unquote_plus(s)
            self.text(dec, f"{path}<url>", depth + 1, free=True)
        if not s.isascii() and not opaque:
            self.visible(s, path, depth)
        if (free or len(s) > _SHORT_FIELD) and not opaque:
            self.free_text(s, path, depth)

    def embedded(self, s: str, path: str, depth: int) -> None:
        """Base64 and hex runs: decoded and inspected one layer deeper."""
        for run in encoded_runs(s, self.limits.min_embedded):
            self.budget.tick()
            data = run.data
            sub = f"{path}<{run.encoding}@{run.offset}>"
            meaningful = det.magic(data) is not None or compression_of(data) is not None or is_zip(data) or is_tar(data)
            text = None if meaningful else as_text(data)
            if text is not None and (len(text) < 8 or not any(c.isalpha() for c in text)):
                text = None
            if meaningful:
                self.budget.depth(depth + 1, f"{run.encoding} inside {path}")
                self.budget.charge(len(data))
                self.blob(data, sub, depth + 1, None, None)
            elif text is not None:
                self.budget.depth(depth + 1, f"{run.encoding} inside {path}")
                self.budget.charge(len(data))
                self.text(text, sub, depth + 1, free=True)
            elif not self.unmarked(data, sub, depth + 1):
                f = det.entropy_finding(data, sub) or (det.bare_aws_secret(s, run.offset, path) if run.encoding == "base64" and len(data) == 30 else None)
                if f and not (f.detector == "credential:aws-secret-key" and self.found_at(f.detector, path, run.offset)):
                    self.add(f)

    def found_at(self, detector: str, path: str, offset: int) -> bool:
        """The keyword pass found this already (the same detector at the same place)."""
        return any(f.detector == detector and f.field_path == path and f.offset == offset for f in self.findings)

    def unmarked(self, data: bytes, path: str, depth: int) -> bool:
        """Binary of no known format that opens as a stream without magic: judged as what it holds."""
        found = open_unmarked(data, self.budget)
        if found is None:
            return False
        enc, inner = found
        self.budget.depth(depth, f"{enc} inside {path}")
        self.blob(inner, f"{path}|{enc}", depth, None, None)
        return True

    def visible(self, s: str, path: str, depth: int) -> None:
        """Characters that render as nothing (zero-width, bidi controls, soft hyphens) split
        a key or a name where no pattern sees it: the text is judged again without them."""
        if _INVISIBLE.search(s) is None:
            return
        self.budget.depth(depth + 1, "invisible characters")
        self.text(_INVISIBLE.sub("", s), f"{path}<visible>", depth + 1, free=True)

    def text(self, text: str, path: str, depth: int, *, free: bool, data: bytes | None = None) -> None:
        """A whole text part (a body, a decoded run): every detector. `data`: the UTF-8
        bytes the text was decoded from, if it was."""
        gate = self.gate(text, data)
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            doc = _json_or_none(stripped)
            if doc is not None:
                self.json_doc(doc, stripped, path, depth, None)
                return
            lines = _ndjson_or_none(stripped, self.budget)
            if lines is not None:
                self.json_doc(lines, stripped, path, depth, None)
                return
        if gate.hits:
            self.keyworded(text, path, gate, whole=True)
        if self.ctx.fingerprints is not None:
            self.tokens.append((path, cells_of(text, gate.lowered, gate.low_data)))
        if gate.runs and len(text) >= self.limits.min_embedded:
            self.embedded(text, path, depth)
        if has_percent_escapes(text) and "=" in text:
            self.budget.depth(depth + 1, "URL encoding")
            self.text(unquote_plus(text), f"{path}<url>", depth + 1, free=True)
        if not text.isascii():
            self.visible(text, path, depth)
        if free:
            self.free_text(text, path, depth, gate.data)

    # --- structured documents ---------------------------------------------------------------

    def json_doc(self, doc: Any, raw: str, path: str, depth: int, model: type[rt.Body] | None, *, raw_json: bool = False, gate: _Gate | None = None) -> None:
        """A parsed document; `gate`, when given, is `self.gate(raw)` already made."""
        if "\\" in raw:
            # escapes (\\u0040, \\/) would hide keywords from a pass over the raw text:
            # gate on the parsed strings, re-serialised without them
            raw = _unescaped(doc, raw)
        if gate is None:
            gate = self.gate(raw)
        if gate.hits:
            rep = det.report_finding(gate.hits, path)
            if rep:
                self.add(rep)
        quiet = raw_json and self._quiet(raw, gate)
        self.quiet, self.quiet_depth = quiet, depth
        # each value counts at most three nodes (itself, as a child, as a string): when the
        # text's values cannot reach the cap, the walk skips its per-node checks
        self.uncapped = quiet and _values_fit(raw, self.budget.nodes, self.limits.max_nodes)
        # the quiet walk of a short text checks each value's type against the schema on its
        # way; pydantic runs (its findings placed first, as if it ran first) only when the
        # walk met a value it cannot vouch for, or stopped
        lazy = model if self.uncapped else None
        if model is not None and lazy is None:
            self.schema(model, doc, path, len(self.findings))
        if model is rt.Connection and doc.__class__ is dict:
            self.connection(doc, path)
        self.unsure = doc.__class__ is not dict
        at = len(self.findings)
        try:
            self.walk(doc, path, model, depth, free=model is None, opaque=False, config=False, gate=gate, level=0)
        except BaseException:
            if lazy is not None:
                self.schema(lazy, doc, path, at)
            raise
        else:
            if lazy is not None and self.unsure:
                self.schema(lazy, doc, path, at)
        finally:
            self.quiet = self.uncapped = self.unsure = False

    def typed(self, text: str, model: type[rt.Body], data: bytes | None = None) -> tuple[bool, _Gate | None]:
        """The typed fast path of a JSON body on a route: when the raw text is quiet (see
        `_quiet`), holds no runner_mode key, and the route model's msgspec mirror decodes
        it (parsing and validating every value in one C pass, no dict per object), the
        walk would only have added kinds: those are added here and (True, None) returned.
        Otherwise (False, the gate made on the way, if any) for `json_doc`, which judges
        the body the ordinary way; tests/classify/test_classify_typed.py holds the two
        paths equal."""
        t = rt.typed(model)
        if t is None or "\\" in text:
            return False, None  # escapes: json_doc gates on the unescaped strings
        if '"runner_mode' in text or t.levels - 1 > self.limits.max_structure_depth or not _values_fit(text, self.budget.nodes, self.limits.max_nodes):
            return False, None
        gate = None
        if not self._silent(text, data):  # the quick proof failed: the gate and `_quiet` decide
            gate = self.gate(text, data)
            if not self._quiet(text, gate):
                return False, gate
        try:
            doc = t.decoder.decode(text)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False, gate
        rt.typed_kinds(t, doc, self.kinds)
        return True, None

    def schema(self, model: type[rt.Body], doc: Any, path: str, at: int) -> None:
        """Schema findings from pydantic, placed at `at` among the findings."""
        errors = rt.validate(model, doc)
        if not errors:
            return
        self.schema_ok = False
        after = self.findings[at:]
        del self.findings[at:]
        for e in errors:
            self.finding("schema", "extra-field", path, f"does not fit the route schema: {redact_text(e)}", "LIKELY")
        self.findings.extend(after)
        del self.findings[_MAX_FINDINGS:]

    def _silent(self, raw: str, data: bytes | None = None) -> bool:
        """`_quiet(raw, self.gate(raw))` proven without making the gate: `det.silent` and the
        encoded-run check (`data`: the UTF-8 bytes of `raw`, when made already). False says
        only "make the gate and ask `_quiet`"; tests/classify/test_classify_fastpaths.py
        holds the implication."""
        data = utf8(raw) if data is None else data
        return self.ctx.fingerprints is None and det.silent(raw, data) and not maybe_encoded(raw, self.limits.min_embedded, data)

    def _quiet(self, raw: str, gate: _Gate) -> bool:
        """True when no string in this JSON text can hold what a per-string detector finds,
        proven on the raw text at C speed: no keyword, no escape of any kind (so the raw text
        is exactly the strings' text: no hidden `\\u0040`, no newlines inside strings, no JSON
        inside strings), no string opening with a bracket, no percent escape, no encoded run,
        no personal data. Then the walk checks structure only (extra fields, kinds,
        runner_mode, data_source, record arrays): the common status and log body."""
        return (
            not gate.hits
            and self.ctx.fingerprints is None
            and (not gate.marks if gate.marks is not None else not any(m in raw for m in det.MARKS))
            and not has_percent_escapes(raw)
            and not gate.runs
            and not det.pii_hits(raw)
            and (raw.isascii() or _INVISIBLE.search(raw) is None)
        )

    def walk(self, value: Any, path: str, model: type[rt.Body] | None, depth: int, *, free: bool, opaque: bool, config: bool, gate: _Gate, level: int, key: str | None = None) -> None:
        if self.quiet:
            self.quiet_value(value, path, model, free, opaque, config, gate, level)
        else:
            self.value(value, path, model, depth, free, opaque, config, gate, level, key)

    def quiet_value(self, value: Any, path: str, model: type[rt.Body] | None, free: bool, opaque: bool, config: bool, gate: _Gate, level: int) -> None:
        """`value` when `_quiet` proved no string can fire a detector: the same structure
        checks in the same order (extra fields, kinds, runner_mode, data_source, record
        arrays, node and depth caps), with strings only counted and child paths built only
        for containers. A container's string leaves are counted one by one, as `leaf` does,
        so a node cap trips at the same value."""
        if value.__class__ is str:
            self.budget.node()
            return
        if not isinstance(value, (dict, list)):
            return
        if level > self.limits.max_structure_depth:
            raise LimitExceeded(f"structure-depth: JSON/YAML nested deeper than {self.limits.max_structure_depth} levels")
        budget = self.budget
        if self.uncapped and not gate.hits:
            if value.__class__ is dict:
                plan = _dict_plan(model, tuple(value), tuple(map(type, value.values())), config)
                if plan is not None:
                    self.planned(plan, value, path, model, free, opaque, config, gate, level)
                    return
            elif value.__class__ is list:
                self.quiet_list(value, path, model, free, opaque, config, gate, level)
                return
        if model is not None and (value.__class__ is dict or any(v.__class__ is not dict for v in value)):
            self.unsure = True  # a model's fields not planned, or a list of models holding something else
        max_nodes = self.limits.max_nodes
        budget.nodes += len(value) + 1
        if budget.nodes > max_nodes:
            budget.node(0)
        if not (budget.nodes & 1023):
            budget.tick()
        child = self.quiet_value
        hits = bool(gate.hits)
        if value.__class__ is dict or isinstance(value, dict):
            specs = rt.specs(model) if model is not None else None
            for i, (k, v) in enumerate(value.items()):
                vc = v.__class__
                key = k if k.__class__ is str else str(k)
                if hits and vc is not str:
                    self.keyworded(key, _field_path(path, key, i), gate, whole=False)
                if key in _RUNNER_KEYS:
                    self.runner_mode(v, f"{path}.{key}")
                if specs is not None:
                    spec = specs.get(key)
                    if spec is None:
                        sub = _field_path(path, key, i)
                        self.extra(key, v, sub, model)
                        if vc is str:
                            budget.nodes += 1
                            if budget.nodes > max_nodes:
                                budget.node(0)
                        elif vc not in _SCALARS and isinstance(v, (dict, list)):
                            child(v, sub, None, True, False, False, gate, level + 1)
                        continue
                    if v is not None:
                        self.kinds.update(spec.kinds)
                    if spec.config:
                        self.config(v, f"{path}.{key}", 0, gate, level + 1)
                        continue
                    if vc is str:
                        budget.nodes += 1
                        if budget.nodes > max_nodes:
                            budget.node(0)
                    elif vc not in _SCALARS and isinstance(v, (dict, list)):
                        child(v, f"{path}.{key}", spec.model, spec.free_text or free, spec.opaque, False, gate, level + 1)
                else:
                    if config and key in rt.DATA_SOURCE_KEYS:
                        self.data_source(v, f"{path}.{key}")
                    if vc is str:
                        budget.nodes += 1
                        if budget.nodes > max_nodes:
                            budget.node(0)
                    elif vc not in _SCALARS and isinstance(v, (dict, list)):
                        child(v, _field_path(path, key, i), None, free or key in rt.FREE_TEXT_FIELDS, opaque, config, gate, level + 1)
            return
        if (free or model is None) and not config and not opaque:
            self.data_array(value, path, self.quiet_depth)
        for i, v in enumerate(value):
            vc = v.__class__
            if vc is str:
                budget.nodes += 1
                if budget.nodes > max_nodes:
                    budget.node(0)
            elif vc not in _SCALARS and isinstance(v, (dict, list)):
                child(v, f"{path}[{i}]", model, free, opaque, config, gate, level + 1)

    def planned(self, plan: _Plan, value: dict[Any, Any], path: str, model: type[rt.Body] | None, free: bool, opaque: bool, config: bool, gate: _Gate, level: int) -> None:
        """What a dict's plan says: type checks, counts, then its containers, with the
        kinds added in the full loop's order (so a too-deep child stops them at the same field)."""
        if not plan.sure:
            self.unsure = True
        values: list[Any] = list(value.values()) if plan.literal or plan.children else []
        for i, allowed in plan.literal:
            if values[i] not in allowed:
                self.unsure = True
        budget = self.budget
        budget.nodes += len(value) + 1 + plan.strings
        if not (budget.nodes & 1023):
            budget.tick()
        for i, key, sub_model, sub_free, sub_opaque, upto in plan.children:
            if upto:
                self.kinds.update(upto)  # a child that raises (too deep) leaves the later fields' kinds out, as the full loop does
            if model is None:
                self.quiet_value(values[i], f"{path}.{key}", None, free or sub_free, opaque, config, gate, level + 1)
            else:
                self.quiet_value(values[i], f"{path}.{key}", sub_model, sub_free or free, sub_opaque, False, gate, level + 1)
        if plan.kinds:
            self.kinds.update(plan.kinds)

    def quiet_list(self, value: list[Any], path: str, model: type[rt.Body] | None, free: bool, opaque: bool, config: bool, gate: _Gate, level: int) -> None:
        """The quiet walk of a list when the node cap cannot be reached: the list branch of
        `quiet_value`, with its dicts' plans applied in the loop (status history, log lines)
        instead of a call each."""
        budget = self.budget
        budget.nodes += len(value) + 1
        budget.tick()
        if model is not None and any(v.__class__ is not dict for v in value):
            self.unsure = True
        if (free or model is None) and not config and not opaque:
            self.data_array(value, path, self.quiet_depth)
        child = self.quiet_value
        inline = level + 1 <= self.limits.max_structure_depth  # else the child call raises
        for i, v in enumerate(value):
            vc = v.__class__
            if vc is str:
                budget.nodes += 1
            elif vc is dict and inline:
                plan = _dict_plan(model, tuple(v), tuple(map(type, v.values())), config)
                if plan is not None:
                    self.planned(plan, v, f"{path}[{i}]" if plan.children else path, model, free, opaque, config, gate, level + 1)
                else:
                    child(v, f"{path}[{i}]", model, free, opaque, config, gate, level + 1)
            elif vc not in _SCALARS and isinstance(v, (dict, list)):
                child(v, f"{path}[{i}]", model, free, opaque, config, gate, level + 1)

    def value(self, value: Any, path: str, model: type[rt.Body] | None, depth: int, free: bool, opaque: bool, config: bool, gate: _Gate, level: int, key: str | None) -> None:
        """One JSON/YAML value: containers recurse, strings are leaves (positional args: hot path)."""
        if value.__class__ is str:
            if config and "\n" in value and len(value) > 64 and value.lstrip()[:1] not in ("{", "["):
                free = True  # multi-line strings in configs get the free-text detectors
            self.leaf(value, path, depth, gate, free=free, opaque=opaque, key=key)
            return
        if not isinstance(value, (dict, list)):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and self.ctx.fingerprints is not None:
                self.tokens.append((path, {str(value)}))
            return
        if level > self.limits.max_structure_depth:
            raise LimitExceeded(f"structure-depth: JSON/YAML nested deeper than {self.limits.max_structure_depth} levels")
        budget = self.budget
        budget.nodes += len(value) + 1
        if budget.nodes > self.limits.max_nodes:
            budget.node(0)
        if not (budget.nodes & 1023):
            budget.tick()
        child = self.value
        if isinstance(value, dict):
            specs = rt.specs(model) if model is not None else None
            for i, k in enumerate(value):
                v = value[k]
                key = str(k)
                sub = _field_path(path, key, i)
                if sub[-1] == ">":  # a key that is no name can carry a record: judged as a value
                    self.leaf(key, sub, depth, gate, free=True, opaque=opaque)
                if gate.hits and v.__class__ is not str and gate.may_hit(key):
                    self.keyworded(key, sub, gate, whole=False)
                if key == "runner_mode" or key == "runner_modes":
                    self.runner_mode(v, sub)
                if specs is not None:
                    spec = specs.get(key)
                    if spec is None:
                        self.extra(key, v, sub, model)
                        child(v, sub, None, depth, True, False, False, gate, level + 1, key)
                        continue
                    if v is not None:
                        self.kinds.update(spec.kinds)
                    if spec.config:
                        self.config(v, sub, depth, gate, level + 1)
                        continue
                    vc = v.__class__
                    if vc is str:  # what `value` does with a string outside a config, without its frame
                        self.leaf(v, sub, depth, gate, free=spec.free_text or free, opaque=spec.opaque, key=key)
                    elif vc not in _SCALARS or self.ctx.fingerprints is not None:
                        child(v, sub, spec.model, depth, spec.free_text or free, spec.opaque, False, gate, level + 1, key)
                else:
                    if config and key in rt.DATA_SOURCE_KEYS:
                        self.data_source(v, sub)
                    if v.__class__ is str and not config:
                        self.leaf(v, sub, depth, gate, free=free or key in rt.FREE_TEXT_FIELDS, opaque=opaque, key=key)
                    else:
                        child(v, sub, None, depth, free or key in rt.FREE_TEXT_FIELDS, opaque, config, gate, level + 1, key)
            return
        if (free or model is None) and not config and not opaque:
            self.data_array(value, path, depth)
        for i, v in enumerate(value):
            child(v, f"{path}[{i}]", model, depth, free, opaque, config, gate, level + 1, key)

    def data_array(self, value: list[Any], path: str, depth: int) -> None:
        """An array that is data, not metadata: records or rows of one shape, or a long run
        of numbers (weights, a tensor, a column, bytes spelled as integers: those are also
        opened as a blob, as an encoded run is)."""
        shape = det.same_shaped_records(value) or det.row_shaped_arrays(value)
        if shape:
            rows, cols = shape
            self.finding("tabular:records", "training-data", path, f"{rows} same-shaped records x {cols} fields, values redacted", "LIKELY", None, rows)
            return
        numbers = det.numeric_array(value)
        if numbers:
            label, what, as_bytes = numbers
            self.finding("tabular:numbers", label, path, what, "LIKELY", None, len(value))
            if as_bytes:
                self.budget.depth(depth + 1, f"byte values inside {path}")
                data = bytes(value)
                self.budget.charge(len(data))
                self.blob(data, f"{path}<bytes>", depth + 1, None, None)

    def config(self, value: Any, path: str, depth: int, gate: _Gate, level: int) -> None:
        """An open config tree (model or workflow config, YAML text or object)."""
        if isinstance(value, str):
            self.budget.tick()
            if len(value) > self.limits.max_yaml_bytes:
                raise LimitExceeded(f"yaml-size: config text over {self.limits.max_yaml_bytes} bytes")
            doc = _yaml_or_none(value)
            if isinstance(doc, (dict, list)):
                uncapped, self.uncapped = self.uncapped, False  # YAML aliases repeat nodes: no bound from the text
                gate = self.gate(value)
                gate.verbatim = False  # YAML escapes ("\x74oken") can hide a keyword from the pass
                try:
                    self.walk(doc, f"{path}<yaml>", None, depth, free=False, opaque=False, config=True, gate=gate, level=level)
                finally:
                    self.uncapped = uncapped
                return
        self.walk(value, path, None, depth, free=False, opaque=False, config=True, gate=gate, level=level)

    def extra(self, key: str, value: Any, path: str, model: type[rt.Body] | None) -> None:
        if key == "credentials" and model is rt.Connection:
            self.finding("schema", "plaintext-credentials", path, "connection credentials sent in the clear (only encrypted_credentials is allowed)")
            return
        named = repr(redact_text(key)) if _PLAIN_NAME.fullmatch(key) else f"named by {len(key)} characters that are no name"
        self.finding("schema", "extra-field", path, f"field {named} is not part of the route schema", "LIKELY")

    def connection(self, doc: dict[str, Any], path: str) -> None:
        """Hybrid mode sends a connection's credentials only as ciphertext the customer's
        KMS opens. `encrypted_credentials` is opaque to the detectors on that claim, so the
        claim is checked (the string, or its `ciphertext`-named members); and a secret
        named in the clear anywhere in `config` is a plaintext credential."""
        value = doc.get("encrypted_credentials")
        where = f"{path}.encrypted_credentials"
        items = [(where, value)] if isinstance(value, str) else [(f"{where}.{k}", v) for k, v in value.items() if "cipher" in str(k).lower()] if isinstance(value, dict) else []
        for at, v in items:
            why = det.not_ciphertext(v) if isinstance(v, str) else "not a string"
            if why:
                self.finding("schema", "plaintext-credentials", at, f"encrypted_credentials is {why}")
        stack: list[tuple[str, Any]] = [(f"{path}.config", doc.get("config"))]
        while stack:
            at, node = stack.pop()
            if isinstance(node, list):
                stack.extend((f"{at}[{i}]", v) for i, v in enumerate(node) if isinstance(v, (dict, list)))
                continue
            if not isinstance(node, dict):
                continue
            for i, (k, v) in enumerate(node.items()):
                key = str(k)
                sub = _field_path(at, key, i)
                if _SECRET_NAME.search(key) and v not in (None, "", {}, []) and not (isinstance(v, str) and det.placeholder(v)):
                    self.finding("schema", "plaintext-credentials", sub, "connection config names a secret in the clear")
                elif isinstance(v, (dict, list)):
                    stack.append((sub, v))

    def runner_mode(self, value: Any, path: str) -> None:
        values = value if isinstance(value, list) else str(value).split(",") if value is not None else []
        for v in values:
            if str(v).strip().lower() != "hybrid":
                self.finding("schema", "runner-mode", path, f"runner_mode {mask(str(v), 16) if len(str(v)) > 16 else str(v)!r}, not 'hybrid'")
                return

    def data_source(self, value: Any, path: str) -> None:
        if rt.data_source_ok(value):
            return
        if isinstance(value, list):
            shape = f"list of {len(value)} {type(value[0]).__name__ if value else 'item'}s"
        elif isinstance(value, dict):
            shape = f"object with {len(value)} fields"
        elif isinstance(value, str):
            shape = f"string of {len(value)} characters over {value.count(chr(10)) + 1} lines"
        else:
            shape = type(value).__name__
        self.finding("schema", "inline-data-source", path, f"data_source holds inline data ({shape}), not a storage URI or file name")

    # --- bytes ------------------------------------------------------------------------------

    def blob(self, data: bytes, path: str, depth: int, content_type: str | None, name: str | None, model: type[rt.Body] | None = None, logs: str = "json") -> None:
        self.budget.tick()
        if name:
            art = det.artifact_name(name)
            if art:
                self.finding("artifact-name", art[0], path, f"{art[1]} ({name.rsplit('/', 1)[-1]})")
        mg = det.magic(data)
        if mg:
            self.finding("magic", mg.label, path, mg.what, "VERY_LIKELY", 0)
            return
        if is_zip(data):
            self.archive(data, path, depth, "zip")
            return
        if is_tar(data):
            self.archive(data, path, depth, "tar")
            return
        comp = compression_of(data)
        if comp and not (comp == "deflate" and as_text(data) is not None):
            self.budget.depth(depth + 1, comp)
            inner = decompress(data, comp, self.budget)
            inner_name = name[: -len(".gz")] if name and name.lower().endswith(".gz") else None
            self.blob(inner, f"{path}|{comp}", depth + 1, None, inner_name)
            return
        mt, params = media_type(content_type)
        if mt.startswith("multipart/"):
            boundary = params.get("boundary")
            if not boundary:
                raise Undecodable("multipart body without a boundary parameter")
            for i, part in enumerate(multipart(data, boundary, self.budget)):
                label = part.name or str(i)
                if part.filename:
                    art = det.artifact_name(part.filename)
                    if art:
                        self.finding("artifact-name", art[0], f"{path}[{label}]", f"{art[1]} ({part.filename.rsplit('/', 1)[-1]})")
                self.blob(part.data, f"{path}[{label}]", depth, part.content_type, None)
            return
        text = as_text(data)
        if text is None:
            if model is not None:  # bytes where the route carries a JSON object are never metadata
                self.schema_ok = False
                self.finding("schema", "extra-field", path, "body is binary, the route carries a JSON object", "LIKELY")
            if not self.unmarked(data, path, depth + 1):
                f = det.entropy_finding(data, path)
                if f:
                    self.add(f)
            return
        if mt == "application/x-www-form-urlencoded":
            fields = form(text, self.budget)
            doc = {k: v[0] if len(v) == 1 else v for k, v in fields.items()}
            self.json_doc(doc, unquote(text), path, depth, model)
            return
        if mt in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            if len(text) > self.limits.max_yaml_bytes:
                raise LimitExceeded(f"yaml-size: YAML body over {self.limits.max_yaml_bytes} bytes")
            doc = _yaml_or_none(text)
            if isinstance(doc, (dict, list)):
                self.json_doc(doc, text, path, depth, model)
                return
        if _JSON_START.match(data):
            gate = None
            if model is not None:
                done, gate = self.typed(text, model, data)
                if done:
                    return
            doc = _json_or_none(text)
            if doc is None:
                doc = _ndjson_or_none(text, self.budget)
            if doc is not None:
                if model is not None and logs != "json":
                    doc = _as_batch(doc)
                self.json_doc(doc, text, path, depth, model, raw_json=True, gate=gate)
                return
        if model is not None:
            self.schema_ok = False
            self.finding("schema", "extra-field", path, "body is not JSON, the route carries a JSON object", "LIKELY")
        self.text(text, path, depth, free=True, data=data)

    def archive(self, data: bytes, path: str, depth: int, kind: str) -> None:
        self.budget.depth(depth + 1, kind)
        entries = list(zip_entries(data, self.budget) if kind == "zip" else tar_entries(data, self.budget))
        model_member = det.model_archive_members(e.name for e in entries)
        what = f"{kind} archive of {len(entries)} files" + (f" with model member {model_member.rsplit('/', 1)[-1]!r}" if model_member else "")
        self.finding("magic", "model-artifact", path, what, "VERY_LIKELY" if model_member else "LIKELY", 0)
        for e in entries:
            self.blob(e.data, f"{path}/{e.name}", depth + 1, None, e.name)

    # --- at the end ----------------------------------------------------------------------------

    def finish(self) -> None:
        if self.pii:
            self.finish_pii()
        if self.ctx.fingerprints is not None and self.tokens:
            m = fp_match(self.ctx.fingerprints, self.tokens)
            if m:
                src = self.ctx.fingerprints.header.source
                self.finding("fingerprint", "fingerprint-match", m.path, f"{m.rows} rows of {src} ({m.cells} fingerprinted cells)", "VERY_LIKELY", None, m.rows)
                self.finding("fingerprint", "training-data", m.path, f"{m.rows} rows of {src}", "VERY_LIKELY", None, m.rows)

    def finish_pii(self) -> None:
        by_kind: dict[str, list[tuple[str, det.PiiHit]]] = {}
        for path, hit in self.pii:
            by_kind.setdefault(hit.kind, []).append((path, hit))
        total = len(self.pii)
        table = total >= self.limits.pii_table_min
        for kind, hits in sorted(by_kind.items()):
            path, first = hits[0]
            strong = kind in ("card", "ssn", "iban", "nino")
            like = "LIKELY" if table or strong else "POSSIBLE"
            self.finding(f"pii:{kind}", "pii", path, f"{len(hits)} {kind} value(s), e.g. {mask(first.value, 24)}", like, first.offset, len(hits))
        if table:
            path, first = self.pii[0]
            self.finding("pii:count", "training-data", path, f"{total} personal-data values: a table, not an error message", "LIKELY", first.offset, total)


def _values_fit(raw: str, used: int, limit: int) -> bool:
    """True when walking every value of this JSON (or NDJSON) text, at most three nodes
    each, stays within `limit`. Siblings are separated by a comma, roots by a line, and a
    value other than a one-digit number takes two characters of its own, so n characters
    hold at most (n + 1) // 2 values; the separators are counted (four passes over the
    text) only when that bound is too loose."""
    if used + 3 * ((len(raw) + 1) // 2) + 8 <= limit:
        return True
    return used + 3 * (1 + raw.count(",") + raw.count("[") + raw.count("{") + raw.count("\n")) + 8 <= limit


def _unescaped(doc: Any, raw: str) -> str:
    """The document as JSON text whose strings carry their characters, not escapes."""
    try:
        return orjson.dumps(doc).decode()
    except (TypeError, orjson.JSONEncodeError):
        return raw


def _json_or_none(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc).lower() or "depth" in str(exc).lower():
            raise LimitExceeded("structure-depth: JSON nested deeper than the parser allows") from None
        return None


def _ndjson_or_none(text: str, budget: Budget) -> list[Any] | None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    out = []
    for ln in lines:
        budget.tick()
        doc = _json_or_none(ln)
        if doc is None:
            return None
        out.append(doc)
    return out


def _yaml_or_none(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise LimitExceeded("structure-depth: YAML nested deeper than the parser allows") from None
    except yaml.YAMLError:
        return None


def _as_batch(doc: Any) -> Any:
    """Log routes accept one line, a JSON array of lines or NDJSON: all become {"logs": [...]}."""
    if isinstance(doc, list):
        return {"logs": doc}
    if isinstance(doc, dict) and "logs" not in doc and "msg" in doc:
        return {"logs": [doc]}
    return doc


_RUNNER_KEYS = frozenset({"runner_mode", "runner_modes"})
_SCALARS = frozenset({int, float, bool, type(None)})  # leaves the quiet walk neither counts nor enters

_RUN_KINDS = rt.RUN_KINDS

_Child = tuple[int, str, "type[rt.Body] | None", bool, bool, frozenset[str]]  # (index, key, model, free_text, opaque, kinds of the fields up to it)


class _Plan(typing.NamedTuple):
    kinds: frozenset[str]
    children: tuple[_Child, ...]  # the containers to enter
    strings: int
    sure: bool  # every value's class surely validates against the model
    literal: tuple[tuple[int, frozenset[str]], ...]  # (index, allowed): values that must be listed


_PLANS: dict[tuple[type[rt.Body] | None, tuple[Any, ...], bool], tuple[tuple[type, ...], _Plan | None]] = {}


def _dict_plan(model: type[rt.Body] | None, keys: tuple[Any, ...], classes: tuple[type, ...], config: bool) -> _Plan | None:
    """`_make_plan`, kept per (model, keys, config) with the value classes it was made for
    (the classes are compared, not hashed: cheaper for the few shapes a sensor sees)."""
    slot = (model, keys, config)
    cached = _PLANS.get(slot)
    if cached is not None and cached[0] == classes:
        return cached[1]
    if len(_PLANS) >= 4096:
        _PLANS.clear()
    plan = _PLANS[slot] = (classes, _make_plan(model, keys, classes, config))
    return plan[1]


def _make_plan(model: type[rt.Body] | None, keys: tuple[Any, ...], classes: tuple[type, ...], config: bool) -> _Plan | None:
    """What the quiet walk of a dict with these keys and value types does, when that is
    only adding kinds, counting strings and entering containers. None when it does more
    (an extra field, runner_mode, a config or data_source field, a key that is not a
    string or not a name): then the full loop runs. Logs and status bodies repeat a few shapes, so the
    loop over their fields runs once a shape. For a model's fields it also says whether
    every value's class surely validates, and which values must be one of a Literal's."""
    specs = rt.specs(model) if model is not None else None
    kinds: set[str] = set()
    children: list[_Child] = []
    literal: list[tuple[int, frozenset[str]]] = []
    strings = 0
    sure = True
    for i, (key, vc) in enumerate(zip(keys, classes)):
        if key.__class__ is not str or key in _RUNNER_KEYS or not _PLAIN_NAME.fullmatch(key):
            return None  # a key that is no name: the full loop names it by position
        container = vc not in _SCALARS and vc is not str and issubclass(vc, (dict, list))
        if specs is not None:
            spec = specs.get(key)
            if spec is None or spec.config:
                return None
            if vc is not type(None):
                kinds.update(spec.kinds)
            if spec.accepts is None or vc not in spec.accepts:
                if vc is str and spec.literals:
                    literal.append((i, spec.literals))
                else:
                    sure = False
            if container:
                children.append((i, key, spec.model, spec.free_text, spec.opaque, frozenset(kinds)))
        else:
            if config and key in rt.DATA_SOURCE_KEYS:
                return None
            if container:
                children.append((i, key, None, key in rt.FREE_TEXT_FIELDS, False, frozenset(kinds)))
        strings += vc is str
    return _Plan(frozenset(kinds), tuple(children), strings, sure, tuple(literal))


def _path_checks(run: _Run, method: str | None, path: str | None, route: rt.Route | None, gretel: bool) -> None:
    """What the method and the path without its query say."""
    if route is not None:
        run.kinds.update(route.kinds)
        if route.forbidden:
            run.finding("route", "forbidden-route", None, f"{route.name}: the Cloud upload path, forbidden in hybrid mode")
    elif gretel and method:
        bare = (path or "/").split("?", 1)[0]
        run.finding("route", "unrecognised-route", None, f"{method.upper()} {redact_text(bare)} is not a known Gretel API route", "LIKELY")
    if path is None:
        return
    bare = path.split("?", 1)[0]
    if method and method.upper() in ("PUT", "POST", "PATCH"):
        art = det.artifact_name(unquote(bare))
        if art:
            run.finding("artifact-name", art[0], "url.path", f"{art[1]} ({unquote(bare).rsplit('/', 1)[-1]})")
    decoded_path = unquote(bare)
    hits = det.keyword_hits(decoded_path.lower())  # the path is judged by its keywords only
    if hits:
        run.keyworded(decoded_path, "url.path", _Gate(hits=hits, runs=False), whole=False)


def _query_checks(run: _Run, path: str | None, route: rt.Route | None) -> None:
    """Every query value, and every key, is a string leaf of the request, judged like one:
    a key can carry a record as well as a value can. Each pair counts as a node."""
    if path is None or "?" not in path:
        return
    query = rt.query_of(path)
    leaves = [(i, k, v) for i, (k, v) in enumerate(query)]
    _carried_strings(run, [x for x in leaves if not is_sensitive_param(x[1])], "query")
    _carried_strings(run, [x for x in leaves if is_sensitive_param(x[1])], "query", own_auth=True)
    run.budget.node(len(query))
    if route is not None and route.template == "/projects/models" and dict(query).get("type") == "run":
        run.model_run = True


_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_SECRET_NAME = re.compile(
    r"(?i)(?:^|[_\-.])(?:pass|passwd|password|passphrase|pw|pwd|secret|token|credentials?|private[_\-]?key|api[_\-]?key|access[_\-]?key(?:[_\-]?id)?|"
    r"secret[_\-]?(?:access[_\-]?)?key|client[_\-]?secret|sas|connection[_\-]?string)$"
)  # a connection config key naming a secret (`password`, `db_pass`, `aws_secret_access_key`)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # a name that can stand in a field path


def _field_path(at: str, key: str, i: int) -> str:
    """`at.key`, or `at<key i>` for a key that is no name: it may be data, never printed."""
    return f"{at}.{key}" if _PLAIN_NAME.fullmatch(key) else f"{at}<key {i}>"
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]")


def _carried_strings(run: _Run, leaves: list[tuple[int, str, str]], where: str, *, own_auth: bool = False) -> None:
    """(position, name, value) strings a request carries outside its body, judged as
    leaves under one gate (no keyword and no encoded run spans a newline); names are
    leaves too. A name that could be data is reported by position, never as a path.
    They are not body values: the node cap counts only what decoding them yields.
    `own_auth`: these authenticate the request itself (an API key, a session cookie, a
    presigned URL's signature: the parameters the redactor hides), so a credential among
    them is no leak; data still is."""
    if not leaves:
        return
    mark = len(run.findings)
    _judge_carried(run, leaves, where)
    if own_auth:
        run.findings[mark:] = [f for f in run.findings[mark:] if f.label != "credential"]


def _judge_carried(run: _Run, leaves: list[tuple[int, str, str]], where: str) -> None:
    joined = "\n".join(f"{k}: {v}" for _, k, v in leaves)
    if (
        "%" not in joined
        and run.ctx.fingerprints is None
        and all(len(v) <= 64 and len(k) <= 64 and k not in _RUNNER_KEYS for _, k, v in leaves)
        and not det.keyword_hits(joined.lower())
        and not maybe_encoded(joined, run.limits.min_embedded)
    ):
        return  # short strings with nothing a gate would find
    gate = run.gate(joined)
    run.budget.nodes -= 2 * len(leaves)  # each leaf() below counts one
    for i, k, v in leaves:
        sub = f"{where}.{k}" if _PLAIN_NAME.fullmatch(k) else f"{where}[{i}]"
        if k in _RUNNER_KEYS:
            run.runner_mode(v, sub)
        run.leaf(k, f"{where}[{i}]<name>", 0, gate, free=len(k) > 64, opaque=False)
        run.leaf(v, sub, 0, gate, free=len(v) > 64, opaque=False, key=k)


def _segment_checks(run: _Run, path: str | None) -> None:
    """Path segments, percent-decoded, judged as leaves for what keywords miss: encoded
    runs, fingerprinted cells, long free text (keywords in the path are `_path_checks`')."""
    if not path:
        return
    shortest = 1 if run.ctx.fingerprints is not None else run.limits.min_embedded  # shorter holds no encoded run
    parts = (s for s in unquote(path.split("?", 1)[0]).split("/") if s)
    segments = [(i, s) for i, s in enumerate(parts) if len(s) >= shortest]
    if not segments:
        return
    gate = _Gate(hits={}, runs=True)
    run.budget.nodes -= len(segments)  # not body values: each leaf() below counts one
    for i, seg in segments:
        run.leaf(seg, f"url.path[{i}]", 0, gate, free=len(seg) > 64, opaque=False)


def carried_checks(run: _Run, path: str | None, route: rt.Route | None, headers: typing.Sequence[tuple[str, str]]) -> None:
    """What a request carries out besides its body: query, path segments, headers."""
    _query_checks(run, path, route)
    _segment_checks(run, path)
    _header_checks(run, headers)


def _header_checks(run: _Run, headers: typing.Sequence[tuple[str, str]]) -> None:
    """Header values (each cookie apart) are strings the request carries out like its
    body. A credential in the headers that authenticate the request (the API key in
    `Authorization`, a session cookie) is its own, not a leak; anything else there is."""
    plain: list[tuple[int, str, str]] = []
    auth: list[tuple[int, str, str]] = []
    cookies: list[tuple[int, str, str]] = []
    for i, (name, value) in enumerate(headers):
        low = name.lower()
        if low == "cookie":
            for part in value.split(";"):
                k, _, v = part.strip().partition("=")
                cookies.append((len(cookies), k, v))
        elif not low.startswith(":"):
            (auth if low in _AUTH_HEADERS else plain).append((i, low, value))
    _carried_strings(run, plain, "header")
    _carried_strings(run, auth, "header", own_auth=True)
    _carried_strings(run, cookies, "header.cookie", own_auth=True)


@functools.lru_cache(maxsize=4096)
def _path_facts(method: str | None, bare: str | None, host: str | None, gretel: bool) -> tuple[tuple[DetectorFinding, ...], frozenset[str]]:
    """What the method and the path (query removed) say, cached: ids in the query
    change every call, the paths agents poll do not. Only used without a site context
    (fingerprints and canary lists read the path too)."""
    run = _Run(limits=_DEFAULT_LIMITS, budget=Budget(_DEFAULT_LIMITS), ctx=ClassifyContext())  # the path checks read no limit
    route = rt.match(method, bare, host) if gretel else None
    _path_checks(run, method, bare, route, gretel)
    return tuple(run.findings), frozenset(run.kinds)


def classify(
    body: bytes,
    *,
    method: str | None = None,
    path: str | None = None,
    host: str | None = None,
    content_type: str | None = None,
    content_encoding: str | None = None,
    limits: Limits | None = None,
    context: ClassifyContext | None = None,
    headers: typing.Sequence[tuple[str, str]] = (),
) -> PayloadInfo:
    """Judge one request (its body, path, query and `headers`) against its route and
    every detector. Never raises.

    `host` None means "judge by route alone" (a file on the command line); a host that
    is not a Gretel API host gets the detectors but no route schema."""
    lim = limits or _DEFAULT_LIMITS
    run = _Run(limits=lim, budget=Budget(lim), ctx=context or _NO_CONTEXT)
    gretel = host is None or rt.is_gretel_host(host)
    route = rt.match(method, path, host) if gretel else None
    reason: str | None = None  # why the body was not (wholly) inspected
    try:
        if run.ctx.fingerprints is None and run.ctx.canaries is None:
            findings, kinds = _path_facts(method, path.split("?", 1)[0] if path is not None else None, host, gretel)
            if findings:
                run.findings.extend(f.model_copy() for f in findings)
            run.kinds.update(kinds)
        else:
            _path_checks(run, method, path, route, gretel)
        carried_checks(run, path, route, headers)
        if body:
            model = route.body if route else None
            if route is not None and route.body is None:
                run.schema_ok = False
                run.finding("schema", "extra-field", "body", f"{route.name} carries no body, this one has {len(body)} bytes", "LIKELY")
            layers = [e for e in content_encoding.split(",") if e.strip() and e.strip().lower() != "identity"] if content_encoding else []
            data = decode_content(body, content_encoding, run.budget)
            run.budget.charge(len(data))
            run.blob(data, "body", len(layers), content_type, None, model, route.logs if route else "json")
        if run.ctx.canaries is not None:
            _canary_parts(run, path, data if body else b"")
        run.finish()
    except LimitExceeded as exc:
        reason = _uninspectable(run, exc.reason)
    except Undecodable as exc:
        reason = _uninspectable(run, f"undecodable: {exc}")
    except (RecursionError, MemoryError) as exc:
        reason = _uninspectable(run, f"structure-depth: {type(exc).__name__}")
    except Exception as exc:  # a sensor must never crash on a body: record what broke instead
        reason = _uninspectable(run, f"classifier-error: {type(exc).__name__}: {redact_text(str(exc))[:200]}")
    labels = {f.label for f in run.findings}
    if reason is not None:
        labels.add("uninspectable")
    elif route is not None and not route.forbidden and run.schema_ok and not labels & VIOLATION_LABELS:
        labels.add("metadata")
    kinds = {_RUN_KINDS.get(k, k) for k in run.kinds} if run.model_run else run.kinds
    return PayloadInfo(
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        labels=sorted(labels),
        metadata_kinds=[k for k in rt.KINDS if k in kinds],
        findings=run.findings,
        inspected=reason is None,
        not_inspected_reason=reason,
        route=route.name if route else None,
    )


_DEFAULT_LIMITS = Limits()  # frozen: one instance serves every call that passes none
_NO_CONTEXT = ClassifyContext()  # only read: one instance serves every call that passes none


def _canary_parts(run: _Run, target: str | None, data: bytes) -> None:
    """Pieces of known canaries in the request target and the decoded body, when no whole
    or prefixed token was seen (its own pieces would say nothing more): one finding per
    token and place."""
    if run.ctx.canaries is None or any(f.label == "canary" for f in run.findings):
        return
    for where, blob in (("url", (target or "").encode("utf-8", "surrogateescape")), ("body", data)):
        seen: set[str] = set()
        for end, tok in parts_in(run.ctx.canaries, blob):
            if tok not in seen:
                seen.add(tok)
                run.finding("canary", "canary", where, f"part of known canary {mask_token(tok)} ({PART}+ of its hex digits, without the prefix)", "LIKELY", max(0, end - PART))


def _uninspectable(run: _Run, reason: str) -> str:
    """The reason a body was not inspected, after the end-of-body detectors ran on what was read."""
    try:
        run.finish()
    except Exception as exc:  # what was found before the limit stays; say what was lost
        return f"{reason}; end-of-body detectors failed: {type(exc).__name__}"
    return reason
