"""Redaction, in one place: the auditor must not become the leak.

Every string that leaves a sensor for the store, a report or a terminal passes
through here: presigned signatures and tokens in queries, API keys and secrets in
text, and values cut down to a shape a reviewer can read without the value.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote

REDACTED = "REDACTED"

_SENSITIVE_PARAMS = re.compile(
    r"(?:^|[-_.])(?:signature|sig|token|security-token|credential|credentials|secret|password|passwd|pwd|"
    r"api[-_]?key|apikey|key|access[-_]?token|refresh[-_]?token|id[-_]?token|auth|authorization|code|session|"
    r"awsaccesskeyid|se|sp|skoid|sktid)$",
    re.IGNORECASE,
)

# Public prefixes that identify a key's issuer without helping anyone use it.
_SHOW_PREFIX = frozenset({"gretel-api-key", "aws-access-key", "github-token", "jwt"})

SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("gretel-api-key", re.compile(r"\bgrt[a-z0-9]{16,}\b", re.I)),
    ("aws-access-key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("github-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("private-key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----|$)")),
    ("azure-account-key", re.compile(r"(?i)(?<=AccountKey=)[A-Za-z0-9+/=]{20,}")),
    ("url-password", re.compile(r"(?i)(?<=://)[^\s:/@\"']{1,128}:[^\s@/\"']{1,256}(?=@)")),
    ("bearer-token", re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{12,}")),
    (
        "secret",
        re.compile(
            r"(?i)(?<=aws_secret_access_key=)[^\s\"'&;,]{6,}|(?<=secret_key=)[^\s\"'&;,]{6,}|"
            r"(?<=password=)[^\s\"'&;,]{6,}|(?<=passwd=)[^\s\"'&;,]{6,}|(?<=client_secret=)[^\s\"'&;,]{6,}"
        ),
    ),
]


def secret_excerpt(kind: str, value: str) -> str:
    """A secret reported by type, length and a 3-character public prefix at most (e.g. `grt`, `AKI`)."""
    prefix = value[:3] if kind in _SHOW_PREFIX else ""
    return f"[{REDACTED} {kind}{' ' + prefix + '…' if prefix else ''} len={len(value)}]"


def redact_text(text: str) -> str:
    """Every secret shape in `text` replaced by its redacted form: queries, paths, excerpts, reports."""
    lowered = text.lower()
    for kind, rx in SECRET_PATTERNS:
        if kind == "gretel-api-key" and "grt" not in lowered:
            continue
        text = rx.sub(lambda m, k=kind: secret_excerpt(k, m.group(0)), text)
    return text


def is_sensitive_param(name: str) -> bool:
    return bool(_SENSITIVE_PARAMS.search(name))


def redact_query(query: str) -> str:
    """Keep the parameter names (they are evidence), drop the values of secrets."""
    if not query:
        return query
    parts = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        shown = REDACTED if is_sensitive_param(name) else redact_text(value)
        parts.append(f"{quote(name, safe='-_.~')}={quote(shown, safe='-_.~:/@,')}")
    return "&".join(parts)


def mask(value: str, keep: int = 40) -> str:
    """The shape of a value without the value: letters x, digits 9, punctuation kept."""
    out = []
    for ch in value[:keep]:
        if ch.isalpha():
            out.append("x")
        elif ch.isdigit():
            out.append("9")
        elif ch.isspace():
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out) + ("…" if len(value) > keep else "")
