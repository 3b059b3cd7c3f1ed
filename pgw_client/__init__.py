"""The Python client of the privacy gateway: DP SQL answers as typed results and DataFrames, budgets, the
catalog, yes/no verification and signed receipts, over gRPC with mutual TLS.

    from pgw_client import Client
    client = Client("127.0.0.1:50051", tls_dir=".state/certs", identity="acme-bank-analyst")
    result = client.query("SELECT COUNT(*) AS n FROM residents", dataset="registry",
                          purpose="credit-risk", epsilon=0.2)
    result.rows, result.to_arrow(), result.to_pandas(), result.receipt.save("receipt.json")

It depends on the generated stubs (`privacy_gateway.v1`), grpcio, grpcio-status and cryptography only;
pyarrow, pandas and polars are imported when a conversion asks for them.
"""

from pgw_client.client import DEFAULT_TARGET, Check, Client, Explanation, RetryPolicy
from pgw_client.errors import (
    BudgetExhausted,
    Busy,
    ClientError,
    ClientSetupError,
    Conflict,
    DeadlineExceeded,
    GatewayError,
    InternalError,
    InvalidQuery,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ReceiptError,
    Unauthenticated,
    Unavailable,
)
from pgw_client.models import Confusion, Estimate, Evaluation, Model
from pgw_client.receipts import Receipt, load_receipts
from pgw_client.results import Budget, Column, Dataset, Noise, PrivacyLoss, Result
from pgw_client.tls import Credentials

__all__ = [
    "DEFAULT_TARGET",
    "Budget",
    "BudgetExhausted",
    "Busy",
    "Check",
    "Client",
    "ClientError",
    "ClientSetupError",
    "Column",
    "Conflict",
    "Confusion",
    "Credentials",
    "Dataset",
    "DeadlineExceeded",
    "Estimate",
    "Evaluation",
    "Explanation",
    "GatewayError",
    "InternalError",
    "InvalidQuery",
    "InvalidRequest",
    "Model",
    "Noise",
    "NotFound",
    "PermissionDenied",
    "PrivacyLoss",
    "Receipt",
    "ReceiptError",
    "Result",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "load_receipts",
]
