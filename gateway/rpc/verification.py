"""privacy_gateway.v1.VerificationService: the method bodies, reading claims from the wire and streaming answers.

The check itself is the verification product's pipeline (`gateway.products.verification.service.VerificationCore`);
here a request's claims are read (a streamed batch column-wise, each claim's fields against their limits as it is
read: `gateway.rpc.limits.check_claims`), and the answer is written back as protos, a batch's in chunks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from privacy_gateway.v1 import verification_service_pb2 as v_pb

from gateway.errors import InvalidArgumentError
from gateway.path.calls import Call
from gateway.products.verification.claims import CheckAnswer, ClaimBatch
from gateway.products.verification.service import VerificationCore
from gateway.rpc.interceptor import Body, Runner
from gateway.rpc.limits import check_claim_parameters, check_claims
from gateway.sizes import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES
from gateway.storage.diskspace import DiskGuard
from sandbox.protocol.messages import Scalar
from sandbox.protocol.verification import MATCH, MAX_BATCH, NO_MATCH

__all__ = ["RESPONSE_CHUNK", "VerificationServicer", "batch_responses", "param_from_pb", "param_to_pb"]

RESULT_PB = {MATCH: v_pb.VERIFICATION_RESULT_MATCH, NO_MATCH: v_pb.VERIFICATION_RESULT_NO_MATCH,
             2: v_pb.VERIFICATION_RESULT_NOT_FOUND}
RESPONSE_CHUNK = 2000


def param_from_pb(v: v_pb.ParamValue) -> Scalar:
    """A typed parameter value from its proto form (unset: None, refused by validation)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    value: Scalar = getattr(v, kind)
    return value


def param_to_pb(v: Scalar) -> v_pb.ParamValue:
    """The proto form of a parameter value."""
    if isinstance(v, bool):
        return v_pb.ParamValue(bool_value=v)
    if isinstance(v, int):
        return v_pb.ParamValue(int64_value=v)
    if isinstance(v, float):
        return v_pb.ParamValue(double_value=v)
    return v_pb.ParamValue(string_value=str(v))


def _params(parameters: Any) -> dict[str, Scalar]:
    return {k: param_from_pb(v) for k, v in parameters.items()}


class _BatchReader:
    """Claims of a streamed batch, read column-wise straight from the protos.

    A claim's parameter map is keyed by its serialized values (a batch repeats a few ladder rungs), so
    each distinct set is decoded once; about 3 µs per claim instead of a dict of decoded values each.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.subjects: list[str] = []
        self.case_references: list[str] = []
        self.param_index: list[int] = []
        self.param_sets: list[dict[str, Scalar]] = []
        self._sets: dict[Any, int] = {}

    def add(self, claims: Any) -> None:
        """Append the claims of one request chunk, after checking their limits (`gateway.rpc.limits`).

        Raises:
            InvalidArgumentError: FIELD_TOO_LONG naming the first claim over a limit.
        """
        start = len(self.subjects)
        subjects = [c.subject for c in claims]
        references = [c.case_reference for c in claims]
        check_claims(subjects, references, start)
        self.subjects.extend(subjects)
        self.case_references.extend(references)
        names, sets, index = self.names, self._sets, self.param_index
        if len(names) == 1:
            name = names[0]
            keys: list[Any] = []
            for c in claims:
                m = c.parameters
                v = m.get(name)
                keys.append(v.SerializeToString() if v is not None and len(m) == 1 else ("raw", id(c)))
        else:
            keys = [self._key(c.parameters) for c in claims]
        for i, (c, key) in enumerate(zip(claims, keys, strict=True), start=start):
            k = sets.get(key)
            if k is None:
                params = _params(c.parameters)
                check_claim_parameters(i, params)  # each distinct set once
                k = len(self.param_sets)
                if not (isinstance(key, tuple) and key and key[0] == "raw"):  # never share an odd claim's key
                    sets[key] = k
                self.param_sets.append(params)
            index.append(k)

    def _key(self, m: Any) -> Any:
        values = [m.get(n) for n in self.names]
        if len(m) != len(self.names) or any(v is None for v in values):
            return ("raw", id(m))
        return tuple(v.SerializeToString() for v in values)

    def batch(self) -> ClaimBatch:
        """The claims read so far."""
        return ClaimBatch(self.subjects, self.param_index, self.param_sets, self.case_references)

    def __len__(self) -> int:
        return len(self.subjects)


_STATUS_PB = {"INVALID_SUBJECT": v_pb.CLAIM_STATUS_INVALID_SUBJECT,
              "INVALID_PARAMETER": v_pb.CLAIM_STATUS_INVALID_PARAMETER,
              "CASE_REFERENCE_REQUIRED": v_pb.CLAIM_STATUS_CASE_REFERENCE_REQUIRED,
              "VERIFICATION_CAP_EXHAUSTED": v_pb.CLAIM_STATUS_CAP_EXHAUSTED}


def batch_responses(answer: CheckAnswer, chunk: int = RESPONSE_CHUNK) -> Iterator[v_pb.VerifyBatchResponse]:
    """The response stream: one ClaimResult per claim, in order, `chunk` per message, built lazily (gRPC
    sends a chunk while the next one is built)."""
    receipts = answer.receipts
    refusals = answer.refusals
    position = {i: k for k, i in enumerate(answer.admitted)} if refusals else None
    common = v_pb.VerificationReceipt()  # the fields every receipt of the tree shares, copied in C
    if receipts is not None:
        common.signature, common.key_id, common.tree_size = receipts.signature, receipts.key_id, receipts.size
    for start in range(0, answer.size, chunk):
        response = v_pb.VerifyBatchResponse()
        add = response.results.add
        for i in range(start, min(answer.size, start + chunk)):
            refusal = refusals.get(i) if refusals else None
            if refusal is not None:
                add(index=i, status=_STATUS_PB[refusal[0]], status_message=refusal[1])
                continue
            k = i if position is None else position[i]
            assert receipts is not None
            r = add(index=i, result=RESULT_PB[answer.outcomes[k]], band=answer.bands[k]).receipt
            r.CopyFrom(common)
            r.payload = receipts.payloads[k]
            r.leaf_index = k
            r.audit_path = receipts.paths[k]
        yield response


class VerificationServicer:
    """privacy_gateway.v1.VerificationService: method bodies run by the governance interceptor.

    Every Verify and VerifyBatch is audited by the interceptor before its answer leaves: one entry per
    request, whose released digest is the SHA-256 of the signed root message of the request's receipt tree,
    so the audit log commits to every answered claim's receipt (a receipt's payload and audit path lead to
    that root). Refusals and failures are audited too. Grants come from the call's policy snapshot, so a
    reload or a revocation applies from the next call.
    """

    SERVICE: ClassVar[str] = "VerificationService"

    def __init__(self, core: VerificationCore, disk: DiskGuard | None = None) -> None:
        """Serve `core`; refuse new checks while `disk` is short of room to record them."""
        self.core = core
        self.disk = disk

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {"ListTemplates": Body(self._list_templates), "Verify": Body(self._verify),
                "VerifyBatch": Body(self._verify_batch, "stream")}

    def _list_templates(self, request: v_pb.ListTemplatesRequest, call: Call) -> v_pb.ListTemplatesResponse:
        vpolicy = call.require_policy().verification
        out = []
        for t, grants in self.core.granted_templates(vpolicy, call.identity):
            out.append(v_pb.Template(
                dataset=t.dataset, name=t.name, description=t.description, subject_format=t.subject_format,
                parameters=[v_pb.TemplateParameter(
                    name=p.name, type=p.type, description=p.description, max_length=p.max_length or 0,
                    allowed=[param_to_pb(v) for v in p.allowed or ()],
                    ladder=[param_to_pb(v) for v in p.ladder or ()]) for p in t.parameters],
                band_labels=list(t.band_labels), not_found_as_no_match=t.not_found_as_no_match,
                requires_case_reference=t.requires_case_reference,
                purposes=sorted(g.purpose for g in grants),
                max_checks_per_period=min(g.max_checks_per_period for g in grants),
                max_checks_per_subject_per_period=min(g.max_checks_per_subject_per_period for g in grants),
                period=vpolicy.period))
        return v_pb.ListTemplatesResponse(templates=out, receipt_public_key_pem=self.core.public_pem,
                                          receipt_key_id=self.core.signer.key_id)

    def _verify(self, request: v_pb.VerifyRequest, call: Call) -> v_pb.VerifyResponse:
        _audit_head(call, request.dataset, request.template, request.purpose)
        claims = ClaimBatch([request.subject], [0], [_params(request.parameters)], [request.case_reference])
        answer = self._check(call, (request.dataset, request.template, request.purpose), claims, single=True)
        assert answer.receipts is not None
        return v_pb.VerifyResponse(result=RESULT_PB[answer.outcomes[0]], band=answer.bands[0],
                                   receipt=answer.receipts.receipt(0).to_pb())

    def _before_charge(self, call: Call, step: str) -> None:
        call.check_deadline(step)
        if self.disk is not None:
            self.disk.check()

    def _check(self, call: Call, head: tuple[str, str, str], claims: ClaimBatch, *, single: bool) -> CheckAnswer:
        answer = self.core.check_batch(call.require_policy().verification, call.identity, *head, claims,
                                       single=single, deadline=lambda step: self._before_charge(call, step))
        answered = len(answer.admitted)
        call.audit.query = f"VERIFY {head[1]} claims={answer.size} answered={answered}"
        if answer.receipts is not None:
            call.audit.released = answer.receipts.root_message()
        return answer

    async def _verify_batch(self, requests: AsyncIterator[v_pb.VerifyBatchRequest], call: Call,
                            run: Runner) -> Iterator[v_pb.VerifyBatchResponse]:
        """Receive every chunk (refused early if the first names no grant), check, then answer in chunks."""
        t = time.perf_counter()
        head: tuple[str, str, str] | None = None
        reader: _BatchReader | None = None
        chunks: list[Any] = []
        count = messages = size = 0
        async for chunk in requests:  # each checked against the request limits as it arrived (interceptor)
            messages += 1
            size += chunk.ByteSize()
            if messages > MAX_BATCH_MESSAGES or size > MAX_BATCH_BYTES:
                raise InvalidArgumentError(
                    f"a batch is at most {MAX_BATCH_MESSAGES} messages and {MAX_BATCH_BYTES // 2**20} MiB",
                    reason="BATCH_TOO_LARGE", field="claims", limit=f"{MAX_BATCH_MESSAGES} messages, "
                    f"{MAX_BATCH_BYTES} bytes", size=f"{messages} messages, {size} bytes")
            this = (chunk.dataset, chunk.template, chunk.purpose)
            if head is None:
                head = this
                _audit_head(call, *head)
            elif any(this) and this != head:
                raise InvalidArgumentError("dataset, template and purpose must not change within a batch",
                                           reason="INVALID_BATCH", field="template")
            if reader is None:  # refuse early, before reading 100,000 claims
                reader = await run(self._reader, call, head)
            count += len(chunk.claims)
            if count > MAX_BATCH:
                raise InvalidArgumentError(f"a batch carries 1 to {MAX_BATCH} claims", reason="BATCH_TOO_LARGE",
                                           field="claims", limit=str(MAX_BATCH), size=str(count))
            chunks.append(chunk.claims)
        if head is None or reader is None or count == 0:
            raise InvalidArgumentError("the batch carries no claims", reason="INVALID_BATCH", field="claims")
        received = time.perf_counter() - t
        answer: CheckAnswer = await run(self._read_and_check, call, head, reader, chunks)
        answer.timings["read"] = received + answer.timings.get("read", 0.0)
        return self._responses(answer)

    def _reader(self, call: Call, head: tuple[str, str, str]) -> _BatchReader:
        _, info = self.core.authorise(call.require_policy().verification, call.identity, *head)
        return _BatchReader(tuple(p.name for p in info.parameters))

    def _read_and_check(self, call: Call, head: tuple[str, str, str], reader: _BatchReader,
                        chunks: list[Any]) -> CheckAnswer:
        t = time.perf_counter()
        for claims in chunks:
            reader.add(claims)
        read = time.perf_counter() - t
        answer = self._check(call, head, reader.batch(), single=False)
        answer.timings["read"] = read
        return answer

    def _responses(self, answer: CheckAnswer) -> Iterator[v_pb.VerifyBatchResponse]:
        t = time.perf_counter()
        yield from batch_responses(answer)
        self.core.batch_timings.append({**answer.timings, "respond": time.perf_counter() - t})


def _audit_head(call: Call, dataset: str, template: str, purpose: str) -> None:
    call.audit.dataset, call.audit.purpose = dataset, purpose
    call.audit.query = f"VERIFY {template}"
