"""Enforce mode's request-body gate: bodies are held whole, up to a cap, before anything goes upstream.

mitmproxy 11.0 gives an addon no per-chunk callback for a body it buffers, and its
`body_size_limit` option applies to responses too (a large download would get a 502)
and answers with an HTML page. So the addon's `next_layer` swaps the class of each new
`HttpLayer` for one whose streams, while the mode is enforce, check request bodies against the enforce cap: a
Content-Length over the cap is refused at the headers, a body of unknown length is
refused the moment its buffered bytes cross the cap. The refusal is the addon's JSON
response, sent before any upstream connection exists; the rest of the body is read
and dropped, never held. Responses and audit mode take mitmproxy's own path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import DropStream, HttpLayer, HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ResponseEndOfMessage
from mitmproxy.proxy.layers.http._hooks import HttpRequestHeadersHook, HttpResponseHeadersHook
from mitmproxy.utils import human

GATED = "auditor_gated"  # flow.metadata key: this request went through a gated stream in enforce mode


class Gate:
    """What the streams ask: is enforce on, how big may a held body be, and what to answer past it."""

    def __init__(self, active: Callable[[], bool], cap: Callable[[], int], refuse: Callable[[http.HTTPFlow, int, bool], http.Response]) -> None:
        self.active = active
        self.cap = cap
        self.refuse = refuse  # (flow, bytes seen or declared, declared) -> the response to send


class GatedStream(HttpStream):
    """An `HttpStream` that refuses, instead of buffering or streaming, a request body over the enforce cap."""

    gate: Gate

    def check_invalid(self, request: bool) -> layer.CommandGenerator[bool]:
        if request and self.gate.active():  # the first look at every request, before any hook
            self.flow.metadata[GATED] = True
        return (yield from super().check_invalid(request))

    def check_body_size(self, request: bool) -> layer.CommandGenerator[bool]:
        if not request or not self.gate.active():
            return (yield from super().check_body_size(request))
        cap = self.gate.cap()
        declared = not self.request_body_buf
        if declared:
            try:
                size = expected_http_body_size(self.flow.request)
            except ValueError:
                size = None
        else:
            size = len(self.request_body_buf)
        if size is not None and size > cap:
            if declared:  # mitmproxy has not announced this flow yet: the addon judges the destination first
                yield HttpRequestHeadersHook(self.flow)
                if (yield from self.check_killed(True)):
                    return True
            yield from self._refuse(size, declared)
            return True
        limit = human.parse_size(self.context.options.body_size_limit)
        if size is not None and limit is not None and size > limit:
            # mitmproxy's own limit still refuses; its stream_large_bodies step never applies to a gated request.
            return (yield from super().check_body_size(request))
        return False

    def _refuse(self, size: int, declared: bool) -> layer.CommandGenerator[None]:
        """Answer now (the addon's response if it set one, else its over-cap refusal), then drop the rest."""
        self.request_body_buf.clear()
        if self.flow.response is None:
            self.flow.response = self.gate.refuse(self.flow, size, declared)
        response = self.flow.response
        response.headers["connection"] = "close"
        self.client_state = self.state_errored  # every later chunk of this body is dropped
        response.timestamp_start = time.time()
        yield HttpResponseHeadersHook(self.flow)
        if (yield from self.check_killed(True)):
            return
        yield from self.send_response()
        yield SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)
        self.flow.live = False
        yield DropStream(self.stream_id)


class GatedHttpLayer(HttpLayer):
    """An `HttpLayer` whose streams are `GatedStream`s."""

    gate: Gate

    def make_stream(self, stream_id: int) -> layer.CommandGenerator[None]:
        stream = GatedStream(self.context.fork(), stream_id)
        stream.gate = self.gate
        self.streams[stream_id] = stream
        yield from self.event_to_child(stream, events.Start())


def gate_layers(root: layer.Layer | None, gate: Gate) -> int:
    """Gate every `HttpLayer` in a freshly chosen layer stack (before it has seen an event)."""
    gated = 0
    seen: set[int] = set()
    current: Any = root
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current) is HttpLayer:
            current.__class__ = GatedHttpLayer
            current.gate = gate
            gated += 1
        elif isinstance(current, GatedHttpLayer):
            current.gate = gate
        current = getattr(current, "child_layer", None)
    return gated
