"""Identity: the consumer is the common name of the verified client certificate, nothing else.

The TLS layer (mTLS, `require_client_auth=True`) has already refused callers without a certificate or with
one from another CA. Here the certificate's common name must name a consumer in the operator's policy;
request fields and metadata never influence identity.
"""

from __future__ import annotations

import grpc

from gateway.errors import UnauthenticatedError
from gateway.policy.model import Policy


def authenticate(context: grpc.ServicerContext, policy: Policy) -> str:
    """Return the consumer identity of the caller.

    Raises:
        UnauthenticatedError: no verified certificate, or its common name is not a known consumer.
    """
    identity = authenticate_certificate(context)
    if policy.consumer(identity) is None:
        raise UnauthenticatedError("the client certificate does not identify a known consumer")
    return identity


def authenticate_certificate(context: grpc.ServicerContext) -> str:
    """The verified certificate's common name, whatever its role (issue-gov: admin RPCs check roles).

    Raises:
        UnauthenticatedError: no verified certificate, or no single UTF-8 common name.
    """
    auth: dict[str, list[bytes]] = dict(context.auth_context())  # type: ignore[arg-type]
    if auth.get("transport_security_type") != [b"ssl"]:
        raise UnauthenticatedError("a client certificate is required")
    names = auth.get("x509_common_name") or []
    if len(names) != 1:
        raise UnauthenticatedError("the client certificate has no single common name")
    try:
        identity = names[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnauthenticatedError("the client certificate's common name is not UTF-8") from exc
    return identity
