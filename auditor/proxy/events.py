"""Facts of one mitmproxy flow as an `EgressEvent`: names, sizes, timing, TLS.

Pure functions over mitmproxy's flow objects (no hooks, no store), so the live addon
and an importer of saved `.mitm` flows can share them.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from functools import lru_cache

from mitmproxy import connection, http

from auditor.model import Destination, HttpInfo, Source
from auditor.redact import redact_query


@lru_cache(maxsize=4096)
def _redacted_query(query: str) -> str:
    """Agents poll the same few queries over and over: redact each spelling once."""
    return redact_query(query)


def when(ts: float | None) -> datetime:
    return datetime.fromtimestamp(ts, UTC) if ts else datetime.now(UTC)


def source_of(client: connection.Client) -> Source:
    ip, port = (client.peername[0], client.peername[1]) if client.peername else (None, None)
    return Source(ip=_plain_ip(ip), port=port)


def _plain_ip(ip: str | None) -> str | None:
    """`::ffff:127.0.0.1` as the IPv4 it is: the probe sees the IPv4 packet."""
    if ip and ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def alpn_of(conn: connection.Connection) -> str | None:
    return conn.alpn.decode("ascii", "replace") if conn.alpn else None


# --connect-to reroutes, by server connection id: the address the client asked for. The
# proxy records where the job sent a request (that is what the policy judges) and says
# in a note where it delivered it. Events are finished after their connection closes,
# so entries are not dropped at disconnect: the oldest go once there are MAX_REROUTES
# (only test setups reroute). Ids are unique: every proxy in the process may share it.
_asked: OrderedDict[str, tuple[str, int]] = OrderedDict()
MAX_REROUTES = 65536


def reroute(server: connection.Server, asked: tuple[str, int], to: tuple[str, int]) -> None:
    """Send `server`'s connection to `to` instead of `asked` (curl's --connect-to)."""
    server.address = to
    _asked[server.id] = (asked[0], asked[1])
    if len(_asked) > MAX_REROUTES:
        _asked.popitem(last=False)


def asked_address(server: connection.Server) -> tuple[str, int] | None:
    """The address a rerouted connection was opened for (mitmproxy only knows where it went)."""
    return _asked.get(server.id)


def rerouted_to(server: connection.Server) -> str | None:
    """`ADDR:PORT` a --connect-to rule sent this connection to, or None."""
    if server.id not in _asked or not server.address:
        return None
    host, port = server.address[0], server.address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def upstream_of(server: connection.Server) -> tuple[str | None, int | None]:
    """The address actually connected to, else the one asked for; the port is the one the
    client asked for when --connect-to sent the connection elsewhere (`reroute`)."""
    asked = _asked[server.id][1] if server.id in _asked else None
    if server.peername:
        return _plain_ip(server.peername[0]), asked or server.peername[1]
    if server.address:
        return None, asked or server.address[1]
    return None, None


def destination_of(
    flow: http.HTTPFlow, connect_target: tuple[str, int] | None, *, app_protocol: str | None = None
) -> Destination:
    req = flow.request
    ip, port = upstream_of(flow.server_conn)
    named = connect_target[0] if connect_target else req.host
    tls = req.scheme == "https"
    return Destination(
        host=named,
        sni=flow.client_conn.sni,
        http_host=req.host_header,
        ip=ip,
        port=port if port is not None else (connect_target[1] if connect_target else req.port),
        app_protocol=app_protocol or ("h2" if req.http_version == "HTTP/2.0" else req.http_version.lower()),
        tls=tls,
    )


def http_info(flow: http.HTTPFlow) -> HttpInfo:
    """Method, route and redacted query; sizes are filled by whoever saw the bodies."""
    req = flow.request
    path, _, query = req.path.partition("?")
    status = flow.response.status_code if flow.response else None
    end = flow.response.timestamp_end if flow.response and flow.response.timestamp_end else req.timestamp_end
    duration = int((end - req.timestamp_start) * 1_000_000) if end and req.timestamp_start and end >= req.timestamp_start else None
    return HttpInfo(
        method=req.method,
        scheme=req.scheme,
        path=path or "/",
        query=_redacted_query(query) if query else None,
        status=status,
        content_type=req.headers.get("content-type"),
        content_encoding=req.headers.get("content-encoding"),
        alpn=alpn_of(flow.client_conn),
        duration_us=duration,
    )
