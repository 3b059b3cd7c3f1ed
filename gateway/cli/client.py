"""Client-side helpers for the CLI and examples: an mTLS channel and readable errors from rich statuses."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


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


def secure_channel(target: str, identity: ClientIdentity) -> grpc.Channel:
    """An mTLS channel to the gateway."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=identity.ca.read_bytes(),
        private_key=identity.key.read_bytes(),
        certificate_chain=identity.cert.read_bytes(),
    )
    return grpc.secure_channel(target, creds)


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """The parts of a rich gRPC error a client acts on."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """Decode the status code, message and ErrorInfo of a failed call."""
    call = error  # grpc.Call and grpc.RpcError are the same object for unary calls
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    reason, metadata = "", {}
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    return ErrorDetails(code, message, reason, metadata)


def describe_error(error: grpc.RpcError) -> str:
    """One line for a human: CODE (REASON): message."""
    d = error_details(error)
    reason = f" ({d.reason})" if d.reason else ""
    return f"{d.code.name}{reason}: {d.message}"


def reports_rpc_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command whose failed RPC prints as a readable error on stderr (`describe_error`) and exits 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except grpc.RpcError as exc:
            print(describe_error(exc), file=sys.stderr)
            return 1

    return run
