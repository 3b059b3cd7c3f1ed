"""The client's own certificate, checked before any connection: files present and readable, the certificate
valid now, issued by the CA the client trusts, and matching its private key. The gateway refuses a bad
certificate during the TLS handshake, which a client only sees as ``UNAVAILABLE ... Socket closed``; these
checks say instead which file is wrong and what to do."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from pgw_client.errors import ClientSetupError

__all__ = ["ENV_IDENTITY", "ENV_TARGET", "ENV_TLS_DIR", "Credentials", "check_credentials"]

ENV_TARGET = "PGW_TARGET"
ENV_TLS_DIR = "PGW_TLS_DIR"
ENV_IDENTITY = "PGW_IDENTITY"


@dataclass(frozen=True, slots=True)
class Credentials:
    """The PEM bytes of the trusted CA, the client certificate and its key, and facts about the certificate."""

    ca: bytes
    cert: bytes
    key: bytes
    common_name: str
    not_after: datetime

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path, *, now: datetime | None = None,
                   ) -> Credentials:
        """Read and check the three files (see `check_credentials`)."""
        return check_credentials(Path(ca), Path(cert), Path(key), now=now)

    @classmethod
    def in_dir(cls, tls_dir: str | Path | None, identity: str | None, *, now: datetime | None = None,
               ) -> Credentials:
        """The files ``pgw certs`` writes: ``<tls_dir>/ca.crt``, ``<identity>.crt``, ``<identity>.key``; the
        directory and identity default to ``$PGW_TLS_DIR`` and ``$PGW_IDENTITY``."""
        d = tls_dir or os.environ.get(ENV_TLS_DIR)
        name = identity or os.environ.get(ENV_IDENTITY)
        if not d:
            raise ClientSetupError(f"no TLS directory: pass tls_dir (--tls-dir) or set {ENV_TLS_DIR} to the "
                                   "directory holding ca.crt and <identity>.crt/.key")
        if not name:
            raise ClientSetupError(f"no identity: pass identity (--as) or set {ENV_IDENTITY} to the name of your "
                                   "certificate (<identity>.crt in the TLS directory)")
        base = Path(d)
        if not base.is_dir():
            raise ClientSetupError(f"{base}: no such TLS directory (--tls-dir / {ENV_TLS_DIR}); "
                                   "it should hold ca.crt and <identity>.crt/.key from your operator")
        return check_credentials(base / "ca.crt", base / f"{name}.crt", base / f"{name}.key", now=now)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        others = sorted(p.name for p in path.parent.glob("*.crt")) if path.parent.is_dir() else []
        hint = f" (the directory has: {', '.join(others)})" if others else ""
        raise ClientSetupError(f"{path}: {what} not found{hint}; check --tls-dir and --as "
                               f"(or {ENV_TLS_DIR}, {ENV_IDENTITY})") from exc
    except OSError as exc:
        raise ClientSetupError(f"{path}: {what} cannot be read: {exc.strerror}") from exc


def check_credentials(ca_path: Path, cert_path: Path, key_path: Path, *, now: datetime | None = None,
                      ) -> Credentials:
    """The checked credentials.

    Raises:
        ClientSetupError: a file is missing or unreadable or not PEM; the certificate is expired or not yet
            valid; it was not issued by the CA; or the key is not the certificate's key. The message names the
            file and says what to do.
    """
    ca_pem, cert_pem, key_pem = (_read(ca_path, "CA certificate"), _read(cert_path, "client certificate"),
                                 _read(key_path, "client private key"))
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ClientSetupError(f"{ca_path}: not a PEM certificate") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ClientSetupError(f"{cert_path}: not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ClientSetupError(f"{key_path}: not an unencrypted PEM private key") from exc
    moment = now or datetime.now(UTC)
    if moment > cert.not_valid_after_utc:
        raise ClientSetupError(
            f"{cert_path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; ask your "
            "operator for a new one (development certificates: pgw certs --renew)")
    if moment < cert.not_valid_before_utc:
        raise ClientSetupError(f"{cert_path}: the certificate is valid only from "
                               f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:  # another issuer, key type or signature
        raise ClientSetupError(
            f"{cert_path}: the certificate was not issued by the CA in {ca_path}; the gateway will refuse it. "
            "Use the certificate and CA your operator gave you for this gateway") from exc
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, pub) != cert.public_key().public_bytes(
            serialization.Encoding.PEM, pub):
        raise ClientSetupError(f"{key_path}: this key does not belong to the certificate {cert_path}")
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return Credentials(ca_pem, cert_pem, key_pem, common_name, cert.not_valid_after_utc)
