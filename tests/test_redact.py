"""Redaction: the auditor must not become the leak."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from auditor.redact import excerpt, mask_value, redact_query, redact_text


def test_presigned_query_keeps_names_and_drops_signatures() -> None:
    q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=abc123&uid=m_61f"
    out = redact_query(q)
    assert "X-Amz-Signature=REDACTED" in out and "X-Amz-Credential=REDACTED" in out
    assert "uid=m_61f" in out and "abc123" not in out and "AKIAIOSFODNN7EXAMPLE" not in out


def test_secrets_in_text_are_replaced_by_their_kind() -> None:
    text = "key grtu0123456789abcdef99 aws AKIAIOSFODNN7EXAMPLE password=hunter22xx"
    out = redact_text(text)
    assert "grtu0123456789abcdef99" not in out and "AKIAIOSFODNN7EXAMPLE" not in out and "hunter22xx" not in out
    assert "[REDACTED:gretel-api-key]" in out and "[REDACTED:aws-access-key]" in out


def test_excerpt_keeps_shape_not_values() -> None:
    text = "name,ssn\nalice,123-45-6789\n"
    out = excerpt(text, text.index("123"), text.index("123") + 11)
    assert "alice" not in out and "6789" not in out
    assert out.count("-") == 2


@given(st.text(min_size=1, max_size=64))
def test_mask_never_reveals_more_than_first_letters(value: str) -> None:
    masked = mask_value(value)
    assert len(masked) == len(value)
    words = [w for w in __import__("re").findall(r"[^\W_]+", value) if len(w) > 1]
    for word in words:
        assert word not in masked or set(word[1:]) <= {"*"}
