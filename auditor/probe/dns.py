"""DNS provenance and DNS exfiltration signs.

Provenance: every answer a client received (name, CNAME chain, time, TTL) is
kept per client and address, so a later connection to that address can say which
lookup produced it, and a connection no lookup explains is `direct-ip`.

Exfiltration signs: tunnelling (long or high-entropy labels, many unique
subdomains or much volume under one parent, NULL and bursts of TXT queries),
resolvers other than the cluster's, and the well-known DoH/DoT resolvers.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from pydantic import BaseModel

# Public DoH/DoT resolvers by name and address: a pod talking to one can resolve
# (and send) anything without the cluster's DNS seeing it.
DOH_HOSTS = frozenset(
    {
        "dns.google", "dns.google.com", "8888.google", "cloudflare-dns.com", "mozilla.cloudflare-dns.com",
        "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com", "security.cloudflare-dns.com",
        "family.cloudflare-dns.com", "chrome.cloudflare-dns.com", "dns.quad9.net", "dns9.quad9.net",
        "dns10.quad9.net", "dns11.quad9.net", "doh.opendns.com", "dns.opendns.com", "doh.familyshield.opendns.com",
        "dns.nextdns.io", "doh.cleanbrowsing.org", "dns.adguard.com", "dns.adguard-dns.com",
        "unfiltered.adguard-dns.com", "doh.mullvad.net", "dns.mullvad.net", "dns.controld.com",
        "freedns.controld.com", "doh.dns.sb", "dns.alidns.com", "doh.pub", "dns.twnic.tw", "ordns.he.net",
    }
)  # fmt: skip
DOH_IPS = frozenset(
    {
        "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3", "9.9.9.9",
        "149.112.112.112", "9.9.9.10", "9.9.9.11", "208.67.222.222", "208.67.220.220", "94.140.14.14",
        "94.140.15.15", "45.90.28.0", "45.90.30.0", "185.228.168.9", "185.228.169.9", "76.76.2.0", "76.76.10.0",
        "194.242.2.2", "223.5.5.5", "223.6.6.6", "2001:4860:4860::8888", "2001:4860:4860::8844",
        "2606:4700:4700::1111", "2606:4700:4700::1001", "2620:fe::fe", "2620:fe::9", "2620:119:35::35",
        "2620:119:53::53", "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff",
    }
)  # fmt: skip

_NOT_TUNNELLED = (".cluster.local", ".local", ".internal", ".localhost")
_HEX_DIGITS = frozenset("0123456789abcdef")
_TWO_LEVEL = frozenset({"co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go"})


class TunnelLimits(BaseModel):
    """Thresholds for tunnelling signs; the defaults leave CDN, S3 and ECR names alone."""

    label_length: int = 50  # DNS allows 63; encoders fill labels
    name_length: int = 150
    entropy_bits: float = 4.0  # per character, over labels of at least `entropy_min_length`
    entropy_min_length: int = 24
    window_seconds: int = 60
    unique_subdomains: int = 40  # distinct names under one parent per client per window
    queries_per_parent: int = 300
    txt_per_parent: int = 10


def parent_domain(name: str) -> str:
    """The registrable part, near enough without a public-suffix list (co.uk, com.au)."""
    labels = name.rstrip(".").split(".")
    if len(labels) >= 3 and labels[-2] in _TWO_LEVEL and len(labels[-1]) == 2:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def reverse_name(name: str) -> bool:
    """A well-formed reverse-lookup name: up to four decimal labels (0-255) under
    in-addr.arpa, up to 32 single hex digits under ip6.arpa. Only these are exempt
    from tunnel signs: anything else under those zones is a delegated zone like any
    other, and carries data as well."""
    if name.endswith(".in-addr.arpa"):
        labels = name[:-13].split(".")
        return len(labels) <= 4 and all(0 < len(x) <= 3 and x.isdigit() and x.isascii() and int(x) <= 255 for x in labels)
    if name.endswith(".ip6.arpa"):
        labels = name[:-9].split(".")
        return len(labels) <= 32 and all(len(x) == 1 and x in _HEX_DIGITS for x in labels)
    return False


def entropy(text: str) -> float:
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


@dataclass
class _Window:
    start: int
    subdomains: set[str] = field(default_factory=set)
    queries: int = 0
    txt: int = 0
    flagged: str | None = None


class TunnelDetector:
    """Signs per query, and per (client, parent) over a tumbling window; bounded."""

    def __init__(self, limits: TunnelLimits | None = None, *, max_tracked: int = 20_000) -> None:
        self.limits = limits or TunnelLimits()
        self._windows: OrderedDict[tuple[bytes, str], _Window] = OrderedDict()
        self._max = max_tracked

    def signs(self, client: bytes, qname: str, qtype: str, time_us: int) -> list[str]:
        lim = self.limits
        if not qname or qname.endswith(_NOT_TUNNELLED) or "." not in qname or (qname.endswith(".arpa") and reverse_name(qname)):
            return []
        out: list[str] = []
        parent = parent_domain(qname)
        sub = qname[: -len(parent) - 1] if len(qname) > len(parent) else ""
        labels = sub.split(".") if sub else []
        longest = max(labels, key=len) if labels else ""
        if len(longest) >= lim.label_length:
            out.append(f"long-label:{len(longest)}")
        if len(qname) >= lim.name_length:
            out.append(f"long-name:{len(qname)}")
        joined = sub.replace(".", "")
        if len(joined) >= lim.entropy_min_length:
            bits = entropy(joined)
            if bits >= lim.entropy_bits:
                out.append(f"high-entropy:{bits:.1f}")
        if qtype == "NULL":
            out.append("null-query")
        key = (client, parent)
        win = self._windows.get(key)
        if win is None or time_us - win.start > lim.window_seconds * 1_000_000:
            win = _Window(time_us)
            self._windows[key] = win
            if len(self._windows) > self._max:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        win.queries += 1
        if sub and len(win.subdomains) <= lim.unique_subdomains:
            win.subdomains.add(sub)
        if qtype == "TXT":
            win.txt += 1
        if len(win.subdomains) > lim.unique_subdomains:
            out.append(f"unique-subdomains:>{lim.unique_subdomains}/{lim.window_seconds}s")
        if win.queries > lim.queries_per_parent:
            out.append(f"query-volume:>{lim.queries_per_parent}/{lim.window_seconds}s")
        if win.txt > lim.txt_per_parent:
            out.append(f"txt-queries:>{lim.txt_per_parent}/{lim.window_seconds}s")
        return out


@dataclass(frozen=True)
class Resolution:
    """The answer that produced an address for a client."""

    name: str
    chain: tuple[str, ...]
    time_us: int
    ttl: int


class Provenance:
    """(client, address) -> the lookups that returned that address; bounded, oldest out."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._by_client: OrderedDict[bytes, list[Resolution]] = OrderedDict()
        self._by_addr: OrderedDict[bytes, Resolution] = OrderedDict()
        self._max = max_entries

    def add(self, client: bytes, addr: bytes, res: Resolution) -> None:
        key = client + addr
        known = self._by_client.pop(key, [])
        known = [r for r in known if r.name != res.name][-3:] + [res]
        self._by_client[key] = known
        self._by_addr.pop(addr, None)
        self._by_addr[addr] = res
        if len(self._by_client) > self._max:
            self._by_client.popitem(last=False)
        if len(self._by_addr) > self._max:
            self._by_addr.popitem(last=False)

    def explain(self, client: bytes, addr: bytes) -> tuple[list[Resolution], bool]:
        """Lookups that explain `addr` for `client` (True), else for any client (False)."""
        mine = self._by_client.get(client + addr)
        if mine:
            return list(mine), True
        other = self._by_addr.get(addr)
        return ([other], False) if other else ([], False)

    def __len__(self) -> int:
        return len(self._by_client)


def names_of(resolutions: list[Resolution]) -> set[str]:
    out: set[str] = set()
    for r in resolutions:
        out.add(r.name)
        out.update(r.chain)
    return out


def sni_matches(sni: str, names: set[str]) -> bool:
    """The SNI is one of the names the lookup went through (query, CNAMEs)."""
    return sni.rstrip(".").lower() in names
