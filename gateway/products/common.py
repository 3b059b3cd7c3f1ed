"""What every product checks and shows the same way: the privacy loss a request asks for, its request id and
required fields, and a privacy loss as the API shows it."""

from __future__ import annotations

import math

from privacy_gateway.v1 import common_pb2 as common_pb

from gateway.budgets.ledger import PrivacyLoss
from gateway.errors import InvalidArgumentError
from gateway.sizes import REQUEST_ID_CHARS

__all__ = [
    "MAX_REQUEST_ID_LENGTH",
    "MIN_EPSILON",
    "MIN_RHO",
    "check_request_id",
    "privacy_loss",
    "require",
    "validate_privacy_loss",
    "validate_rho",
]

MAX_REQUEST_ID_LENGTH = REQUEST_ID_CHARS
# Smaller epsilons give noise scales with no useful answer (and, below ~1e-308, infinite scales).
MIN_EPSILON = 1e-6
MIN_RHO = 1e-12  # zCDP: rho ~ epsilon^2 / 2


def validate_privacy_loss(epsilon: float, delta: float) -> None:
    """Refuse non-finite, zero or negative epsilon and delta outside [0, 1).

    Raises:
        InvalidArgumentError: reason INVALID_PRIVACY_LOSS, naming the field.
    """
    if not math.isfinite(epsilon) or epsilon < MIN_EPSILON:
        raise InvalidArgumentError(
            f"privacy_loss.epsilon must be a finite number of at least {MIN_EPSILON:g}, "
            f"got {epsilon!r}",
            reason="INVALID_PRIVACY_LOSS",
            field="privacy_loss.epsilon",
        )
    if not math.isfinite(delta) or not 0 <= delta < 1:
        raise InvalidArgumentError(
            f"privacy_loss.delta must be a finite number in [0, 1), got {delta!r}",
            reason="INVALID_PRIVACY_LOSS",
            field="privacy_loss.delta",
        )


def validate_rho(rho: float, epsilon: float) -> None:
    """Refuse a non-finite or too small rho, and a request that sets both rho and epsilon.

    Raises:
        InvalidArgumentError: reason INVALID_PRIVACY_LOSS, naming the field.
    """
    if not math.isnan(epsilon):
        raise InvalidArgumentError(
            "set either privacy_loss.epsilon (pure and approximate DP grants) or privacy_loss.rho "
            "(zcdp grants), not both",
            reason="INVALID_PRIVACY_LOSS",
            field="privacy_loss",
        )
    if not math.isfinite(rho) or rho < MIN_RHO:
        raise InvalidArgumentError(
            f"privacy_loss.rho must be a finite number of at least {MIN_RHO:g}, got {rho!r}",
            reason="INVALID_PRIVACY_LOSS",
            field="privacy_loss.rho",
        )


def require(value: str, field: str) -> None:
    """Refuse an empty (or blank) required field (MISSING_FIELD, naming it)."""
    if not value.strip():
        raise InvalidArgumentError(f"{field} is required", reason="MISSING_FIELD", field=field)


def check_request_id(request_id: str) -> None:
    """Refuse a request id longer than the API allows (INVALID_REQUEST_ID)."""
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgumentError(
            f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters",
            reason="INVALID_REQUEST_ID",
            field="request_id",
        )


def privacy_loss(loss: PrivacyLoss) -> common_pb.PrivacyLoss:
    """PrivacyLoss -> proto."""
    return common_pb.PrivacyLoss(epsilon=loss.epsilon, delta=loss.delta)
