"""HTTP/1 request trailers end the request as a protocol error, not as a crashed connection.

mitmproxy 11.0's HTTP/1 reader raises `NotImplementedError` when a chunked request body
ends with trailer fields (`0\\r\\nX-Data: ...\\r\\n\\r\\n`). The exception escapes the
connection's layer stack ("mitmproxy has crashed!"): after `requestheaders` no hook runs
for the flow (no `request`, `response` or `error`), the client's connection is left open
and silent, and the auditor records nothing. Trailers can carry anything a header can,
and the proxy can neither inspect nor forward them (mitmproxy's HTTP/1 client cannot send
them), so here they are a protocol error: mitmproxy closes the client connection, cuts an
upstream that already got part of a streamed body, and runs the `error` hook with a
message that contains `TRAILERS_REFUSED`, which the addon records.

An upstream's response with trailers crashed the same way, on the client side: the
request, already sent, was then never recorded, so a destination could hide the
requests it receives. mitmproxy builds that side deep inside its HTTP layer, so
`guard_responses` puts `TrailerSafeHttp1Client` in its place for the whole process (the
proxy's own): response trailers end the response as a protocol error, the client gets
mitmproxy's 502, and the flow's error hook records the request with that error.
"""

from __future__ import annotations

from typing import Any

import h11
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import Http1Client, Http1Server

TRAILERS_REFUSED = "request trailers are not supported by the proxy"
RESPONSE_TRAILERS_REFUSED = "response trailers are not supported by the proxy"
_MAX_NAMES = 200  # characters of trailer field names quoted in the error (values never are)


class _RefuseTrailers:
    """An h11 body reader that raises on trailer fields instead of returning them."""

    def __init__(self, reader: Any, refused: str = TRAILERS_REFUSED) -> None:
        self.reader = reader
        self.refused = refused

    def __call__(self, buf: Any) -> Any:
        return self._check(self.reader(buf))

    def read_eof(self) -> Any:
        return self._check(self.reader.read_eof())

    def _check(self, event: Any) -> Any:
        if isinstance(event, h11.EndOfMessage) and event.headers:
            names = ", ".join(sorted({bytes(name).decode("latin-1").lower() for name, _ in event.headers}))
            raise h11.RemoteProtocolError(f"{self.refused} (trailer fields: {names[:_MAX_NAMES]}); connection closed")
        return event


class TrailerSafeHttp1Server(Http1Server):
    """mitmproxy's HTTP/1 server side, with request trailers refused (see the module docstring)."""

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not isinstance(self.body_reader, _RefuseTrailers):  # a new reader for every request
            self.body_reader = _RefuseTrailers(self.body_reader)
        yield from super().read_body(event)


class TrailerSafeHttp1Client(Http1Client):
    """mitmproxy's HTTP/1 client side, with response trailers refused (see the module docstring)."""

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not isinstance(self.body_reader, _RefuseTrailers):
            self.body_reader = _RefuseTrailers(self.body_reader, RESPONSE_TRAILERS_REFUSED)
        yield from super().read_body(event)


def guard_responses() -> None:
    """Every upstream HTTP/1 connection this process opens from now on refuses response trailers."""
    http_layers.Http1Client = TrailerSafeHttp1Client  # type: ignore[misc]
