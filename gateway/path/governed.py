"""The governed path: the one pipeline every product request walks, in this order.

    identity      the verified certificate's common name          (gateway.rpc.interceptor)
    live policy   one snapshot of the policy for the whole call,   (gateway.rpc.interceptor, Gate.session)
                  revocations and roles checked against it
    authorise     the product's grant in that snapshot             (Product.price)
    price         what the release costs, from the plan alone      (Product.price, OpenDP)
    deadline      refused if the client's deadline has passed      (GovernedPath.release)
    charge        every level in one durable transaction: member,  (GovernedPath.release -> Governor.reserve)
                  organisation x dataset x purpose x period, the
                  data owner's cap; a retried request id replays
    sandbox       re-prices from the owner's catalog, enforces the (GovernedPath._sandbox)
                  owner's cap, dedupes the request id, computes,
                  adds the noise
    release       the response, its signed receipt, stored for     (GovernedPath.release)
                  replay in the charge's completing transaction
    audit         one entry per call with what it charged          (gateway.rpc.interceptor, Call.audit)

A product (query, model; verification walks the same steps with check caps instead of a privacy
budget, see `gateway.products.verification.service`) describes only what it computes and how it is priced: it implements
`Product`, and `GovernedPath.release` calls its parts in the order above. A product cannot skip a step:
it never touches the ledger, the receipt signer or the audit log itself.

Every decision before the sandbox depends only on the request and the policy, never on data. A failure
that never reached the sandbox charges nothing; a failure after the data was touched stays charged and
comes back as one uniform error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from google.protobuf.message import Message

from gateway.budgets.governor import Governor, owner_refusal
from gateway.budgets.ledger import GrantKey, PriorRelease, PrivacyLoss, Reservation
from gateway.budgets.stores import LedgerStore, ReleaseStore, TxWrite
from gateway.errors import (
    GatewayError,
    GatewayInternalError,
    QueryExecutionError,
    SandboxUnavailableError,
    StorageUnavailableError,
)
from gateway.path.calls import Call, audit_fields
from gateway.path.supervisor import SandboxSupervisor
from gateway.release.digests import normalize_sql
from gateway.release.oversight import Oversight
from gateway.release.receipts import attach_receipt, release_bytes
from gateway.storage.diskspace import DiskGuard
from sandbox.client import SandboxClient, SandboxConnectionError
from sandbox.errors import DUPLICATE_MESSAGE, STORAGE_MESSAGE
from sandbox.pricing.cap_rules import ReleaseLoss
from sandbox.protocol.messages import ErrorReply
from sandbox.protocol.messages import Message as SandboxMessage

__all__ = ["ChargePlan", "GovernedPath", "Priced", "Product"]

log = logging.getLogger("gateway.path.governed")


@dataclass(frozen=True, slots=True)
class ChargePlan:
    """What the charge step reserves: the member's grant, the request id, and the cost at every level.

    `cost` is in the grant's own terms (epsilon and delta; rho and delta for a zCDP grant); `units` is
    the number of releases, billed per request unit for commercial purposes. `owner_loss` is the release's
    loss in its own definition when `cost` does not say it (a logistic model: its composed rho), for what
    it counts on the data owner's cap (`Governor.owner_charge`); None: derived from `cost`.
    """

    key: GrantKey
    request_id: str
    fingerprint: str
    cost: PrivacyLoss
    units: int
    product: str
    owner_loss: ReleaseLoss | None = None
    product_budget: PrivacyLoss | None = None  # the most this product may spend of the grant (a model grant)


@dataclass(frozen=True, slots=True)
class Priced:
    """A product request that passed every check before the charge, with its price.

    `cached`: the serialized answer of the very same release made earlier (the charge-once cache); it is
    recorded at zero cost and the sandbox is not asked again. `payload` is the product's own (its plan).
    """

    charge: ChargePlan
    payload: Any
    description: str  # what the audit log and the receipt digest record of the request
    cached: bytes | None = None
    cache_key: str | None = None


class Product(Protocol):
    """What a product describes: how a request is authorised and priced, what the sandbox computes, and
    how the answer is rendered. `GovernedPath.release` runs the rest."""

    name: ClassVar[str]

    def price(self, call: Call, request: Any) -> Priced:
        """Validate, authorise against `call.policy` and price; PERMISSION_DENIED/INVALID_ARGUMENT otherwise."""

    def sandbox_request(self, priced: Priced, sandbox_request_id: str) -> SandboxMessage:
        """The message the sandbox answers (a plan, never SQL)."""

    def respond(self, call: Call, priced: Priced, reply: SandboxMessage, reservation: Reservation) -> Message:
        """The response for the sandbox's reply, without its receipt.

        Raises:
            GatewayInternalError: the reply is not what was charged for (its costs differ).
        """

    def from_cache(self, call: Call, priced: Priced, reservation: Reservation) -> Message:
        """The cached answer as this request's response (recorded at zero cost)."""

    def replay(self, call: Call, prior: PriorRelease) -> Message:
        """The stored answer of an earlier call with this request id."""


class GovernedPath:
    """Runs a product request through charge, sandbox, release and the audit facts (see the module docstring)."""

    def __init__(
        self, governor: Governor, ledger: LedgerStore, sandbox: SandboxClient, *, sandbox_timeout_s: float,
        supervisor: SandboxSupervisor | None = None, cache: ReleaseStore | None = None,
        oversight: Oversight | None = None, disk: DiskGuard | None = None,
    ) -> None:
        """Charge through `governor` into `ledger`; answer through `sandbox`; sign with `oversight`'s key; refuse
        new charges while `disk` is short of room to settle them."""
        self.governor = governor
        self.ledger = ledger
        self.sandbox = sandbox
        self.sandbox_timeout_s = sandbox_timeout_s
        self.supervisor = supervisor
        self.cache = cache
        self.oversight = oversight
        self.disk = disk
        # Charges whose settlement failed for want of storage: (key, request id, its audit entry), settled as
        # failed by the settler once storage recovers (`gateway.path.settle`).
        self.unsettled: deque[tuple[GrantKey, str, list[TxWrite]]] = deque()
        # (consumer, request id) of the charges this process's calls hold between reserve and settlement: the
        # settler leaves them to their call even when this process's lease lapsed (storage was down).
        self.in_flight: set[tuple[str, str]] = set()

    def release(self, call: Call, product: Product, request: Any) -> Message:
        """Authorise, price, charge at every level, run in the sandbox, sign, store, and release.

        Raises:
            GatewayError: a refusal before the charge (nothing charged), RESOURCE_EXHAUSTED from a level that
                cannot pay (nothing charged), or a failure after it (charged unless the sandbox never
                received the request).
        """
        call.audit.dataset = str(getattr(request, "dataset", ""))
        call.audit.purpose = str(getattr(request, "purpose", ""))
        call.audit.request_id = str(getattr(request, "request_id", ""))  # bounded by gateway.rpc.limits
        priced = product.price(call, request)
        plan = priced.charge
        call.audit.request_id, call.audit.query = plan.request_id, priced.description
        call.check_deadline("the charge")
        if self.disk is not None:
            self.disk.check()  # room to settle the charge, or STORAGE_LOW before anything is charged
        cached = priced.cached is not None
        cost = PrivacyLoss(0.0, 0.0) if cached else plan.cost
        outcome = self.governor.reserve(
            plan.key, request_id=plan.request_id, fingerprint=plan.fingerprint, cost=cost,
            request_units=0 if cached else plan.units, durable=False,
            loss=None if cached else plan.owner_loss, product=plan.product, product_budget=plan.product_budget,
        )
        if isinstance(outcome, PriorRelease):
            response = product.replay(call, outcome)
            call.audit.replayed = True
            call.audit.released = release_bytes(response)
            self._outcome(call, plan, "replayed", 0.0)
            return response
        # From here the call's audit entry records the charge, and is written in the transaction that settles
        # it (completed, failed), so the audit log accounts for every charge the ledger holds.
        call.audit.charged, call.audit.cached = True, cached
        call.audit.epsilon, call.audit.delta, call.audit.rho = cost.epsilon, cost.delta, cost.rho
        with self._settled(call, plan):
            if cached:
                response = product.from_cache(call, priced, outcome)
            else:
                reply = self._sandbox(call, plan,
                                      product.sandbox_request(priced, f"{plan.key.consumer}/{plan.request_id}"))
                response = product.respond(call, priced, reply, outcome)
            self._sign(call, plan, priced, response)
            call.audit.released = release_bytes(response)
            body = response.SerializeToString(deterministic=True)
            self._complete(call, plan, body, None if cached else priced.cache_key)
        return response

    # -- steps -----------------------------------------------------------------------------------------

    @contextmanager
    def _settled(self, call: Call, plan: ChargePlan) -> Iterator[None]:
        """After the reservation: if anything below fails unplanned, keep the charge and make it durable, with
        the call's audit entry, before the error leaves (the reservation committed without its own fsync;
        every planned exit -- `complete`, `fail`, `release_unused` -- commits durably)."""
        held = (plan.key.consumer, plan.request_id)
        self.in_flight.add(held)
        try:
            yield
        except BaseException as exc:
            if not call.audit.written and call.audit.charged:
                error = exc if isinstance(exc, GatewayError) else GatewayInternalError()
                try:
                    self._fail(call, plan, error)
                except StorageUnavailableError:  # storage broke: the settler retries until it recovers
                    self.unsettled.append((plan.key, plan.request_id, self._audited(call, error)))
                    call.audit.charged = False  # the entry settling the charge is the settler's to write
                except GatewayError:  # already failed, refunded or completed, each durably with its entry
                    log.debug("charge of request %s already settled", plan.request_id)
                    call.audit.charged = False  # the call's own entry must not count the charge a second time
            raise
        finally:
            self.in_flight.discard(held)

    def _fail(self, call: Call, plan: ChargePlan, error: GatewayError) -> None:
        """Settle the charge as failed (it stays) with the call's audit entry, in one transaction."""
        self.ledger.fail(plan.key, plan.request_id, also=self._audited(call, error))
        call.audit.written = self.oversight is not None

    def _refund(self, call: Call, plan: ChargePlan) -> None:
        """Refund the charge (the sandbox never saw the request): the call's entry records no charge."""
        self.ledger.release_unused(plan.key, plan.request_id)
        call.audit.charged = False
        call.audit.epsilon = call.audit.delta = call.audit.rho = 0.0

    def _audited(self, call: Call, error: GatewayError | None) -> list[TxWrite]:
        """The call's audit entry as a write joined to the settling transaction (none without an audit log)."""
        if self.oversight is None:
            return []
        fields = audit_fields(call, "OK" if error is None else error.code.name, "" if error is None else error.reason)
        return [self.oversight.joined_rpc(**fields)]

    def _sandbox(self, call: Call, plan: ChargePlan, message: SandboxMessage) -> SandboxMessage:
        """Send the charged request to the sandbox; settle the charge of every failure.

        Nothing reached the sandbox: refund and UNAVAILABLE. Lost after sending, or a failure inside: the
        charge stays (the data may have been touched) and the error is uniform. A refusal by the sandbox
        before it touched data (the owner's cap, a duplicate request id, a plan it prices differently):
        refund.
        """
        key, request_id = plan.key, plan.request_id
        try:
            reply = self.sandbox.call(message, timeout_s=self.sandbox_timeout_s)
        except SandboxConnectionError as exc:
            if exc.before_send:
                self._refund(call, plan)
                self._recover(hung=False)
                raise SandboxUnavailableError("the sandbox is not reachable; nothing was charged") from exc
            log.warning("sandbox connection lost during request %s: %s", request_id, exc)
            failure = QueryExecutionError(charged=plan.cost.epsilon)
            self._fail(call, plan, failure)
            self._recover(hung=exc.timed_out)
            raise failure from exc
        if isinstance(reply, ErrorReply):
            if reply.kind == "failed":
                failure = QueryExecutionError(charged=plan.cost.epsilon)
                self._fail(call, plan, failure)
                raise failure
            self._refund(call, plan)
            if reply.kind == "rejected":  # the data owner's cap (periodic, lifetime, or its definition)
                owner_refusal(reply.message, key.dataset, key.purpose)
            if reply.kind == "rejected" and reply.message == STORAGE_MESSAGE:
                raise StorageUnavailableError("the data owner's cap ledger is unavailable; nothing was charged; "
                                              "retry with the same request id", reason="SANDBOX_STORAGE_UNAVAILABLE")
            if reply.kind == "rejected" and reply.message == DUPLICATE_MESSAGE:
                log.error("the sandbox has already seen request %s", request_id)
                raise GatewayInternalError("the sandbox refused a request id it had already answered")
            log.error("sandbox refused %s request %s: %s", plan.product, request_id, reply.message)
            raise GatewayInternalError("the sandbox refused the request")
        return reply

    def _recover(self, *, hung: bool) -> None:
        if self.supervisor is not None:
            self.supervisor.recover_in_background(hung=hung)

    def _sign(self, call: Call, plan: ChargePlan, priced: Priced, response: Message) -> None:
        """Attach the signed receipt (before the release is stored, so a replay returns the same one)."""
        if self.oversight is None:
            return
        attach_receipt(
            response, self.oversight.signer, consumer=plan.key.consumer, dataset=plan.key.dataset,
            purpose=plan.key.purpose, policy_version=self.oversight.policy_version,
            normalized_query=priced.description,
        )
        budget = getattr(response, "budget", None)
        if budget is not None:
            self.oversight.metrics.set_budget(plan.key.consumer, plan.key.dataset, plan.key.purpose,
                                              spent=budget.spent.epsilon, remaining=budget.remaining.epsilon)

    def _complete(self, call: Call, plan: ChargePlan, body: bytes, cache_key: str | None) -> None:
        """Store the answer for replays, the release in the cache and the 'charged' outcome, in the
        ledger's one completing transaction where they share its file (one fsync); then the alert hooks."""
        joined: list[TxWrite] = []
        cache_put = None
        if self.cache is not None and cache_key is not None:
            cache_put = self.cache.joined_put(self.ledger, cache_key, plan.key.consumer, body)
            joined += [cache_put] if cache_put is not None else []
        governor = self.governor
        outcome = governor.outcome(
            consumer=plan.key.consumer, dataset=plan.key.dataset, purpose=plan.key.purpose,
            request_id=plan.request_id, outcome="charged", epsilon=plan.cost.epsilon, sql=call.audit.query,
        )
        outcome_joined = None
        if outcome is not None:
            outcome_joined = governor.state.joined_outcome(self.ledger, outcome)
            joined += [outcome_joined] if outcome_joined is not None else []
        joined += self._audited(call, None)
        self.ledger.complete(plan.key, plan.request_id, body, also=joined)
        call.audit.written = self.oversight is not None
        if self.cache is not None and cache_key is not None and cache_put is None:
            self.cache.put(cache_key, plan.key.consumer, body)
        if outcome is not None:
            if outcome_joined is None:
                governor.store_outcome(outcome)
            governor.notify(outcome)

    def _outcome(self, call: Call, plan: ChargePlan, what: str, epsilon: float) -> None:
        self.governor.record_outcome(
            consumer=plan.key.consumer, dataset=plan.key.dataset, purpose=plan.key.purpose,
            request_id=plan.request_id, outcome=what, epsilon=epsilon, sql=call.audit.query,
        )

    def refused(self, call: Call, error: GatewayError) -> None:
        """Record a product request's refusal or failure for the alert rules (never raises)."""
        charged = error.charged_epsilon if isinstance(error, QueryExecutionError) else 0.0
        self.governor.record_outcome(
            consumer=call.identity, dataset=call.audit.dataset, purpose=call.audit.purpose,
            request_id=call.audit.request_id, outcome="failed" if isinstance(error, QueryExecutionError)
            else "refused", reason=error.reason, epsilon=charged, sql=call.audit.query,
        )


def describe_sql(sql: str) -> str:
    """The normalised SQL a query's audit entry and receipt digest record."""
    return normalize_sql(sql)
