"""Redaction: the auditor must not become the leak."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from auditor.redact import mask, redact_query, redact_text


def test_presigned_query_keeps_names_and_drops_signatures() -> None:
    q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=abc123&uid=m_61f"
    out = redact_query(q)
    assert "X-Amz-Signature=REDACTED" in out and "X-Amz-Credential=REDACTED" in out
    assert "uid=m_61f" in out and "abc123" not in out and "AKIAIOSFODNN7EXAMPLE" not in out


def test_secrets_in_text_are_replaced_by_their_kind() -> None:
    text = "key grtu0123456789abcdef99 aws AKIAIOSFODNN7EXAMPLE password=hunter22xx"
    out = redact_text(text)
    assert "grtu0123456789abcdef99" not in out and "AKIAIOSFODNN7EXAMPLE" not in out and "hunter22xx" not in out
    assert "[REDACTED gretel-api-key grt… len=22]" in out and "[REDACTED aws-access-key AKI… len=20]" in out
    assert "[REDACTED secret len=10]" in out


def test_bearer_tokens_and_url_passwords() -> None:
    out = redact_text("Authorization: Bearer abcdefghijklmnop1234 url https://user:hunter2@db.internal/x")
    assert "abcdefghijklmnop1234" not in out and "hunter2" not in out


def test_mask_keeps_shape_not_values() -> None:
    assert mask("alice,123-45-6789") == "xxxxx,999-99-9999"


@given(st.text(min_size=1, max_size=64))
def test_mask_never_reveals_a_letter_or_digit(value: str) -> None:
    masked = mask(value, keep=64)
    assert len(masked) == len(value)
    assert not any((ch.isalpha() or ch.isdigit()) and ch not in "x9" for ch in masked)
