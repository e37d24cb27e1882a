"""Where a connection goes and what it said before its first request.

Kept out of addon.py because `mitmdump -s` loads that file without registering it
as a module, and dataclasses need their module registered.
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import exceptions


@dataclass(frozen=True)
class ConnectTo:
    """curl's --connect-to HOST:PORT:ADDR:PORT; an empty HOST or PORT matches any."""

    host: str
    port: int | None
    addr: str
    to_port: int

    @classmethod
    def parse(cls, spec: str) -> ConnectTo:
        parts = _split_connect_to(spec)
        if parts is None:
            raise exceptions.OptionsError(
                f"--connect-to {spec!r} is not HOST:PORT:ADDR:PORT (fix: write e.g. api.gretel.cloud:443:127.0.0.1:8443)"
            )
        host, port, addr, to_port = parts
        try:
            src_port = int(port) if port else None
            dst_port = int(to_port)
        except ValueError:
            raise exceptions.OptionsError(f"--connect-to {spec!r}: ports must be numbers (fix: HOST:443:ADDR:8443)") from None
        if not addr or not 0 < dst_port < 65536 or (src_port is not None and not 0 < src_port < 65536):
            raise exceptions.OptionsError(f"--connect-to {spec!r}: needs an address and ports 1-65535")
        return cls(host.lower().strip("[]"), src_port, addr.strip("[]"), dst_port)

    def matches(self, host: str, port: int) -> bool:
        return (not self.host or self.host == host.lower()) and (self.port is None or self.port == port)


def _split_connect_to(spec: str) -> tuple[str, str, str, str] | None:
    """Split on colons outside [brackets] (IPv6 literals)."""
    parts: list[str] = []
    cur, depth = "", 0
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


@dataclass
class Tunnel:
    """What one client connection told us before any request: CONNECT target, passthrough SNI."""

    target: tuple[str, int] | None = None
    passthrough_sni: str | None = None
    passthrough_reason: str | None = None
