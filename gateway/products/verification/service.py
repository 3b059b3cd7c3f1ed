"""The verification product's check pipeline: yes/no checks with the owner's templates, caps, alerts, signed receipts.

Verification walks the governed path (`gateway.path.governed`) with check caps in place of a privacy budget:
identity, revocation and the live policy snapshot come from the interceptor; then, for a check (each
before the data is touched, except the last two):
1. the consumer holds a `[[verification_grants]]` entry (`gateway.policy.grants`) for (dataset, template,
   purpose) in the call's policy snapshot -- otherwise PERMISSION_DENIED / VERIFICATION_ACCESS_DENIED
   (unknown templates look the same);
2. the subject has the template's format, with valid check character and date (INVALID_SUBJECT);
3. the parameters are exactly the declared ones, each from its list or ladder (INVALID_PARAMETER);
4. a case reference is present where the template requires one (CASE_REFERENCE_REQUIRED);
5. the client's deadline has not passed (DEADLINE_EXCEEDED, nothing charged); the per-consumer,
   per-template and per-subject caps of the period are checked and charged in one `BEGIN IMMEDIATE`
   transaction of the state database per chunk of up to 25,000 claims, in claim order
   (RESOURCE_EXHAUSTED / VERIFICATION_CAP_EXHAUSTED; a state that cannot be written in time is
   UNAVAILABLE / STATE_UNAVAILABLE, saying how many checks stay charged);
6. the sandbox counts the chunk's claims on the data owner's per-subject cap (all consumers; it refuses a
   claim over it before evaluating it: CAP_EXHAUSTED for that claim, cap "owner_subject"), evaluates the
   owner's template for the other claims (one set-wise join) and returns their outcomes (and bands), while
   the next chunk is charged. A chunk that reached the sandbox stays charged whatever happens next (the data
   may have been touched); when the request fails, every chunk that never reached it (its call failed
   before sending, or it was never sent) is refunded exactly, durably (`VerificationState.refund`), and the
   error is UNAVAILABLE;
7. enumeration counters are updated (the same statements for found and not-found subjects), the receipts
   are issued (one Merkle tree and one signature per request, `gateway.products.verification.receipts`) and the
   request is audited (one entry committing to the tree's signed root) before any answer leaves.

The method bodies that read the requests and stream the answers are `gateway.rpc.verification`; a request's
claims and its answer are `gateway.products.verification.claims`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import grpc

from gateway.errors import (
    GatewayError,
    GatewayInternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    QueryExecutionError,
    SandboxUnavailableError,
    StateUnavailableError,
)
from gateway.path.supervisor import SandboxSupervisor
from gateway.policy.grants import VerificationGrant, VerificationPolicy
from gateway.products.verification.claims import CheckAnswer, ClaimBatch, ClaimIn, ClaimOut, canonical_params
from gateway.products.verification.receipts import KeyedHasher, issue_receipts
from gateway.products.verification.state import CapCharge, VerificationState
from gateway.release.oversight import Oversight
from gateway.release.signing import Signer
from gateway.sizes import CASE_REFERENCE_CHARS
from gateway.storage.pg import PgDatabase
from sandbox.client import SandboxClient, SandboxConnectionError
from sandbox.errors import STORAGE_MESSAGE
from sandbox.protocol.messages import ErrorReply, Scalar
from sandbox.protocol.verification import (
    MATCH,
    MAX_BATCH,
    NO_MATCH,
    DescribeTemplatesRequest,
    TemplateInfo,
    TemplatesInfo,
    VerifyClaimsRequest,
    VerifyClaimsResult,
    subject_problems,
)

__all__ = ["RESULT_NAMES", "VerificationCapExhaustedError", "VerificationCore"]

log = logging.getLogger("gateway.products.verification.service")

RESULT_NAMES = {MATCH: "MATCH", NO_MATCH: "NO_MATCH", 2: "NOT_FOUND"}
MAX_CASE_REFERENCE = CASE_REFERENCE_CHARS


class VerificationCapExhaustedError(GatewayError):
    """A verification cap of the period is spent (per consumer, per template, or per subject)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "VERIFICATION_CAP_EXHAUSTED"


def _state_error(exc: StateUnavailableError, charged: int) -> StateUnavailableError:
    """The state failure as the client sees it: what stays charged (a retry checks and charges again)."""
    what = (f"{charged} checks of this request were charged before it and stay charged" if charged
            else "nothing was charged")
    return StateUnavailableError(f"{exc.message}; {what}", charged=str(charged))


def _issued_at(now: float) -> str:
    """Fixed width (27 characters) so receipts of one kind have one size."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_CAP_MESSAGES = {
    "consumer": "the consumer's verification cap for this period is spent",
    "template": "the cap of checks with this template for this period is spent",
    "subject": "the cap of checks of this subject with this template for this period is spent",
    "owner_subject": "the data owner's cap of checks of this subject with this template for this period is spent",
}
_FIELD_OF = {"INVALID_SUBJECT": "subject", "CASE_REFERENCE_REQUIRED": "case_reference"}


class _Stopwatch:
    """Seconds per named stage, in order."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._t
        self._t = now


@dataclass
class VerificationCore:
    """Everything a check needs; the servicer only converts."""

    client: SandboxClient
    templates: TemplatesInfo
    state: VerificationState
    signer: Signer
    hasher: KeyedHasher
    public_pem: str = ""
    clock: Callable[[], float] = time.time
    sandbox_timeout_s: float = 30.0
    oversight: Oversight | None = None
    batch_timings: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=32))  # recent batches' stages
    supervisor: SandboxSupervisor | None = None  # told at once when the sandbox cannot be reached
    _hashes: dict[str, str] = field(default_factory=dict)

    MAX_PARAM_CACHE: ClassVar[int] = 10_000
    PIPELINE_CHUNK: ClassVar[int] = 25_000

    @classmethod
    def start(cls, vpolicy: VerificationPolicy, client: SandboxClient, state_dir: Path, signer: Signer,
              sandbox_timeout_s: float = 30.0, oversight: Oversight | None = None,
              database: PgDatabase | None = None) -> VerificationCore:
        """Open the cap state (with `vpolicy`'s durability: in `database`, else ``verification.sqlite3`` in
        `state_dir`) and the HMAC key; fetch the templates from the sandbox. Receipts are signed by `signer`,
        the gateway's signing key (`KeyService` publishes it)."""
        reply = client.call(DescribeTemplatesRequest())
        if not isinstance(reply, TemplatesInfo):
            raise SandboxConnectionError(f"unexpected reply to describe-templates: {type(reply).__name__}")
        state = VerificationState(database or state_dir / "verification.sqlite3", durability=vpolicy.cap_durability)
        return cls(client, reply, state, signer, KeyedHasher(state_dir / "verification-hmac.key"),
                   signer.public_pem.decode("ascii"), sandbox_timeout_s=sandbox_timeout_s, oversight=oversight)

    # -- authorisation ------------------------------------------------------------------------------

    def authorise(self, vpolicy: VerificationPolicy, consumer: str, dataset: str, template: str, purpose: str
                  ) -> tuple[VerificationGrant, TemplateInfo]:
        """The grant (in the call's policy snapshot) and template, or PERMISSION_DENIED (unknown templates
        look the same)."""
        grant = vpolicy.grant(consumer, dataset, template, purpose)
        info = self.templates.template(dataset, template)
        if grant is None or info is None:
            raise PermissionDeniedError(
                f"no verification grant for template {template!r} of dataset {dataset!r} and purpose "
                f"{purpose!r}", reason="VERIFICATION_ACCESS_DENIED", dataset=dataset, template=template,
                purpose=purpose)
        return grant, info

    def granted_templates(self, vpolicy: VerificationPolicy, consumer: str
                          ) -> list[tuple[TemplateInfo, list[VerificationGrant]]]:
        """The templates this consumer holds grants for, with the grants."""
        out = []
        for t in self.templates.templates:
            gs = [g for g in vpolicy.grants
                  if (g.consumer, g.dataset, g.template) == (consumer, t.dataset, t.name)]
            if gs:
                out.append((t, gs))
        return out

    # -- validation ---------------------------------------------------------------------------------

    @staticmethod
    def claim_problem(info: TemplateInfo, claim: ClaimIn) -> tuple[str, str] | None:
        """(reason, message) of the first problem with the claim, or None. Independent of data."""
        return VerificationCore.problems(info, ClaimBatch.of([claim])).get(0)

    @staticmethod
    def problems(info: TemplateInfo, claims: ClaimBatch) -> dict[int, tuple[str, str]]:
        """{index: (reason, message)} of the first problem of every invalid claim. Independent of data.

        Order of checks per claim: subject, parameters, case reference length, case reference presence;
        the checks run column-wise (subjects vectorised, each distinct parameter set once) and the
        earlier problem wins.
        """
        out: dict[int, tuple[str, str]] = {}
        refs = claims.case_references
        if info.requires_case_reference:
            msg = f"template {info.name!r} requires a consent or case reference with every check"
            out.update((i, ("CASE_REFERENCE_REQUIRED", msg)) for i, r in enumerate(refs) if not r.strip())
        if any(len(r) > MAX_CASE_REFERENCE for r in refs):
            msg = f"case_reference must be at most {MAX_CASE_REFERENCE} characters"
            out.update((i, ("INVALID_PARAMETER", msg)) for i, r in enumerate(refs) if len(r) > MAX_CASE_REFERENCE)
        bad_sets = {k: p for k, s in enumerate(claims.param_sets) if (p := info.params_problem(s))}
        if bad_sets:
            out.update((i, ("INVALID_PARAMETER", bad_sets[k])) for i, k in enumerate(claims.param_index)
                       if k in bad_sets)
        for i, problem in subject_problems(info.subject_format, claims.subjects).items():
            out[i] = ("INVALID_SUBJECT", f"subject is not a valid {info.subject_format}: {problem}")
        return out

    def _params_hash(self, dataset: str, template: str, params: dict[str, Scalar]) -> str:
        canon = canonical_params(params)
        h = self._hashes.get(canon)
        if h is None:
            h = self.hasher.hex("params", dataset, template, canon)
            if len(self._hashes) < self.MAX_PARAM_CACHE:
                self._hashes[canon] = h
        return h

    # -- the check ----------------------------------------------------------------------------------

    def check(self, vpolicy: VerificationPolicy, consumer: str, dataset: str, template: str, purpose: str,
              claims: list[ClaimIn], *, single: bool) -> list[ClaimOut]:
        """`check_batch` for a list of claims, one ClaimOut per claim (single checks, tests)."""
        answer = self.check_batch(vpolicy, consumer, dataset, template, purpose, ClaimBatch.of(claims),
                                  single=single)
        return [answer.claim(i) for i in range(answer.size)]

    def check_batch(self, vpolicy: VerificationPolicy, consumer: str, dataset: str, template: str, purpose: str,
                    claims: ClaimBatch, *, single: bool, deadline: Callable[[str], None] | None = None
                    ) -> CheckAnswer:
        """Validate, charge, evaluate, count, and sign; refusals of a single check raise.

        A batch runs as a pipeline of chunks of `PIPELINE_CHUNK` claims, in order: the caps of chunk j+1
        are checked and charged (one transaction per chunk, in a worker thread; SQLite releases the GIL)
        while the sandbox evaluates chunk j (a second worker, waiting on the sandbox's socket) and this
        thread derives the keyed hashes and receipt payloads. Every claim is charged before the sandbox
        sees it, chunks are charged in claim order (so a subject repeated within a batch meets its cap
        exactly as in one transaction), and each transaction is atomic against concurrent requests. If the
        request fails, the chunks that never reached the sandbox are refunded (`_refund_unsent`).
        All answered claims then share one Merkle tree and one signature.

        Stages (seconds in `CheckAnswer.timings`; the middle ones overlap, `pipeline` is their wall time):
        `validate` (subjects vectorised, each distinct parameter set once), `hash` (parameter sets and case
        references), then per chunk the subjects' keyed hashes (request thread), `caps` (worker), `sandbox`
        (worker), `claims` (claim hashes and payloads, request thread), `pipeline`, `alerts`, `receipts`
        (Merkle tree and signature).
        """
        clock = _Stopwatch()
        grant, info = self.authorise(vpolicy, consumer, dataset, template, purpose)
        n = len(claims)
        if n == 0:
            raise InvalidArgumentError("the batch carries no claims", reason="INVALID_BATCH", field="claims")
        if n > MAX_BATCH:
            raise InvalidArgumentError(f"a batch carries 1 to {MAX_BATCH} claims", reason="BATCH_TOO_LARGE",
                                       field="claims", limit=str(MAX_BATCH), size=str(n))
        refusals = self.problems(info, claims)
        if single and refusals:
            reason, message = refusals[0]
            raise InvalidArgumentError(message, reason=reason, field=_FIELD_OF.get(reason, "parameters"),
                                       template=template)
        valid = [i for i in range(n) if i not in refusals] if refusals else list(range(n))
        clock.lap("validate")
        now = self.clock()
        subjects, refs, index = claims.subjects, claims.case_references, claims.param_index
        subj: list[str] = []  # the subjects' keyed hashes (hex), computed chunk by chunk below

        def hash_subjects(a: int, b: int) -> None:
            subj.extend(h.hex() for h in self.hasher.digests("subject", dataset,
                                                             last=[subjects[i] for i in valid[a:b]]))

        set_hex = [self._params_hash(dataset, template, p) for p in claims.param_sets]
        prm = [set_hex[index[i]] for i in valid]
        case = [self.hasher.hex("case", refs[i]) if refs[i] else "" for i in valid] if any(refs) else None
        clock.lap("hash")
        if not valid:
            return CheckAnswer(n, refusals, [], (), [], None, clock.timings)
        if deadline is not None:
            deadline("the checks are charged")
        batch_id = uuid.uuid4().hex
        head = ""  # the payloads' common part, once the sandbox has named the data version
        labels = info.band_labels
        band_json = {b: json.dumps(labels[b] if labels and b >= 0 else "", ensure_ascii=False)
                     for b in range(-1, len(labels))}
        names = RESULT_NAMES
        timings = clock.timings
        admitted: list[int] = []
        outcomes: list[int] = []
        bands: list[str] = []
        payloads: list[bytes] = []
        not_found = 0
        step = self.PIPELINE_CHUNK
        spans = [(a, min(len(valid), a + step)) for a in range(0, len(valid), step)]
        failed = threading.Event()
        taken: dict[int, CapCharge] = {}  # chunk -> what its charge took
        sent: set[int] = set()  # chunks whose claims may have reached the sandbox
        charged_claims = [0]  # claims charged so far (by the caps worker, or this thread)

        def charge(j: int, a: int, b: int) -> list[str | None]:
            if failed.is_set():  # an earlier chunk failed: charge nothing more
                raise QueryExecutionError()
            t = time.perf_counter()
            out, taken[j] = self.state.charge_refundable(
                consumer=consumer, grant=grant, policy=vpolicy, subjects=subj[a:b], params=prm[a:b],
                case_references=None if case is None else case[a:b], now=now)
            charged_claims[0] += out.count(None)
            timings["caps"] = timings.get("caps", 0.0) + time.perf_counter() - t
            return out

        def evaluate(j: int, chunk: list[int]) -> VerifyClaimsResult:
            t = time.perf_counter()
            sent.add(j)
            try:
                return self._evaluate(consumer, info, claims, chunk, f"verify-{batch_id}-{j}")
            except SandboxUnavailableError:
                sent.discard(j)  # the call failed before sending: these claims never reached the sandbox
                raise
            finally:
                timings["sandbox"] = timings.get("sandbox", 0.0) + time.perf_counter() - t

        # Workers only for a batch of several chunks: a single check stays on this thread.
        caps_pool = ThreadPoolExecutor(1, "verification-caps") if len(spans) > 1 else None
        sandbox_pool = ThreadPoolExecutor(1, "verification-sandbox") if len(spans) > 1 else None
        try:
            t_pipe = time.perf_counter()
            charged = []
            for j, (a, b) in enumerate(spans):  # chunk j is charged (worker) while this thread hashes chunk j + 1
                hash_subjects(a, b)
                if caps_pool is not None:
                    charged.append(caps_pool.submit(charge, j, a, b))
            pending: list[tuple[int, list[int], list[bytes], Future[VerifyClaimsResult] | None]] = []
            for j, (a, b) in enumerate(spans):
                why = charged[j].result() if caps_pool else charge(j, a, b)
                chunk, kept = [], []
                for pos, cap in enumerate(why, start=a):
                    i = valid[pos]
                    if cap is None:
                        chunk.append(i)
                        kept.append(pos)
                    elif single:
                        raise VerificationCapExhaustedError(_CAP_MESSAGES[cap], cap=cap, template=template,
                                                            period=vpolicy.period)
                    else:
                        refusals[i] = ("VERIFICATION_CAP_EXHAUSTED", _CAP_MESSAGES[cap])
                future = sandbox_pool.submit(evaluate, j, chunk) if sandbox_pool and chunk else None
                t = time.perf_counter()
                hashes = self.hasher.digests(
                    "claim", last=[f"{subj[pos]}\x00{prm[pos]}" for pos in kept])
                timings["claims"] = timings.get("claims", 0.0) + time.perf_counter() - t
                pending.append((j, chunk, hashes, future))
            for j, chunk, hashes, future in pending:
                if not chunk:
                    continue
                result = future.result() if future is not None else evaluate(j, chunk)
                if result.capped:  # the data owner's per-subject cap (all consumers), counted by the sandbox
                    chunk, hashes = self._owner_capped(result, chunk, hashes, refusals, single, template)
                    if not chunk:
                        continue
                t = time.perf_counter()
                if not head:
                    head = json.dumps({"v": 1, "consumer": consumer, "dataset": dataset, "template": template,
                                       "purpose": purpose, "data_version": result.dataset_version,
                                       "issued_at": _issued_at(now), "key_id": self.signer.key_id},
                                      separators=(",", ":"), ensure_ascii=False)[:-1]
                not_found += result.not_found
                base = len(admitted)
                payloads += [
                    f'{head},"id":"{batch_id}-{base + k:06d}","claim":"{c.hex()}","result":"{names[o]}",'
                    f'"band":{band_json[g if labels else -1]}}}'.encode()
                    for k, (c, o, g) in enumerate(zip(hashes, result.outcomes, result.bands, strict=True))]
                admitted += chunk
                outcomes += result.outcomes
                bands += [labels[g] if labels and g >= 0 else "" for g in result.bands]
                timings["claims"] = timings.get("claims", 0.0) + time.perf_counter() - t
            timings["pipeline"] = time.perf_counter() - t_pipe
        except BaseException as exc:
            failed.set()
            for pool in (caps_pool, sandbox_pool):  # every charge and call settled before the refunds
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            refunded = self._refund_unsent(consumer, template, taken, sent)
            if isinstance(exc, StateUnavailableError):
                raise _state_error(exc, charged_claims[0] - refunded) from exc
            raise
        finally:
            for pool in (caps_pool, sandbox_pool):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        clock.lap("")
        timings.pop("", None)
        if not admitted:
            return CheckAnswer(n, refusals, [], (), [], None, timings)
        try:
            self.state.record_not_found(consumer=consumer, dataset=dataset, template=template,
                                        not_found=not_found, window_seconds=vpolicy.alert_window_seconds,
                                        alert_limit=vpolicy.alert_not_found_per_window, now=now)
        except StateUnavailableError as exc:
            raise _state_error(exc, charged_claims[0]) from exc
        clock.lap("alerts")
        receipts = issue_receipts(self.signer, payloads)
        clock.lap("receipts")
        return CheckAnswer(n, refusals, admitted, tuple(outcomes), bands, receipts, timings)

    @staticmethod
    def _owner_capped(result: VerifyClaimsResult, chunk: list[int], hashes: list[bytes],
                      refusals: dict[int, tuple[str, str]], single: bool, template: str
                      ) -> tuple[list[int], list[bytes]]:
        """Refuse the claims the sandbox capped (per claim: CAP_EXHAUSTED; a single check raises), and return
        the chunk's answered claims and their claim hashes, in order."""
        capped = set(result.capped)
        if single:
            raise VerificationCapExhaustedError(_CAP_MESSAGES["owner_subject"], cap="owner_subject",
                                                template=template)
        for j in result.capped:
            refusals[chunk[j]] = ("VERIFICATION_CAP_EXHAUSTED", _CAP_MESSAGES["owner_subject"])
        return ([i for j, i in enumerate(chunk) if j not in capped],
                [h for j, h in enumerate(hashes) if j not in capped])

    def _refund_unsent(self, consumer: str, template: str, taken: dict[int, CapCharge], sent: set[int]) -> int:
        """Refund every charged chunk of a failed request that never reached the sandbox; the claims refunded."""
        refunded = 0
        for j, took in sorted(taken.items()):
            if j in sent or took.claims == 0:
                continue
            try:
                self.state.refund(took)
            except Exception:
                log.exception("the refund of %d %s checks of %s failed; they stay charged", took.claims,
                              template, consumer)
                continue
            refunded += took.claims
            log.info("refunded %d %s checks of %s that never reached the sandbox", took.claims, template,
                     consumer)
        return refunded

    def _evaluate(self, consumer: str, info: TemplateInfo, claims: ClaimBatch, admitted: list[int],
                  request_id: str) -> VerifyClaimsResult:
        subjects, index, sets = claims.subjects, claims.param_index, claims.param_sets
        columns = []
        for p in info.parameters:
            per_set = [s[p.name] for s in sets]
            columns.append((p.name, tuple(per_set[index[i]] for i in admitted)))
        req = VerifyClaimsRequest(
            request_id=f"{consumer}/{request_id}", dataset=info.dataset, template=info.name,
            subjects=tuple(subjects[i] for i in admitted), params=tuple(columns),
        )
        try:
            reply = self.client.call(req, self.sandbox_timeout_s)
        except SandboxConnectionError as exc:
            if self.supervisor is not None:
                self.supervisor.recover_in_background(hung=exc.timed_out)
            if exc.before_send:
                raise SandboxUnavailableError(
                    "the sandbox is not reachable; checks that never reached it were not charged") from exc
            raise QueryExecutionError() from exc
        if isinstance(reply, VerifyClaimsResult) and len(reply.outcomes) + len(reply.capped) == len(admitted) and all(
                0 <= j < len(admitted) for j in reply.capped):
            return reply
        if isinstance(reply, ErrorReply) and reply.kind == "failed":
            raise QueryExecutionError()
        if isinstance(reply, ErrorReply) and reply.kind == "rejected" and reply.message == STORAGE_MESSAGE:
            raise SandboxUnavailableError(  # refused before anything was touched: the chunk is refunded
                "the data owner's cap ledger is unavailable; checks that never reached the data were not charged",
                reason="SANDBOX_STORAGE_UNAVAILABLE")
        log.error("unexpected sandbox reply to a verification: %s", type(reply).__name__)  # never its values
        raise GatewayInternalError()
