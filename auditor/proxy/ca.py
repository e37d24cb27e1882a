"""`auditor proxy ca`: the certificate authority the proxy signs its interception certificates with.

Made with mitmproxy's own certificate store so `auditor proxy` and stock
`mitmdump --set confdir=DIR` use the same CA. The private key stays in DIR, mode 0600;
the certificate is what the pods trust (Gretel's chart: `gretelConfig.caOverride`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from mitmproxy import certs
from pydantic import BaseModel

from auditor.errors import AuditorError

DEFAULT_CONFDIR = Path("~/.auditor/proxy")
BASENAME = "mitmproxy"  # mitmproxy looks for <confdir>/mitmproxy-ca.pem
KEY_SIZE = 2048


class CaFiles(BaseModel):
    confdir: Path
    key_and_cert: Path  # private: mitmproxy's combined PEM
    cert: Path  # public: give this to the pods
    created: bool
    sha256: str
    subject: str
    not_after: str
    pem: str


def ensure_ca(confdir: Path = DEFAULT_CONFDIR) -> CaFiles:
    """Create the CA in `confdir` unless it exists; tighten the key files to 0600 either way."""
    confdir = confdir.expanduser()
    try:
        confdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditorError(f"cannot create the CA directory: {exc.strerror}", file=str(confdir), fix="pass --confdir to a writable directory") from None
    os.chmod(confdir, 0o700)
    key_file = confdir / f"{BASENAME}-ca.pem"
    created = not key_file.exists()
    try:
        certs.CertStore.from_store(confdir, BASENAME, KEY_SIZE)
    except (ValueError, OSError) as exc:
        raise AuditorError(f"cannot read or create the CA: {exc}", file=str(key_file), fix="remove the damaged mitmproxy-ca*.pem files and run `auditor proxy ca` again") from None
    for private in confdir.glob(f"{BASENAME}-ca*"):
        if private.name.endswith((".pem", ".p12")) and "cert" not in private.name:
            os.chmod(private, stat.S_IRUSR | stat.S_IWUSR)
    cert_file = confdir / f"{BASENAME}-ca-cert.pem"
    pem = cert_file.read_text()
    cert = x509.load_pem_x509_certificate(pem.encode())
    return CaFiles(
        confdir=confdir,
        key_and_cert=key_file,
        cert=cert_file,
        created=created,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc.isoformat(),
        pem=pem,
    )
