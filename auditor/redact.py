"""Redaction, in one place: the auditor must not become the leak.

Every string that leaves a sensor for the store, a report or a terminal passes
through here: presigned signatures and tokens in queries, API keys and secrets in
text, and excerpts cut down to a shape a reviewer can read without the value.
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

_SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("gretel-api-key", re.compile(r"\bgrt[a-z0-9]{16,}\b", re.IGNORECASE)),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b")),
    ("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}")),
    ("private-key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)")),
    (
        "secret-assignment",
        re.compile(
            r"(?i)\b(aws_secret_access_key|secret[_-]?key|password|passwd|client_secret|accountkey)"
            r"(\s*[=:]\s*[\"']?)[^\s\"'&;,]{6,}"
        ),
    ),
]


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


def redact_text(text: str) -> str:
    """Replace anything that looks like a secret with its kind."""
    for kind, pattern in _SECRET_PATTERNS:
        if kind == "secret-assignment":
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[{REDACTED}:secret]", text)
        else:
            text = pattern.sub(f"[{REDACTED}:{kind}]", text)
    return text


_TOKEN = re.compile(r"[^\W_]+")


def mask_value(value: str, keep: int = 1) -> str:
    """The shape of a value without the value: each word keeps its first letter and
    its length, separators stay (`al***,12*-**-****`)."""
    return _TOKEN.sub(lambda m: m.group()[:keep] + "*" * (len(m.group()) - keep) if len(m.group()) > keep else "*", value)


def excerpt(text: str, start: int, end: int, width: int = 24) -> str:
    """A window around [start, end), all of it masked: the context of a record is
    more of the record, so only separators and word shapes survive."""
    lo, hi = max(0, start - width), min(len(text), end + width)
    return ("…" if lo > 0 else "") + mask_value(text[lo:hi]) + ("…" if hi < len(text) else "")
