"""in-toto Statement v1 wrapped in a DSSE envelope, signed with Ed25519.

The statement's subjects are the files of a report bundle (by SHA-256) and its
predicate carries what an auditor checks first: verdict, coverage, window, pack
digests and chain heads. DSSE signs the exact payload bytes (the pre-authentication
encoding), so nothing in the envelope can be re-serialised into a different claim.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from auditor.errors import AuditorError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://boundary-auditor.dev/attestation/v1"
PRIVATE_KEY_NAME = "auditor-signing.key"
PUBLIC_KEY_NAME = "auditor-signing.pub"


class Subject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    digest: dict[str, str]


class Statement(BaseModel):
    """The in-toto v1 statement; `_type` is spelt with its underscore on the wire."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type_: str = Field(default=STATEMENT_TYPE, alias="_type")
    subject: list[Subject] = Field(min_length=1)
    predicateType: str = PREDICATE_TYPE  # noqa: N815 - the in-toto field name
    predicate: dict[str, Any]

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keyid: str = ""
    sig: str


class Envelope(BaseModel):
    """DSSE v1 envelope: base64 payload, its type, and signatures over PAE(type, payload)."""

    model_config = ConfigDict(extra="forbid")

    payload: str
    payloadType: str = PAYLOAD_TYPE  # noqa: N815 - the DSSE field name
    signatures: list[Signature] = Field(default_factory=list)

    def payload_bytes(self) -> bytes:
        return base64.b64decode(self.payload, validate=True)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key: short to quote, stable across PEM encodings."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(statement: Statement, private_key: Ed25519PrivateKey) -> Envelope:
    payload = statement.to_bytes()
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload))
    return Envelope(
        payload=base64.b64encode(payload).decode(),
        signatures=[Signature(keyid=key_id(private_key.public_key()), sig=base64.b64encode(sig).decode())],
    )


class VerifiedStatement(BaseModel):
    ok: bool
    statement: Statement | None = None
    reason: str = ""


def verify_envelope(envelope: Envelope, public_key: Ed25519PublicKey) -> VerifiedStatement:
    """True only when a signature by this key covers the payload, and the payload is
    an in-toto v1 statement; the statement returned is the signed one, never a file beside it."""
    if envelope.payloadType != PAYLOAD_TYPE:
        return VerifiedStatement(ok=False, reason=f"payload type is {envelope.payloadType!r}, not {PAYLOAD_TYPE}")
    if not envelope.signatures:
        return VerifiedStatement(ok=False, reason="the envelope carries no signature")
    try:
        payload = envelope.payload_bytes()
    except ValueError:
        return VerifiedStatement(ok=False, reason="the payload is not valid base64")
    message = pae(envelope.payloadType, payload)
    valid = False
    for signature in envelope.signatures:
        try:
            public_key.verify(base64.b64decode(signature.sig, validate=True), message)
            valid = True
            break
        except (InvalidSignature, ValueError):
            continue
    if not valid:
        return VerifiedStatement(ok=False, reason=f"no signature verifies with key {key_id(public_key)[:16]}")
    try:
        statement = Statement.model_validate_json(payload)
    except ValidationError as exc:
        return VerifiedStatement(ok=False, reason=f"the signed payload is not an in-toto statement: {exc.errors()[0]['msg']}")
    if statement.type_ != STATEMENT_TYPE:
        return VerifiedStatement(ok=False, reason=f"statement type is {statement.type_!r}, not {STATEMENT_TYPE}")
    return VerifiedStatement(ok=True, statement=statement)


def generate_keys(out_dir: Path) -> tuple[Path, Path, str]:
    """A fresh Ed25519 pair; the private key is created with mode 0600, never widened."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise AuditorError("a key file is already there", file=str(path), fix="choose another --out, or move the old key away")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path, key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise AuditorError("no such signing key", file=str(path), fix="create one with `auditor keys generate --out DIR`") from None
    except (ValueError, TypeError) as exc:
        raise AuditorError(f"not an unencrypted PEM private key ({exc})", file=str(path), fix="pass the .key file from `auditor keys generate`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditorError("the signing key is not Ed25519", file=str(path), fix="create one with `auditor keys generate --out DIR`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditorError("no such public key", file=str(path), fix="pass the .pub file from `auditor keys generate`") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise AuditorError(f"not a PEM public key ({exc})", file=str(path), fix="pass the .pub file, not the private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditorError("the public key is not Ed25519", file=str(path), fix="pass the .pub file from `auditor keys generate`")
    return key
