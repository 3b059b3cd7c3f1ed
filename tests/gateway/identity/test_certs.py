"""Tests for the development PKI helpers."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.identity.certs import (
    common_name_of,
    create_ca,
    issue_client_cert,
    issue_server_cert,
    write_dev_pki,
    write_owner_pki,
)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    """A CA shared by the module's tests."""
    return create_ca("test CA")


def _cert(pem: bytes) -> x509.Certificate:
    """Parse a PEM certificate."""
    return x509.load_pem_x509_certificate(pem)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    """Return the certificate's extended key usages."""
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_extensions(ca: tuple[bytes, bytes]) -> None:
    """The CA is self-signed, P-256/SHA-256, with critical BasicConstraints and KeyUsage."""
    key_pem, cert_pem = ca
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    cert = _cert(cert_pem)
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert common_name_of(cert_pem) == "test CA"


def test_server_cert_chain_sans_and_eku(ca: tuple[bytes, bytes]) -> None:
    """The server certificate verifies against the CA, has DNS+IP SANs and serverAuth only."""
    ca_key, ca_cert = ca
    key_pem, cert_pem = issue_server_cert(ca_key, ca_cert, ["localhost", "127.0.0.1", "::1"])
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = _cert(cert_pem)
    cert.verify_directly_issued_by(_cert(ca_cert))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca
    assert cert.not_valid_after_utc <= _cert(ca_cert).not_valid_after_utc


def test_server_cert_default_hosts(ca: tuple[bytes, bytes]) -> None:
    """Without hosts the server certificate covers localhost and 127.0.0.1."""
    _, cert_pem = issue_server_cert(*ca)
    san = _cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert common_name_of(cert_pem) == "localhost"


def test_client_cert_subject_san_and_eku(ca: tuple[bytes, bytes]) -> None:
    """The client certificate carries CN, O, the .clients.invalid SAN and clientAuth only."""
    ca_key, ca_cert = ca
    _, cert_pem = issue_client_cert(ca_key, ca_cert, "acme-bank", organization="Acme Bank")
    cert = _cert(cert_pem)
    cert.verify_directly_issued_by(_cert(ca_cert))
    assert common_name_of(cert_pem) == "acme-bank"
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in org] == ["Acme Bank"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["acme-bank.clients.invalid"]
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    _, no_org = issue_client_cert(ca_key, ca_cert, "solo")
    assert not _cert(no_org).subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)


def test_client_cert_from_other_ca_does_not_verify(ca: tuple[bytes, bytes]) -> None:
    """A client certificate issued by a different CA (even with the same name) is rejected."""
    other_key, other_cert = create_ca("test CA")  # same subject, different key
    _, cert_pem = issue_client_cert(other_key, other_cert, "mallory")
    with pytest.raises(InvalidSignature):
        _cert(cert_pem).verify_directly_issued_by(_cert(ca[1]))
    differently_named = create_ca("another CA")
    _, cert_pem = issue_client_cert(*differently_named, "mallory")
    with pytest.raises(ValueError):
        _cert(cert_pem).verify_directly_issued_by(_cert(ca[1]))


def test_mismatched_ca_key_and_bad_names_are_rejected(ca: tuple[bytes, bytes]) -> None:
    """Issuing with a key that is not the CA's, or an unsafe client name, raises ValueError."""
    other_key, _ = create_ca("other")
    with pytest.raises(ValueError):
        issue_client_cert(other_key, ca[1], "alice")
    for bad in ("", "../etc", "a b", "-x"):
        with pytest.raises(ValueError):
            issue_client_cert(*ca, bad)


def test_tls_handshake_with_mutual_auth(tmp_path: Path) -> None:
    """The written PKI completes a real mutually authenticated TLS handshake in memory."""
    paths = write_dev_pki(tmp_path, ["alice"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths["server.crt"], paths["server.key"])
    server_ctx.load_verify_locations(paths["ca.crt"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(paths["alice.crt"], paths["alice.key"])
    client_ctx.load_verify_locations(paths["ca.crt"])

    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    der = server.getpeercert(binary_form=True)
    assert der is not None
    assert x509.load_der_x509_certificate(der).subject.rfc4514_string() == "CN=alice"


def test_write_dev_pki_files_and_permissions(tmp_path: Path) -> None:
    """write_dev_pki writes every expected file; keys are 0600 and leaves chain to the CA."""
    out = tmp_path / "pki"
    paths = write_dev_pki(out, ["alice", "bob"])
    expected = {
        f"{stem}.{ext}" for stem in ("ca", "server", "alice", "bob") for ext in ("key", "crt")
    }
    assert set(paths) == expected
    assert {p.name for p in out.iterdir()} == expected
    for name, path in paths.items():
        mode = stat.S_IMODE(path.stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, name
    ca_cert = _cert(paths["ca.crt"].read_bytes())
    for stem in ("server", "alice", "bob"):
        _cert(paths[f"{stem}.crt"].read_bytes()).verify_directly_issued_by(ca_cert)
    assert common_name_of(paths["bob.crt"].read_bytes()) == "bob"


def test_write_dev_pki_is_idempotent(tmp_path: Path) -> None:
    """A second call reuses the CA and existing leaves and only creates what is missing."""
    first = write_dev_pki(tmp_path, ["alice"])
    before = {name: path.read_bytes() for name, path in first.items()}
    second = write_dev_pki(tmp_path, ["alice"])
    assert {name: path.read_bytes() for name, path in second.items()} == before

    first["alice.crt"].unlink()
    third = write_dev_pki(tmp_path, ["alice", "carol"])
    assert third["ca.crt"].read_bytes() == before["ca.crt"]
    assert third["server.crt"].read_bytes() == before["server.crt"]
    assert third["alice.key"].read_bytes() != before["alice.key"]  # pair was reissued
    ca_cert = _cert(before["ca.crt"])
    for stem in ("alice", "carol"):
        _cert(third[f"{stem}.crt"].read_bytes()).verify_directly_issued_by(ca_cert)


def test_write_dev_pki_rejects_bad_client_names(tmp_path: Path) -> None:
    """Reserved, repeated or path-like client names are refused before anything is written."""
    for clients in (["ca"], ["server"], ["x", "x"], ["../x"]):
        with pytest.raises(ValueError):
            write_dev_pki(tmp_path / "pki", clients)
    assert not (tmp_path / "pki").exists()


def test_owner_pki_is_a_ca_of_its_own_with_a_sandbox_server_and_gateway_clients(tmp_path: Path) -> None:
    """`write_owner_pki`: the owner's CA (not the consumers'), `sandbox.crt` for the given hosts with
    serverAuth, a clientAuth pair per gateway; `sandbox` is reserved; hosts are required."""
    consumers = write_dev_pki(tmp_path / "consumers", clients=["alice"])
    paths = write_owner_pki(tmp_path / "owner", ["gw1"], ["10.0.0.3", "sandbox.owner.example"])
    assert set(paths) == {"ca.key", "ca.crt", "sandbox.key", "sandbox.crt", "gw1.key", "gw1.crt"}
    ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
    assert "data owner" in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert ca.public_key() != x509.load_pem_x509_certificate(consumers["ca.crt"].read_bytes()).public_key()
    server = x509.load_pem_x509_certificate(paths["sandbox.crt"].read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.3")]
    assert san.get_values_for_type(x509.DNSName) == ["sandbox.owner.example"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client = x509.load_pem_x509_certificate(paths["gw1.crt"].read_bytes())
    client.verify_directly_issued_by(ca)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(ValueError, match="reserved"):
        write_owner_pki(tmp_path / "o2", ["sandbox"], ["localhost"])
    with pytest.raises(ValueError, match="at least one host"):
        write_owner_pki(tmp_path / "o3", ["gw1"], [])
