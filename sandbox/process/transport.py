"""Where the sandbox listens and how the link to it is secured: a Unix socket, or TCP with mutual TLS.

The Unix socket (`Path`) is the single-host default: the gateway starts the sandbox and both share a
directory. `TlsEndpoint` is the multi-host link: the sandbox runs on the data owner's host and listens on
host:port; both sides authenticate with certificates from the DATA OWNER's CA (not the consumers' CA the
gateway serves gRPC under):

* the sandbox presents a server certificate from the owner's CA and requires a client certificate from
  the same CA (`server_context`): a peer without one, with one from another CA, or speaking plaintext
  is refused in the handshake, before a byte of a request is read;
* the gateway presents its client certificate from the owner's CA and accepts only a sandbox whose
  certificate the owner's CA issued for the host it dials (`client_context`: hostname checked).

TLS 1.3 only, from Python's `ssl` module. In TLS 1.3 the client's handshake ends before the server has
checked the client's certificate, so the sandbox writes `GREETING` once it has accepted the gateway, and the
gateway sends nothing before it has read it: a refusal always reaches the gateway before its first request
(nothing was sent, so nothing can have been charged). `GREETING` also names the link's protocol version.
`tls_failure` turns a handshake failure into a sentence that says which side refused what.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GREETING", "Endpoint", "TlsEndpoint", "TlsFiles", "client_context", "parse_address", "server_context",
           "tls_failure"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of one side of the link: the owner's CA certificate it trusts, and its own key pair."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsEndpoint:
    """A sandbox reached over TCP with mutual TLS: its host and port, and the files this gateway uses."""

    host: str
    port: int
    tls: TlsFiles

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"


GREETING = b"privacy-gateway sandbox/1\n"
Endpoint = Path | TlsEndpoint  # a Unix socket path, or a TCP address with TLS


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for IPv6) as (host, port).

    Raises:
        ValueError: not of that form, or the port is not in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _load(ctx: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    """Trust only the owner's CA, present our pair, TLS 1.3 only."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file {path} not found")
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The sandbox's side: its certificate, and client certificates required from the owner's CA.

    Raises:
        FileNotFoundError: a file is missing.
        ssl.SSLError: a file is not a PEM certificate / key, or the key does not match the certificate.
    """
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.num_tickets = 0  # no session resumption: a ticket arriving on an idle pooled connection reads as EOF
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The gateway's side: its certificate, and a sandbox certificate from the owner's CA for the host dialled.

    Raises:
        FileNotFoundError: a file is missing.
        ssl.SSLError: a file is not a PEM certificate / key, or the key does not match the certificate.
    """
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


# OpenSSL's reasons for a handshake the PEER refused (an alert it sent us), as seen by the side that gets it.
_PEER_REFUSED = ("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED",
                 "ALERT_CERTIFICATE_UNKNOWN", "ALERT_DECRYPT_ERROR", "ALERT_HANDSHAKE_FAILURE",
                 "ALERT_ACCESS_DENIED")
_NOT_TLS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
            "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_EOF_WHILE_READING")


def peer_refused(exc: BaseException) -> bool:
    """True if `exc` is the peer's TLS alert refusing our certificate (the handshake never completed there)."""
    reason = getattr(exc, "reason", None) or ""
    return isinstance(exc, ssl.SSLError) and any(r in reason for r in _PEER_REFUSED)


def tls_failure(exc: BaseException, *, side: str, peer: str) -> str:
    """A sentence for a failed handshake. `side`: "gateway" or "sandbox" (who reports), `peer`: its address."""
    reason = getattr(exc, "reason", None) or ""
    other = "sandbox" if side == "gateway" else "gateway"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the {other} at {peer} presented a certificate this {side} does not accept "
                f"({exc.verify_message}): it must be issued by the data owner's CA"
                + (" for the host dialled" if side == "gateway" else ""))
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason:
        return f"the {other} at {peer} presented no client certificate: one from the data owner's CA is required"
    if peer_refused(exc):
        return (f"the {other} at {peer} refused this {side}'s certificate ({reason}): it must be issued by "
                "the data owner's CA")
    if any(r in reason for r in _NOT_TLS) or isinstance(exc, ssl.SSLEOFError):
        return f"the {other} at {peer} does not speak TLS (plaintext or another protocol): refused ({reason or exc})"
    return f"TLS handshake with the {other} at {peer} failed: {reason or exc}"
