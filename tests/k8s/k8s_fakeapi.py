"""An in-process Kubernetes API server for tests: the real `kubernetes` client talks to it
over HTTP on 127.0.0.1.

It speaks what the auditor uses: list with resourceVersion, watch event streams (chunked,
with timeoutSeconds), 410 Gone for expired resource versions (HTTP 410 on a list, an
ERROR event on a watch), label and field selectors, for pods, nodes, configmaps,
secrets, networkpolicies, daemonsets and servicecidrs. Every request is logged so a test can
see the relist after a 410.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# resource -> (api prefix, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "pods": ("/api/v1", "Pod", True),
    "nodes": ("/api/v1", "Node", False),
    "configmaps": ("/api/v1", "ConfigMap", True),
    "secrets": ("/api/v1", "Secret", True),
    "networkpolicies": ("/apis/networking.k8s.io/v1", "NetworkPolicy", True),
    "servicecidrs": ("/apis/networking.k8s.io/v1", "ServiceCIDR", False),
    "daemonsets": ("/apis/apps/v1", "DaemonSet", True),
}
API_VERSION = {"/api/v1": "v1", "/apis/networking.k8s.io/v1": "networking.k8s.io/v1", "/apis/apps/v1": "apps/v1"}


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses: 'a in (x,y),b=c' -> ['a in (x,y)', 'b=c']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def label_match(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for req in _split_selector(selector):
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\((.*)\)", req)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            has = labels.get(m.group(1)) in values
            if (m.group(2) == "in") != has:
                return False
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w./-]*)", req)
        if m:
            equal = labels.get(m.group(1)) == m.group(3)
            if (m.group(2) == "!=") == equal:
                return False
            continue
        if req.startswith("!"):
            if req[1:] in labels:
                return False
            continue
        if req not in labels:
            return False
    return True


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def field_match(selector: str | None, obj: dict[str, Any]) -> bool:
    if not selector:
        return True
    for req in selector.split(","):
        m = re.fullmatch(r"([\w.]+)\s*(!=|==|=)\s*(.*)", req.strip())
        if not m:
            raise ValueError(f"bad field selector {req!r}")
        equal = _field(obj, m.group(1)) == m.group(3)
        if (m.group(2) == "!=") == equal:
            return False
    return True


@dataclass
class _WatchSession:
    expired: threading.Event = field(default_factory=threading.Event)


class FakeCluster:
    """Objects with a global resourceVersion and an event log the watches replay."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.log: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, type, resource, object
        self.oldest_rv = 0  # watches from before this get 410 Gone
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.sessions: list[_WatchSession] = []
        self.disabled: set[str] = set()  # resources answered 404 (e.g. servicecidrs on old clusters)
        self.stopping = False

    # --- mutation ------------------------------------------------------------------------

    def _record(self, kind: str, resource: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.log.append((self.rv, kind, resource, copy.deepcopy(obj)))
        self.cond.notify_all()

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        ns = meta.get("namespace", "") if RESOURCES[resource][2] else ""
        key = (resource, ns, meta["name"])
        with self.cond:
            kind = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self._record(kind, resource, obj)
        return obj

    def delete(self, resource: str, name: str, namespace: str = "") -> None:
        with self.cond:
            obj = self.objects.pop((resource, namespace, name))
            self._record("DELETED", resource, obj)

    def load(self, fixtures: dict[str, list[dict[str, Any]]]) -> None:
        for resource, items in fixtures.items():
            for item in items:
                self.put(resource, item)

    def expire(self) -> None:
        """Compact history: every current watch gets ERROR 410, and old versions are Gone."""
        with self.cond:
            self.oldest_rv = self.rv + 1
            for s in self.sessions:
                s.expired.set()
            self.cond.notify_all()

    def count(self, path_fragment: str, *, watch: bool | None = None) -> int:
        with self.cond:
            return sum(
                1 for p, q in self.requests
                if path_fragment in p and (watch is None or (q.get("watch") == ["true"]) == watch)
            )


def _matches(resource: str, obj: dict[str, Any], ns: str | None, q: dict[str, list[str]]) -> bool:
    meta = obj.get("metadata", {})
    if ns is not None and meta.get("namespace") != ns:
        return False
    return label_match(q.get("labelSelector", [None])[0], meta.get("labels") or {}) and field_match(
        q.get("fieldSelector", [None])[0], obj
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK stall
    cluster: FakeCluster

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send_json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                               "message": message, "code": code})

    def _route(self, path: str) -> tuple[str, str, str | None, str | None] | None:
        """(prefix, resource, namespace, name) for a request path."""
        for prefix in API_VERSION:
            if not path.startswith(prefix + "/"):
                continue
            parts = path[len(prefix) + 1:].strip("/").split("/")
            if parts[0] == "namespaces" and len(parts) >= 3:
                ns, resource, name = parts[1], parts[2], parts[3] if len(parts) > 3 else None
            else:
                ns, resource, name = None, parts[0], parts[1] if len(parts) > 1 else None
            if resource in RESOURCES and RESOURCES[resource][0] == prefix:
                return prefix, resource, ns, name
        return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        c = self.cluster
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        with c.cond:
            c.requests.append((url.path, q))
        route = self._route(url.path)
        if route is None:
            self._status(404, "NotFound", f"the server could not find the requested resource {url.path}")
            return
        prefix, resource, ns, name = route
        if resource in c.disabled:
            self._status(404, "NotFound", f"the server could not find the requested resource {resource}")
            return
        kind = RESOURCES[resource][1]
        if name is not None:
            with c.cond:
                obj = c.objects.get((resource, ns or "", name))
            if obj is None:
                self._status(404, "NotFound", f'{resource} "{name}" not found')
            else:
                self._send_json(200, dict(obj, kind=kind, apiVersion=API_VERSION[prefix]))
            return
        try:
            if q.get("watch") == ["true"]:
                self._watch(resource, ns, q)
                return
            with c.cond:
                items = [copy.deepcopy(o) for (r, _, _), o in sorted(c.objects.items()) if r == resource and _matches(resource, o, ns, q)]
                rv = c.rv
        except ValueError as exc:
            self._status(400, "BadRequest", str(exc))
            return
        self._send_json(200, {"kind": f"{kind}List", "apiVersion": API_VERSION[prefix], "metadata": {"resourceVersion": str(rv)}, "items": items})

    def _chunk(self, data: dict[str, Any]) -> None:
        line = (json.dumps(data) + "\n").encode()
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    def _watch(self, resource: str, ns: str | None, q: dict[str, list[str]]) -> None:
        c = self.cluster
        since = int(q.get("resourceVersion", ["0"])[0] or 0)
        timeout = float(q.get("timeoutSeconds", ["30"])[0])
        session = _WatchSession()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "message": "too old resource version", "reason": "Expired", "code": 410}}
        deadline = time.monotonic() + timeout
        with c.cond:
            c.sessions.append(session)
        try:
            with c.cond:
                if since and since < c.oldest_rv:
                    pending: list[dict[str, Any]] | None = None
                else:
                    pending = []
            if pending is None:
                self._chunk(gone)
            else:
                cursor = since
                while True:
                    with c.cond:
                        while not (c.stopping or session.expired.is_set() or any(rv > cursor for rv, *_ in c.log[-50:])):
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            c.cond.wait(left)
                        if c.stopping:
                            self.close_connection = True  # cut the stream mid-way, as a dying API server does
                            return
                        expired = session.expired.is_set()
                        batch = [(rv, t, o) for rv, t, r, o in c.log if rv > cursor and r == resource]
                        cursor = c.rv
                    if expired:
                        self._chunk(gone)
                        break
                    for _rv, typ, obj in batch:
                        if _matches(resource, obj, ns, q):
                            self._chunk({"type": typ, "object": obj})
                    if time.monotonic() >= deadline:
                        break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            with c.cond:
                c.sessions.remove(session)


class FakeApiServer:
    """Serves a FakeCluster on 127.0.0.1; stop() and start() again on the same port is an outage."""

    def __init__(self, cluster: FakeCluster | None = None, port: int = 0) -> None:
        self.cluster = cluster or FakeCluster()
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        handler = type("Handler", (_Handler,), {"cluster": self.cluster})
        self.cluster.stopping = False
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        with self.cluster.cond:
            self.cluster.stopping = True
            self.cluster.cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig the real client loads like any other."""
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": "gretel-hybrid"}}],
        }
        path.write_text(json.dumps(doc))
        return path
