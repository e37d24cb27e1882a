"""Enforce mode's request-body gate: bodies are held whole, up to a cap, before anything goes upstream.

mitmproxy 11.0 gives an addon no per-chunk callback for a body it buffers, and its
`body_size_limit` option applies to responses too (a large download would get a 502)
and answers with an HTML page. So the addon's `next_layer` swaps the class of each new
`HttpLayer` for one whose streams, while the mode is enforce, check request bodies against the enforce cap: a
Content-Length over the cap is refused at the headers, a body of unknown length is
refused the moment its buffered bytes cross the cap. The refusal is the addon's JSON
response, sent before any upstream connection exists; the rest of the body is read
and dropped, never held. Responses and audit mode take mitmproxy's own path.

The same layer, in both modes, reads HTTP/1 requests with `TrailerSafeHttp1Server`
(trailers end the request as a protocol error, see `h1.py`), marks a request whose head
went upstream before its body was whole (FORWARDED), and reuses an upstream connection
that --connect-to rerouted (see `GatedHttpLayer.get_connection`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.connection import Connection, Server
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import DropStream, GetHttpConnection, GetHttpConnectionCompleted, HttpLayer, HttpStream, SendHttp, is_h3_alpn
from mitmproxy.proxy.layers.http._events import ResponseEndOfMessage
from mitmproxy.proxy.layers.http._hooks import HttpRequestHeadersHook, HttpResponseHeadersHook
from mitmproxy.utils import human

from auditor.proxy.events import asked_address
from auditor.proxy.h1 import TrailerSafeHttp1Server

GATED = "auditor_gated"  # flow.metadata key: this request went through a gated stream in enforce mode
FORWARDED = "auditor_head_forwarded"  # flow.metadata key: the request head went upstream before the body was whole (streamed)


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

    def start_request_stream(self) -> layer.CommandGenerator[None]:
        """mitmproxy sends a streamed request's head upstream here; mark it, so a flow cut
        before its body ends can say that part of it reached the upstream."""
        yield from super().start_request_stream()
        if self.client_state == self.state_stream_request_body:
            self.flow.metadata[FORWARDED] = True

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
    """An `HttpLayer` whose streams are `GatedStream`s, whose HTTP/1 reader refuses request
    trailers, and which reuses upstream connections that --connect-to rerouted."""

    gate: Gate

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        alpn = self.context.client.alpn
        if isinstance(event, events.Start) and self.context.client not in self.connections and alpn != b"h2" and not is_h3_alpn(alpn):
            # where HttpLayer would make its Http1Server; it keeps one already set (as for client playback)
            self.connections[self.context.client] = TrailerSafeHttp1Server(self.context.fork())
        yield from super()._handle_event(event)

    def make_stream(self, stream_id: int) -> layer.CommandGenerator[None]:
        stream = GatedStream(self.context.fork(), stream_id)
        stream.gate = self.gate
        self.streams[stream_id] = stream
        yield from self.event_to_child(stream, events.Start())

    def get_connection(self, event: GetHttpConnection, *, reuse: bool = True) -> layer.CommandGenerator[None]:
        """Reuse an open upstream connection that --connect-to rerouted.

        mitmproxy reuses a connection only if its address is the one the request asks
        for, and the addon's `server_connect` rewrites the address of a rerouted one. With
        lazy connections (enforce mode) every request on a keep-alive client connection
        then opened another upstream connection and kept the old ones open; mitmproxy
        allows five per address and client, so the sixth request waited for a free one
        forever: no response, no hook, no event.
        """
        if reuse:
            found = self._rerouted_connection(event)
            if found is not None:
                stream = self.command_sources.pop(event)
                yield from self.event_to_child(stream, GetHttpConnectionCompleted(event, (found, None)))
                return
        yield from super().get_connection(event, reuse=reuse)

    def _rerouted_connection(self, event: GetHttpConnection) -> Connection | None:
        """An open, established connection rerouted from the address `event` asks for, matched as mitmproxy matches its own."""
        h2_client = self.context.client.alpn == b"h2"
        for conn in self.connections:
            if (
                isinstance(conn, Server)
                and conn.address != event.address  # mitmproxy's own match covers the rest
                and asked_address(conn) == tuple(event.address)
                and conn.connected
                and not conn.error
                and conn not in self.waiting_for_establishment
                and conn.tls == event.tls
                and conn.via == event.via
                and conn.transport_protocol == event.transport_protocol
                and not (h2_client and conn.alpn != b"h2")  # HTTP/2 to HTTP/1: one request per connection, as mitmproxy does
            ):
                return conn
        return None


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
