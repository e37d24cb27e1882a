"""The Gretel API routes a hybrid deployment calls, as pydantic models whose fields are
tagged with the metadata kind they carry (the 13 kinds of the architecture page).

Sources: `../shared/gretel-hybrid-traffic.md`. Routes marked [inf] are the status and
log shipping calls that are not in public code; their paths are this auditor's
inference and are the ones the simulator uses.

Most models also have a msgspec mirror (`typed`): a plain body that it decodes surely
fits, so the engine reads its kinds off the decoded Structs without walking it.

A body that validates against its route is metadata with the kinds of the fields it
holds. Fields the model does not know are `extra-field` findings; fields tagged
`free_text` (msg, ctx, error_msg, traceback, stack_trace, description) get every
detector, since that is where record values slip out.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qsl

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

KINDS: tuple[str, ...] = (
    "project",
    "model-config",
    "model-id",
    "model-status",
    "model-run-id",
    "model-run-status",
    "workflow-ids",
    "workflow-status",
    "creator-email",
    "runner-email",
    "model-logs",
    "workflow-logs",
    "file-names",
)

RUN_KINDS = {"model-id": "model-run-id", "model-status": "model-run-status"}  # what a model's kinds are on a model run

FREE_TEXT_FIELDS = frozenset({"msg", "ctx", "error_msg", "traceback", "stack_trace", "description"})


def tag(*kinds: str, free_text: bool = False, opaque: bool = False, config: bool = False, default: Any = None) -> Any:
    """A field carrying these metadata kinds. `opaque`: ciphertext by contract (no entropy
    alarm); `config`: an open config tree whose `data_source` values are checked."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown metadata kind {k!r}")
    return Field(default, json_schema_extra={"kinds": list(kinds), "free_text": free_text, "opaque": opaque, "config": config})


class Body(BaseModel):
    """Extra fields are kept (not rejected) so they can be reported, one finding each."""

    model_config = ConfigDict(extra="allow", strict=False)


Id = Union[str, int]


# --- agent -------------------------------------------------------------------


class InviteAccept(Body):
    """PATCH /users/me/invites/{id}: normally empty; an explicit acceptance is tolerated."""

    status: str | None = tag("project")


class StatusHistoryItem(Body):
    status: str = tag("model-status")
    ts: str | None = tag("model-status")
    timestamp: str | None = tag("model-status")


class ModelStatusUpdate(Body):
    """PATCH /projects/models?uid=&type=train|run [src for uid/status; the rest inf]."""

    uid: str = tag("model-id")
    status: str = tag("model-status")
    status_history: list[StatusHistoryItem] | None = tag("model-status")
    last_active_hb: str | int | None = tag("model-status")
    error_msg: str | None = tag("model-logs", free_text=True)
    traceback: str | None = tag("model-logs", free_text=True)
    container_image_version: str | None = tag("model-status")


# --- log lines -----------------------------------------------------------------

Stage = Literal["pre", "train", "run", "post", "pre_run"]


class ModelLogLine(Body):
    """`{"ts":…,"msg":…,"ctx":{counts},"seq":3,"stage":"pre"}` [src]."""

    ts: str = tag("model-logs")
    msg: str = tag("model-logs", free_text=True)
    ctx: dict[str, Any] | None = tag("model-logs", free_text=True)
    seq: int | None = tag("model-logs")
    stage: Stage | None = tag("model-logs")
    level: str | None = tag("model-logs")


class ModelLogBatch(Body):
    """[inf] a batch of model log lines."""

    uid: str | None = tag("model-id")
    logs: list[ModelLogLine] = tag("model-logs")


class WorkflowLogLine(Body):
    """`{"ts": …, "level": "info", "msg": …, "marker": …}` [src]."""

    ts: str = tag("workflow-logs")
    level: str | None = tag("workflow-logs")
    msg: str = tag("workflow-logs", free_text=True)
    marker: str | int | bool | None = tag("workflow-logs")
    ctx: dict[str, Any] | None = tag("workflow-logs", free_text=True)


class WorkflowLogBatch(Body):
    """[inf] a batch of workflow task log lines."""

    logs: list[WorkflowLogLine] = tag("workflow-logs")


# --- SDK -------------------------------------------------------------------------


class ProjectCreate(Body):
    name: str = tag("project")
    display_name: str | None = tag("project")
    description: str | None = tag("project", free_text=True)
    runner_mode: str | None = tag("project")
    cluster_guid: str | None = tag("project")


class ProjectInvite(Body):
    """The invited user is the one who creates and runs models: their email is allowed."""

    email: str = tag("creator-email", "runner-email")
    level: str | int | None = tag("project")


class ModelConfig(Body):
    """POST /projects/{id}/models: the model config itself [src]."""

    schema_version: str | int | None = tag("model-config")
    name: str | None = tag("model-config")
    models: list[dict[str, Any]] = tag("model-config", config=True)


class WorkflowConfig(Body):
    """Workflow configs: name, version, inputs, globals, steps [src]."""

    name: str | None = tag("workflow-ids")
    version: str | int | None = tag("model-config")
    inputs: dict[str, Any] | None = tag("model-config", "file-names", config=True)
    globals: dict[str, Any] | None = tag("model-config", config=True)
    steps: list[dict[str, Any]] | None = tag("model-config", config=True)


class WorkflowCreate(Body):
    name: str | None = tag("workflow-ids")
    project_id: Id | None = tag("project")
    config: dict[str, Any] | None = tag("model-config", config=True)
    config_text: str | None = tag("model-config", config=True)
    runner_mode: str | None = tag("model-config")


class WorkflowRunCreate(Body):
    workflow_id: Id = tag("workflow-ids")
    name: str | None = tag("workflow-ids")
    config: dict[str, Any] | None = tag("model-config", config=True)
    config_text: str | None = tag("model-config", config=True)


class Connection(Body):
    """Credentials travel only as `encrypted_credentials`: ciphertext the customer's KMS opens."""

    project_id: Id | None = tag("project")
    name: str | None = tag("file-names")
    type: str | None = tag("file-names")
    config: dict[str, Any] | None = tag("file-names", config=True)
    connection_target_type: str | None = tag("file-names")
    auth_strategy: str | None = tag("file-names")
    encrypted_credentials: str | dict[str, Any] | None = tag(opaque=True)


class WorkflowRunStatus(Body):
    """[inf] PATCH /v1/workflows/runs/{run}."""

    status: str = tag("workflow-status")
    error_msg: str | None = tag("workflow-logs", free_text=True)


class WorkflowTaskStatus(Body):
    """[inf] PATCH /v1/workflows/runs/{run}/tasks/{task}: the task fields the API exposes."""

    status: str = tag("workflow-status")
    action_name: str | None = tag("workflow-ids")
    action_type: str | None = tag("workflow-ids")
    error_msg: str | None = tag("workflow-logs", free_text=True)
    error_code: str | int | None = tag("workflow-logs")
    stack_trace: str | None = tag("workflow-logs", free_text=True)
    execution_summary: dict[str, Any] | None = tag("workflow-logs", free_text=True)
    log_location: str | None = tag("file-names")


# --- the route table ---------------------------------------------------------------

BodyKind = Literal["none", "json", "model-logs", "workflow-logs"]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    body: type[Body] | None = None  # None: the call carries no body
    kinds: tuple[str, ...] = ()  # what the path and query themselves carry
    forbidden: bool = False
    logs: BodyKind = "json"
    inferred: bool = False
    host: str | None = None  # only on this host (None: any Gretel API host)
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(self.template)).replace(r"/\*", "/.*")
        object.__setattr__(self, "regex", re.compile(f"^{pattern}/?$"))

    @property
    def name(self) -> str:
        return f"{self.method} {self.host or ''}{self.template}"


ROUTES: tuple[Route, ...] = (
    Route("GET", "/users/me/billing"),
    Route("GET", "/users/me/invites"),
    Route("PATCH", "/users/me/invites/{invite_id}", InviteAccept, ("project",)),
    Route("GET", "/projects/{project}", kinds=("project",)),
    Route("POST", "/jobs/receive_one", kinds=("project",)),
    Route("PATCH", "/projects/models", ModelStatusUpdate),
    Route("GET", "/opt/containers/get_login"),
    Route("POST", "/projects", ProjectCreate, ("project",)),
    Route("POST", "/projects/{project}/invites", ProjectInvite, ("project",)),
    Route("POST", "/projects/{project}/models", ModelConfig, ("project", "model-config")),
    Route("POST", "/projects/{project}/artifacts", forbidden=True),
    Route("POST", "/v1/workflows", WorkflowCreate, ("workflow-ids",)),
    Route("POST", "/v1/workflows/runs", WorkflowRunCreate, ("workflow-ids",)),
    Route("POST", "/v1/connections", Connection),
    Route("PATCH", "/v1/connections/{connection}", Connection),
    Route("GET", "/v1/connections/{connection}/credentials"),
    # artifacts.gretel.cloud hands out presigned URLs for base model artifacts: reads only
    Route("GET", "/*", host="artifacts.gretel.cloud"),
    Route("HEAD", "/*", host="artifacts.gretel.cloud"),
    Route("GET", "/v1/logs/workflowruns/{run}/actions/{action}/tasks/{task}", kinds=("workflow-ids",)),
    Route("POST", "/projects/models/logs", ModelLogBatch, ("model-logs",), logs="model-logs", inferred=True),
    Route("PATCH", "/v1/workflows/runs/{run}", WorkflowRunStatus, ("workflow-ids",), inferred=True),
    Route("PATCH", "/v1/workflows/runs/{run}/tasks/{task}", WorkflowTaskStatus, ("workflow-ids",), inferred=True),
    Route("POST", "/v1/workflows/runs/{run}/tasks/{task}/logs", WorkflowLogBatch, ("workflow-ids", "workflow-logs"), logs="workflow-logs", inferred=True),
)

GRETEL_DOMAINS = ("gretel.cloud", "gretel.ai")
_BY_NAME = {route.name: route for route in ROUTES}


@functools.lru_cache(maxsize=1024)
def is_gretel_host(host: str | None) -> bool:
    """Cached: a sensor sees the same few hosts all day."""
    if not host:
        return False
    h = host.lower().rstrip(".").rsplit(":", 1)[0] if host.count(":") == 1 else host.lower().rstrip(".")
    return any(h == d or h.endswith("." + d) for d in GRETEL_DOMAINS)


def split_route(route: str) -> tuple[str, str]:
    """`'POST /v1/workflows'` -> ("POST", "/v1/workflows"); a bad one raises ValueError."""
    parts = route.split(None, 1)
    if len(parts) != 2 or not parts[1].startswith("/"):
        raise ValueError(f"route {route!r} is not 'METHOD /path'")
    return parts[0].upper(), parts[1]


def match(method: str | None, path: str | None, host: str | None = None) -> Route | None:
    """The route a request is on, by method, path (query ignored) and, for host-bound routes, host."""
    if not method or path is None:
        return None
    h = host.lower().rstrip(".").rsplit(":", 1)[0] if host and host.count(":") == 1 else (host or "").lower().rstrip(".")
    return _match(method.upper(), path.split("?", 1)[0].split("#", 1)[0] or "/", h)


@functools.lru_cache(maxsize=4096)
def _match(m: str, bare: str, host: str) -> Route | None:
    for route in ROUTES:
        if route.method == m and (route.host is None or route.host == host) and route.regex.match(bare):
            return route
    return None


def query_of(path: str | None) -> list[tuple[str, str]]:
    if not path or "?" not in path:
        return []
    query = path.split("?", 1)[1].split("#", 1)[0]
    if "%" in query or "+" in query or query.count("&") >= 999:
        return parse_qsl(query, keep_blank_values=True, max_num_fields=1000)
    # nothing to unquote: the same pairs parse_qsl gives, without its per-field Python work
    return [(k, v) for k, _, v in (f.partition("=") for f in query.split("&") if f)]


# --- field specs, computed once per model ---------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    kinds: tuple[str, ...]
    free_text: bool
    opaque: bool
    config: bool
    model: type[Body] | None  # nested model (also for list[Model])
    # value classes that surely validate (a list or dict further by its items); None: ask pydantic
    accepts: frozenset[type] | None = None
    literals: frozenset[str] = frozenset()  # strings that surely validate (a Literal field)


def _accepts(annotation: Any) -> tuple[frozenset[type], frozenset[str]] | None:
    """What surely validates against an annotation, judged by a value's exact class: str
    for str, int for int (not bool), a dict for a model or dict[str, Any], a list for a
    list of models (whose items the walk checks as models), a listed string for a
    Literal. None when the annotation is anything else: then pydantic decides."""
    origin = typing.get_origin(annotation)
    if annotation in (str, int, bool, type(None)):
        return frozenset({annotation}), frozenset()
    if isinstance(annotation, type) and issubclass(annotation, Body):
        return frozenset({dict}), frozenset()
    if origin is Literal:
        args = typing.get_args(annotation)
        return (frozenset(), frozenset(args)) if all(isinstance(a, str) for a in args) else None
    if origin is dict and typing.get_args(annotation) == (str, Any):
        return frozenset({dict}), frozenset()
    if origin is list:
        (item,) = typing.get_args(annotation)
        return (frozenset({list}), frozenset()) if isinstance(item, type) and issubclass(item, Body) else None
    if origin in (Union, types.UnionType):
        classes: set[type] = set()
        literals: set[str] = set()
        for arg in typing.get_args(annotation):
            part = _accepts(arg)
            if part is None:
                return None
            classes |= part[0]
            literals |= part[1]
        return frozenset(classes), frozenset(literals)
    return None


def _nested(annotation: Any) -> type[Body] | None:
    if isinstance(annotation, type) and issubclass(annotation, Body):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested(arg)
            if found is not None:
                return found
    return None


_SPECS: dict[type[Body], dict[str, FieldSpec]] = {}


def specs(model: type[Body]) -> dict[str, FieldSpec]:
    """Tags of each field of a model (cached)."""
    cached = _SPECS.get(model)
    if cached is not None:
        return cached
    out: dict[str, FieldSpec] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        kinds = extra.get("kinds") or []
        sure = _accepts(info.annotation)
        out[name] = FieldSpec(
            kinds=tuple(str(k) for k in kinds) if isinstance(kinds, list) else (),
            free_text=bool(extra.get("free_text")),
            opaque=bool(extra.get("opaque")),
            config=bool(extra.get("config")),
            model=_nested(info.annotation),
            accepts=sure[0] if sure is not None else None,
            literals=sure[1] if sure is not None else frozenset(),
        )
    _SPECS[model] = out
    return out


def validate(model: type[Body], doc: Any) -> list[str]:
    """Schema errors as short lines (`status: Input should be a valid string`); [] when it fits."""
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        return [f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()[:5]]
    return []


@functools.lru_cache(maxsize=1024)
def kind_paths(route_name: str, kind: str) -> tuple[str, ...]:
    """Where a route's request carries a metadata kind, by its schema: `url` when its path
    or query does, `body.<field>` (`[]` for list items) for each body field tagged with
    it (nested fields only under a field not tagged so itself). For the report, which
    keeps each request's route and kinds but not its body; () for a route not in the table."""
    route = _BY_NAME.get(route_name)
    if route is None:
        return ()
    wanted = {kind} | {k for k, run in RUN_KINDS.items() if run == kind}
    paths = ["url"] if wanted & set(route.kinds) else []
    if route.body is not None:
        _tagged_paths(route.body, "body", frozenset(wanted), paths, set())
    return tuple(paths)


def _tagged_paths(model: type[Body], prefix: str, wanted: frozenset[str], out: list[str], seen: set[type[Body]]) -> None:
    if model in seen:  # a model that holds itself
        return
    seen = seen | {model}
    for name, spec in specs(model).items():
        path = f"{prefix}.{name}{'[]' if _is_list(model.model_fields[name].annotation) else ''}"
        if wanted & set(spec.kinds):
            out.append(path)
        elif spec.model is not None:
            _tagged_paths(spec.model, path, wanted, out, seen)


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    return origin in (Union, types.UnionType) and any(_is_list(arg) for arg in typing.get_args(annotation))


# --- typed decoding: one C pass that parses and validates a plain body --------------------

_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # no wider than what orjson reads as an int (bigger ones as floats)
_Scalar = Union[str, _Int, float, bool, None]


@dataclass(frozen=True)
class Typed:
    """A route model mirrored as msgspec Structs (unknown fields forbidden, every type no
    wider than what pydantic accepts in lax mode), so that a body the decoder accepts
    surely validates. `fields` says where its metadata kinds come from: (name, kinds,
    the item's Typed when its own fields carry kinds the field does not)."""

    decoder: msgspec.json.Decoder[Any]
    fields: tuple[tuple[str, tuple[str, ...], "Typed | None"], ...]
    levels: int  # container levels a decoded body can hold (the body itself is one)
    struct: type[msgspec.Struct]


def _mirror(annotation: Any) -> tuple[Any, int, "Typed | None"] | None:
    """(msgspec type, container levels, nested Typed) for an annotation, or None when it
    has no mirror this module vouches for. A dict[str, Any] is narrowed to scalar values:
    a body with more in it is decoded the ordinary way."""
    origin = typing.get_origin(annotation)
    if annotation in (str, bool, type(None), float):
        return annotation, 0, None
    if annotation is int:
        return _Int, 0, None
    if isinstance(annotation, type) and issubclass(annotation, Body):
        inner = typed(annotation)
        return (inner.struct, inner.levels, inner) if inner is not None else None
    if origin is Literal:
        return (annotation, 0, None) if all(isinstance(a, str) for a in typing.get_args(annotation)) else None
    if origin is dict and typing.get_args(annotation) == (str, Any):
        return dict[str, _Scalar], 1, None
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not (isinstance(item, type) and issubclass(item, Body)):
            return None
        inner = typed(item)
        return (list[inner.struct], 1 + inner.levels, inner) if inner is not None else None  # type: ignore[name-defined]
    if origin in (Union, types.UnionType):
        parts = [_mirror(a) for a in typing.get_args(annotation)]
        if any(p is None for p in parts):
            return None
        nested = [p[2] for p in parts if p is not None and p[2] is not None]
        if len(nested) > 1:
            return None
        return Union[tuple(p[0] for p in parts if p is not None)], max(p[1] for p in parts if p is not None), (nested[0] if nested else None)
    return None


_TYPED: dict[type[Body], Typed | None] = {}


def typed(model: type[Body]) -> Typed | None:
    """The model's typed mirror (cached); None for a model with a config field (its YAML
    and data_source checks need the ordinary walk), a free-text field holding a list (the
    walk looks for record arrays there) or a type without a mirror."""
    if model in _TYPED:
        return _TYPED[model]
    _TYPED[model] = None  # a model that holds itself has no mirror
    out: Typed | None = None
    spec = specs(model)
    fields: list[tuple[str, Any, Any]] = []
    sources: list[tuple[str, tuple[str, ...], Typed | None]] = []
    levels = 1
    for name, info in model.model_fields.items():
        m = _mirror(info.annotation)
        if m is None or spec[name].config or info.alias is not None or (spec[name].free_text and m[2] is not None):
            break
        if not info.is_required() and (info.default is not None or info.default_factory is not None):
            break  # an absent field must decode as None: typed_kinds takes None for "not there"
        fields.append((name, m[0], msgspec.NODEFAULT if info.is_required() else info.default))
        inner = m[2]
        needs = inner is not None and not set(_all_kinds(inner)) <= set(spec[name].kinds)
        sources.append((name, spec[name].kinds, inner if needs else None))
        levels = max(levels, 1 + m[1])
    else:
        try:
            struct = msgspec.defstruct(f"{model.__name__}Struct", fields, kw_only=True, forbid_unknown_fields=True)
            out = Typed(msgspec.json.Decoder(struct), tuple(sources), levels, struct)
        except TypeError:  # a union msgspec cannot decode (two str-like members, say)
            out = None
    _TYPED[model] = out
    return out


def _all_kinds(t: Typed) -> set[str]:
    """Every kind a value of `t` can add, its items' included."""
    out: set[str] = set()
    for _, kinds, inner in t.fields:
        out.update(kinds)
        if inner is not None:
            out |= _all_kinds(inner)
    return out


def typed_kinds(t: Typed, value: Any, out: set[str]) -> None:
    """The kinds the walk adds for a decoded value: each field present and not null adds
    its own; items are visited only where they can add more."""
    for name, kinds, inner in t.fields:
        v = getattr(value, name)
        if v is None:
            continue
        out.update(kinds)
        if inner is not None:
            for item in v if isinstance(v, list) else (v,):
                if isinstance(item, msgspec.Struct):
                    typed_kinds(inner, item, out)


# --- data_source ---------------------------------------------------------------------

_STORAGE_URI = re.compile(r"^(s3|s3a|gs|gcs|azure|abfs|abfss|wasbs|az)://[^\s]+$", re.I)
_FILE_NAME = re.compile(r"^[\w.\-/ @+~%]{1,1024}$")


def data_source_ok(value: Any) -> bool:
    """A customer storage URI or a file name (or a list of them); anything else is inline data."""
    if isinstance(value, str):
        v = value.strip()
        return bool(v) and "\n" not in v and (bool(_STORAGE_URI.match(v)) or bool(_FILE_NAME.match(v)))
    if isinstance(value, list):
        return len(value) <= 1000 and all(isinstance(v, str) and data_source_ok(v) for v in value)
    return value is None


DATA_SOURCE_KEYS = frozenset({"data_source", "ref_data", "data_sources"})
