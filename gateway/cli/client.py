"""Client-side helpers for the CLI: the client options every gateway command shares (with environment defaults),
an mTLS channel from checked certificates, and readable errors from rich statuses.

grpc and the stubs are imported inside the functions that use them, so `pgw --help` stays fast."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

__all__ = ["ClientIdentity", "ErrorDetails", "add_client_args", "channel_for_args", "describe_error",
           "error_details", "reports_rpc_errors", "secure_channel"]

DEFAULT_TARGET = "127.0.0.1:50051"
ENV_TARGET, ENV_TLS_DIR, ENV_IDENTITY = "PGW_TARGET", "PGW_TLS_DIR", "PGW_IDENTITY"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Where a client's CA, certificate and key live."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, tls_dir: Path, name: str) -> ClientIdentity:
        """The files `pgw certs` writes for client `name`."""
        return cls(tls_dir / "ca.crt", tls_dir / f"{name}.crt", tls_dir / f"{name}.key")


def add_client_args(p: argparse.ArgumentParser, *, as_json: bool = True, help_json: str = "print JSON") -> None:
    """--target, --tls-dir, --as (defaults $PGW_TARGET, $PGW_TLS_DIR, $PGW_IDENTITY) and --json."""
    p.add_argument("--target", default=None,
                   help=f"host:port of the gateway (default ${ENV_TARGET} or {DEFAULT_TARGET})")
    p.add_argument("--tls-dir", help=f"directory with ca.crt and <identity>.crt/.key (default ${ENV_TLS_DIR}, "
                                     "then the gateway settings' tls_dir)")
    p.add_argument("--as", dest="identity", help=f"your client certificate's name (default ${ENV_IDENTITY})")
    if as_json:
        p.add_argument("--json", action="store_true", help=help_json)


def channel_for_args(args: argparse.Namespace) -> grpc.Channel:
    """The checked mTLS channel for a command's client options.

    Raises:
        ClientSetupError: no identity, or a certificate file missing, expired, foreign or not matching its key.
    """
    from pgw_client.errors import ClientSetupError

    identity = getattr(args, "identity", None) or os.environ.get(ENV_IDENTITY)
    if not identity:
        raise ClientSetupError(f"say who you are: --as <certificate name> (or set {ENV_IDENTITY})")
    tls = getattr(args, "tls_dir", None) or os.environ.get(ENV_TLS_DIR)
    if tls:
        tls_dir = Path(tls)
    else:
        from gateway.settings import load_settings

        tls_dir = load_settings().tls_dir
    if not tls_dir.is_dir():
        raise ClientSetupError(f"{tls_dir}: no such TLS directory (--tls-dir or {ENV_TLS_DIR}); it should hold "
                               "ca.crt and <identity>.crt/.key (pgw certs, or from your operator)")
    target = getattr(args, "target", None) or os.environ.get(ENV_TARGET) or DEFAULT_TARGET
    args.target = target
    return secure_channel(target, ClientIdentity.in_dir(tls_dir, identity))


def secure_channel(target: str, identity: ClientIdentity) -> grpc.Channel:
    """An mTLS channel to the gateway, after checking the certificate (`pgw_client.tls.check_credentials`)."""
    import grpc

    from pgw_client.tls import check_credentials

    creds = check_credentials(identity.ca, identity.cert, identity.key)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(
        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert))


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """The parts of a rich gRPC error a client acts on."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Decode the status code, message and ErrorInfo of a failed call."""
    from pgw_client.errors import status_of

    s = status_of(error)
    return ErrorDetails(s.code, s.message, s.reason, s.metadata)


def describe_error(error: grpc.RpcError, target: str | None = None) -> str:
    """One line for a human: CODE (REASON): message; for a gateway that cannot be reached, what to check."""
    import grpc

    d = error_details(error)
    reason = f" ({d.reason})" if d.reason else ""
    if d.code == grpc.StatusCode.UNAVAILABLE and not d.reason:
        where = f" at {target}" if target else ""
        return (f"UNAVAILABLE: cannot reach the gateway{where} ({d.message}); check that it runs and --target; "
                "if it runs, it may refuse this certificate (check its log, or ask its operator)")
    return f"{d.code.name}{reason}: {d.message}"


def reports_rpc_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command whose failed RPC prints as a readable error on stderr (`describe_error`) and exits 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        import grpc

        try:
            return command(args)
        except grpc.RpcError as exc:
            print(describe_error(exc, getattr(args, "target", None)), file=sys.stderr)
            return 1

    return run


def stub(args: argparse.Namespace, factory: Callable[[Any], Any]) -> Any:
    """A stub of ``factory`` (e.g. ``QueryServiceStub``) on the command's channel."""
    return factory(channel_for_args(args))
