"""Development PKI: a private CA, a server certificate and client certificates (EC P-256)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_SERVER_HOSTS",
    "common_name_of",
    "create_ca",
    "issue_client_cert",
    "issue_server_cert",
    "write_dev_pki",
    "write_owner_pki",
]

#: Names a development server certificate is valid for unless told otherwise.
DEFAULT_SERVER_HOSTS: Final[tuple[str, ...]] = ("localhost", "127.0.0.1")

# Client names become file names and DNS labels, so keep them to a safe alphabet.
_CLIENT_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})")
_RESERVED_NAMES: Final = frozenset({"ca", "server"})
# Tolerate small clock differences between the machine issuing and the one verifying.
_BACKDATE: Final = dt.timedelta(minutes=5)


def _new_key() -> ec.EllipticCurvePrivateKey:
    """Generate a fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialize ``key`` as unencrypted PKCS#8 PEM (development use only)."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _load_ca(
    ca_key_pem: bytes, ca_cert_pem: bytes
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load a CA key pair and check that the key belongs to the certificate.

    Raises:
        TypeError: If the key is not an elliptic-curve key.
        ValueError: If the key does not match the certificate, or the certificate is not a CA.
    """
    key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"CA key must be an elliptic-curve key, got {type(key).__name__}")
    cert = x509.load_pem_x509_certificate(ca_cert_pem)
    if cert.public_key() != key.public_key():
        raise ValueError("CA key does not match the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError("the CA certificate is not a CA (BasicConstraints ca=False or missing)")
    return key, cert


def _leaf_builder(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
) -> x509.CertificateBuilder:
    """Start an end-entity certificate that expires no later than its CA."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _pem(cert: x509.Certificate) -> bytes:
    """Serialize ``cert`` as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(common_name: str, days: int = 365) -> tuple[bytes, bytes]:
    """Create a self-signed certificate authority for development.

    The CA may sign end-entity certificates only (``path_length=0``).

    Args:
        common_name: Subject common name of the CA.
        days: Validity period in days.

    Returns:
        ``(key_pem, cert_pem)``. The key is unencrypted PKCS#8 PEM: fine for development,
        never for production.

    Raises:
        ValueError: If ``days`` is less than 1 or ``common_name`` is empty.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not common_name:
        raise ValueError("common_name must not be empty")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), _pem(cert)


def issue_server_cert(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    hosts: Sequence[str] = DEFAULT_SERVER_HOSTS,
    days: int = 365,
) -> tuple[bytes, bytes]:
    """Issue a TLS server certificate signed by the CA.

    Args:
        ca_key_pem: The CA's private key (PEM).
        ca_cert_pem: The CA's certificate (PEM).
        hosts: Host names and IP addresses the server is reached by; IP literals become
            ``IPAddress`` subject alternative names, everything else ``DNSName``. The first
            entry is also the subject common name.
        days: Validity period in days (capped at the CA's expiry).

    Returns:
        ``(key_pem, cert_pem)``; the key is unencrypted PKCS#8 PEM (development only).

    Raises:
        ValueError: If ``hosts`` is empty, ``days`` is less than 1, or the CA is unusable.
        TypeError: If the CA key is not an elliptic-curve key.
    """
    if not hosts:
        raise ValueError("hosts must not be empty")
    ca_key, ca_cert = _load_ca(ca_key_pem, ca_cert_pem)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        _leaf_builder(ca_key, ca_cert, subject, key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), _pem(cert)


def issue_client_cert(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    common_name: str,
    organization: str | None = None,
    days: int = 365,
) -> tuple[bytes, bytes]:
    """Issue a TLS client certificate signed by the CA.

    The subject carries ``CN=common_name`` (and ``O=organization`` when given); the subject
    alternative name is ``DNSName(f"{common_name}.clients.invalid")``.

    Args:
        ca_key_pem: The CA's private key (PEM).
        ca_cert_pem: The CA's certificate (PEM).
        common_name: The client's identity: a letter or digit followed by up to 62 letters,
            digits, ``_``, ``.`` or ``-``.
        organization: Optional subject organization name.
        days: Validity period in days (capped at the CA's expiry).

    Returns:
        ``(key_pem, cert_pem)``; the key is unencrypted PKCS#8 PEM (development only).

    Raises:
        ValueError: If ``common_name`` is not of the allowed form, ``days`` is less than 1,
            or the CA is unusable.
        TypeError: If the CA key is not an elliptic-curve key.
    """
    if not _CLIENT_NAME.fullmatch(common_name):
        raise ValueError(f"invalid client common name {common_name!r}")
    ca_key, ca_cert = _load_ca(ca_key_pem, ca_cert_pem)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    key = _new_key()
    cert = (
        _leaf_builder(ca_key, ca_cert, x509.Name(attributes), key.public_key(), days)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"{common_name}.clients.invalid")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), _pem(cert)


def common_name_of(cert_pem: bytes) -> str:
    """Return the subject common name of a PEM certificate.

    Args:
        cert_pem: The certificate (PEM).

    Returns:
        The first subject ``CN`` value.

    Raises:
        ValueError: If the certificate has no subject common name.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        raise ValueError("certificate has no subject common name")
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` atomically; private files are created with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_dev_pki(
    out_dir: Path,
    clients: Sequence[str],
    server_hosts: Sequence[str] = DEFAULT_SERVER_HOSTS,
    *,
    server_stem: str = "server",
    ca_name: str = "privacy-gateway dev CA",
    renew_within_days: int | None = None,
) -> dict[str, Path]:
    """Write a development PKI to ``out_dir``, reusing whatever is already there.

    With ``renew_within_days``, a server or client certificate that expires within that many days (or has
    expired) is issued again with a new key, by the same CA.

    Files: ``ca.key``/``ca.crt``, ``server.key``/``server.crt`` and ``<client>.key``/
    ``<client>.crt`` for each client (common name ``<client>``, no organization). Key files
    are unencrypted PKCS#8 PEM with mode 0600: development only. If ``ca.crt`` exists the
    CA is reused (its ``ca.key`` must then exist too when a leaf has to be issued), and a
    leaf pair is only (re)issued when its key or certificate file is missing, so calling
    this again is cheap and keeps existing certificates.

    Args:
        out_dir: Directory to write into; created (mode 0700) if missing.
        clients: Client common names; see :func:`issue_client_cert` for the allowed form.
            ``ca`` and ``server`` are reserved.
        server_hosts: Host names and IP addresses for the server certificate.
        server_stem: File stem of the server's pair (``sandbox`` in the data owner's PKI).
        ca_name: The common name of a CA created here.

    Returns:
        Mapping from file name (e.g. ``"ca.crt"``, ``"alice.key"``) to its path.

    Raises:
        ValueError: If a client name is invalid, reserved or repeated.
        FileNotFoundError: If ``ca.crt`` exists without ``ca.key`` and a leaf must be issued.
    """
    seen: set[str] = set()
    for name in clients:
        if not _CLIENT_NAME.fullmatch(name):
            raise ValueError(f"invalid client name {name!r}")
        if name.lower() in _RESERVED_NAMES | {server_stem} or name in seen:
            raise ValueError(f"client name {name!r} is reserved or repeated")
        seen.add(name)

    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    ca_key_path, ca_cert_path = out_dir / "ca.key", out_dir / "ca.crt"
    paths["ca.key"], paths["ca.crt"] = ca_key_path, ca_cert_path
    if not ca_cert_path.exists():
        ca_key_pem, ca_cert_pem = create_ca(ca_name)
        _write(ca_key_path, ca_key_pem, private=True)
        _write(ca_cert_path, ca_cert_pem, private=False)

    def ensure_leaf(stem: str) -> None:
        """Issue ``<stem>.key``/``<stem>.crt`` unless both already exist."""
        key_path, cert_path = out_dir / f"{stem}.key", out_dir / f"{stem}.crt"
        paths[key_path.name], paths[cert_path.name] = key_path, cert_path
        if key_path.exists() and cert_path.exists():
            if renew_within_days is None:
                return
            not_after = x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc
            if not_after - dt.datetime.now(dt.UTC) > dt.timedelta(days=renew_within_days):
                return
        if not ca_key_path.exists():
            raise FileNotFoundError(f"{ca_key_path} is missing; cannot issue {cert_path.name}")
        ca_key_pem, ca_cert_pem = ca_key_path.read_bytes(), ca_cert_path.read_bytes()
        if stem == server_stem:
            key_pem, cert_pem = issue_server_cert(ca_key_pem, ca_cert_pem, server_hosts)
        else:
            key_pem, cert_pem = issue_client_cert(ca_key_pem, ca_cert_pem, stem)
        _write(key_path, key_pem, private=True)
        _write(cert_path, cert_pem, private=False)

    ensure_leaf(server_stem)
    for name in clients:
        ensure_leaf(name)
    return paths


def write_owner_pki(out_dir: Path, gateways: Sequence[str], sandbox_hosts: Sequence[str]) -> dict[str, Path]:
    """Write the data owner's development PKI for the gateway-sandbox link to ``out_dir``.

    A CA of the data owner's (``ca.key``/``ca.crt``; not the consumers' CA the gateway serves gRPC under),
    ``sandbox.key``/``sandbox.crt`` valid for ``sandbox_hosts`` (the names and addresses gateways dial), and
    a client pair ``<gateway>.key``/``<gateway>.crt`` for each gateway. Reuses what exists, like
    :func:`write_dev_pki`. In production the owner keeps ``ca.key`` offline and hands each gateway host only
    ``ca.crt`` and its own pair.

    Raises:
        ValueError: a gateway name is invalid, reserved (``ca``, ``server``, ``sandbox``) or repeated, or
            ``sandbox_hosts`` is empty.
    """
    if not sandbox_hosts:
        raise ValueError("the sandbox certificate needs at least one host name or address")
    return write_dev_pki(out_dir, gateways, sandbox_hosts, server_stem="sandbox",
                         ca_name="data owner dev CA (gateway-sandbox link)")
