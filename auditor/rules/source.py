"""Read a YAML rule file keeping the line of every key and value, and turn a
pydantic error into the one line a person needs: file, line, what, fix.

PyYAML's composed node tree carries marks; we construct plain Python data from
it ourselves and remember the line of each path (``("endpoints", 0, "hosts")``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from auditor.errors import AuditorError

PathKey = tuple[str | int, ...]

# What a section's items are called in messages, and which field names them.
_ITEM_NOUN: dict[str, tuple[str, str]] = {
    "endpoints": ("endpoint", "id"),
    "rules": ("rule", "id"),
    "contract": ("contract line", "id"),
    "metadata_kinds": ("metadata kind", "id"),
    "forbidden_classes": ("forbidden class", "id"),
    "buckets": ("bucket", "uri"),
    "kms": ("KMS endpoint", "host"),
    "allow": ("allowed host", "host"),
    "deny": ("deny route", "path"),
}

_TYPE_WORDS: dict[str, tuple[str, str]] = {
    "int_type": ("an integer", "write a number such as 443"),
    "int_parsing": ("an integer", "write a number such as 443"),
    "int_from_float": ("an integer", "write a whole number"),
    "string_type": ("a string", "quote the value"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
    "list_type": ("a list", "write a YAML list: [a, b] or one '- item' per line"),
    "dict_type": ("a mapping", "write 'key: value' lines"),
    "model_type": ("a mapping", "write 'key: value' lines"),
    "model_attributes_type": ("a mapping", "write 'key: value' lines"),
}


# libyaml when present (it keeps the same marks), the pure-Python loader otherwise.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class YamlDoc:
    """Plain data plus the line of every path in it."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    key_lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, loc: PathKey, *, key: bool = False) -> int:
        """Line of the deepest part of `loc` the file has (a missing key points at its parent)."""
        probe = tuple(loc)
        while probe:
            if key and probe in self.key_lines:
                return self.key_lines[probe]
            if probe in self.lines:
                return self.lines[probe]
            if probe in self.key_lines:
                return self.key_lines[probe]
            probe = probe[:-1]
        return self.lines.get((), 1)

    def error(self, loc: PathKey, message: str, fix: str, *, key: bool = False) -> AuditorError:
        return AuditorError(message, file=self.file, line=self.line_of(loc, key=key), fix=fix)

    def describe(self, loc: PathKey) -> str:
        """'in endpoint 'api'' for a location, naming the item by its id when it has one."""
        data: Any = self.data
        described = ""
        i = 0
        while i < len(loc):
            part = loc[i]
            if isinstance(data, dict) and part in data:
                nxt = data[part]
                if isinstance(part, str) and part in _ITEM_NOUN and i + 1 < len(loc) and isinstance(loc[i + 1], int):
                    idx = loc[i + 1]
                    noun, id_field = _ITEM_NOUN[part]
                    item = nxt[idx] if isinstance(nxt, list) and idx < len(nxt) else None
                    name = item.get(id_field) if isinstance(item, dict) else item if isinstance(item, str) else None
                    described = f"{noun} '{name}'" if name is not None else f"{noun} #{idx + 1}"
                    data = item
                    i += 2
                    continue
                data = nxt
            elif isinstance(data, list) and isinstance(part, int) and part < len(data):
                data = data[part]
            else:
                break
            i += 1
        if described:
            return f"in {described}"
        if loc and isinstance(loc[0], str):
            return f"in section '{loc[0]}'"
        return "at the top level"


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, doc: YamlDoc) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, bool, float)) or key is None:
                raise doc.error(path, "a mapping key must be a plain word", "write 'name: value'")
            if key in out:
                first = doc.key_lines.get(path + (key,), doc.lines[path])
                raise AuditorError(
                    f"duplicate key '{key}' (first at line {first}) {_partial_where(path, out, doc)}",
                    file=doc.file,
                    line=key_node.start_mark.line + 1,
                    fix="keep one of them",
                )
            child = path + (key,)
            doc.key_lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(loader, value_node, child, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, path + (i,), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _partial_where(path: PathKey, partial: dict[Any, Any], doc: YamlDoc) -> str:
    """Where a mapping is while it is still being read (its id may already be known)."""
    if len(path) >= 2 and isinstance(path[-1], int) and path[-2] in _ITEM_NOUN:
        noun, id_field = _ITEM_NOUN[str(path[-2])]
        name = partial.get(id_field)
        return f"in {noun} '{name}'" if name is not None else f"in {noun} #{path[-1] + 1}"
    return f"in section '{path[0]}'" if path else "at the top level"


def read_yaml(path: Path, display: str | None = None) -> tuple[YamlDoc, bytes]:
    """Parse one YAML file; syntax errors become one-line AuditorErrors. Returns the doc and raw bytes."""
    name = display or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AuditorError("no such rule file", file=name, fix="give the path of a rule pack or overlay YAML file") from None
    except IsADirectoryError:
        raise AuditorError("is a directory, not a rule file", file=name, fix="give the path of a YAML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuditorError(f"not UTF-8 text (byte {exc.start})", file=name, fix="save the file as UTF-8") from None
    doc = YamlDoc(file=name, data=None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise AuditorError("the file is empty", file=name, line=1, fix="write the pack's sections (see rules/gretel-hybrid.yaml)")
        doc.data = _construct(loader, node, (), doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        problem = exc.problem or exc.context or "not valid YAML"
        raise AuditorError(
            f"YAML syntax error: {problem}", file=name, line=line, fix=f"check indentation, colons and quoting at column {col}"
        ) from None
    except yaml.YAMLError as exc:
        raise AuditorError(f"YAML error: {exc}", file=name, line=1, fix="check the file is YAML") from None
    finally:
        loader.dispose()
    if not isinstance(doc.data, dict):
        raise AuditorError("the top level must be a mapping of sections", file=name, line=1, fix="start with 'pack:' or 'overlay:'")
    return doc, raw


def _allowed_keys(model: type[BaseModel], loc: PathKey) -> list[str]:
    """Field names of the model a location points into (walks nested models and lists)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _inner_model(fields[part].annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def validation_error(doc: YamlDoc, exc: ValidationError, model: type[BaseModel]) -> AuditorError:
    """The first pydantic error as one line with file, line and fix."""
    first = exc.errors(include_url=False)[0]
    loc: PathKey = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = first["type"]
    where = doc.describe(loc if loc and isinstance(loc[-1], int) else loc[:-1])
    name = loc[-1] if loc else ""
    field_name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    value = first.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
        fix = f"did you mean '{close[0]}'?" if close else f"remove it; known keys: {', '.join(allowed)}"
        return doc.error(loc, f"unknown key '{name}' {where}", fix, key=True)
    if kind == "missing":
        return doc.error(loc[:-1], f"missing key '{name}' {where}", f"add '{name}: ...'")
    if field_name in ("port", "ports") and kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return doc.error(loc, f"port {value} is out of range {where}", "use a TCP port between 1 and 65535")
    if kind in _TYPE_WORDS:
        what, fix = _TYPE_WORDS[kind]
        return doc.error(loc, f"'{field_name}' must be {what}, got {value!r} {where}", fix)
    if kind == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        return doc.error(loc, f"'{field_name}' is {value!r}, not one of {expected} {where}", f"use one of {expected}")
    if kind in ("string_too_short", "too_short") and field_name in ("host", "hosts", "id", "uri"):
        what = "empty host" if field_name in ("host", "hosts") else f"empty {field_name}"
        return doc.error(loc, f"{what} {where}", "name a host such as api.example.com, or remove the entry")
    if kind in ("too_short", "string_too_short"):
        return doc.error(loc, f"'{field_name}' must not be empty {where}", "give at least one value")
    if kind == "value_error":
        msg = str(first.get("ctx", {}).get("error", first["msg"]))
        text, _, fix = msg.partition(" | fix: ")
        return doc.error(loc, f"{text} {where}", fix or "correct the value")
    return doc.error(loc, f"'{field_name}': {first['msg']} {where}", "correct the value")
