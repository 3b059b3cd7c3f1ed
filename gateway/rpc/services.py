"""The gateway's own gRPC services as method bodies: convert the request, call the product or the view.

Every method here is a `Body` run by the governance interceptor (`gateway.rpc.interceptor`), which has
already authenticated the caller, checked its role and revocation against the call's policy snapshot,
admitted the call, and will write its audit entry; errors are `GatewayError`s, rendered there. Product
methods (RunQuery, TrainModel, EvaluateModel) go through `GovernedPath.release`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import receipt_pb2

from gateway.budgets.ledger import GrantKey
from gateway.errors import GatewayError, PermissionDeniedError
from gateway.path.calls import Call
from gateway.path.governed import GovernedPath, Product
from gateway.products.models.service import EvaluateProduct, TrainProduct
from gateway.products.query import convert
from gateway.products.query.service import QueryService
from gateway.release.signing import Signer
from gateway.rpc.interceptor import Body

__all__ = ["BudgetServicer", "CatalogServicer", "KeyServicer", "ModelServicer", "QueryServicer"]


def _release(path: GovernedPath, product: Product, request: Any, call: Call) -> Any:
    """`path.release`, recording a refusal or failure for the alert rules."""
    try:
        return path.release(call, product, request)
    except GatewayError as exc:
        path.refused(call, exc)
        raise


class QueryServicer:
    """privacy_gateway.v1.QueryService."""

    SERVICE: ClassVar[str] = "QueryService"

    def __init__(self, path: GovernedPath, queries: QueryService) -> None:
        """Serve `queries` through `path`."""
        self.path = path
        self.queries = queries

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {"RunQuery": Body(lambda request, call: _release(self.path, self.queries, request, call)),
                "ExplainQuery": Body(lambda request, call: self.queries.explain(call, request))}


class ModelServicer:
    """privacy_gateway.v1.ModelService."""

    SERVICE: ClassVar[str] = "ModelService"

    def __init__(self, path: GovernedPath, train: TrainProduct, evaluate: EvaluateProduct) -> None:
        """Serve the model products through `path`."""
        self.path = path
        self.train = train
        self.evaluate = evaluate

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {"TrainModel": Body(lambda request, call: _release(self.path, self.train, request, call)),
                "EvaluateModel": Body(lambda request, call: _release(self.path, self.evaluate, request, call))}


class CatalogServicer:
    """privacy_gateway.v1.CatalogService: the public catalog, limited to granted datasets."""

    SERVICE: ClassVar[str] = "CatalogService"

    def __init__(self, queries: QueryService) -> None:
        """Describe `queries.catalog`."""
        self.queries = queries

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {"ListDatasets": Body(self._list), "GetDataset": Body(self._get)}

    @staticmethod
    def _granted(call: Call) -> dict[str, list[str]]:
        purposes: dict[str, list[str]] = {}
        for g in call.require_policy().grants_of(call.identity):
            purposes.setdefault(g.dataset, []).append(g.purpose)
        return purposes

    def _list(self, request: cat_pb.ListDatasetsRequest, call: Call) -> cat_pb.ListDatasetsResponse:
        granted = self._granted(call)
        return cat_pb.ListDatasetsResponse(datasets=[
            convert.dataset(d, granted[d.name]) for d in self.queries.catalog.datasets if d.name in granted])

    def _get(self, request: cat_pb.GetDatasetRequest, call: Call) -> cat_pb.Dataset:
        call.audit.dataset = request.name
        granted = self._granted(call)
        info = self.queries.catalog.dataset(request.name)
        if info is None or request.name not in granted:
            raise PermissionDeniedError(f"no grant for dataset {request.name!r}", dataset=request.name)
        return convert.dataset(info, granted[request.name])


class BudgetServicer:
    """privacy_gateway.v1.BudgetService."""

    SERVICE: ClassVar[str] = "BudgetService"

    def __init__(self, queries: QueryService) -> None:
        """Read budgets through `queries.governor`."""
        self.queries = queries

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {"GetPrivacyBudget": Body(self._budget)}

    def _budget(self, request: b_pb.GetPrivacyBudgetRequest, call: Call) -> b_pb.GetPrivacyBudgetResponse:
        """The caller's grants and what remains of them (every level, this period)."""
        call.audit.dataset = request.dataset
        statuses = [
            self.queries.governor.budget_status(GrantKey(g.consumer, g.dataset, g.purpose))
            for g in call.require_policy().grants_of(call.identity)
            if not request.dataset or g.dataset == request.dataset
        ]
        return b_pb.GetPrivacyBudgetResponse(consumer=call.identity, grants=statuses)


class KeyServicer:
    """privacy_gateway.v1.KeyService: the public key that verifies receipts and audit seals."""

    SERVICE: ClassVar[str] = "KeyService"

    def __init__(self, signer: Signer) -> None:
        """Serve `signer`'s public key."""
        self.signer = signer

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {"GetPublicKey": Body(self._key)}

    def _key(self, request: receipt_pb2.GetPublicKeyRequest, call: Call) -> receipt_pb2.GetPublicKeyResponse:
        return receipt_pb2.GetPublicKeyResponse(
            key_id=self.signer.key_id, public_key_pem=self.signer.public_pem.decode("ascii"), algorithm="Ed25519")

