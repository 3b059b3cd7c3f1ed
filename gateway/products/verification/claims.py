"""A verification request's claims and its answer, column-wise: what the check pipeline reads and returns."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.products.verification.receipts import ReceiptBatch, ReceiptData
from sandbox.protocol.messages import Scalar

__all__ = ["CheckAnswer", "ClaimBatch", "ClaimIn", "ClaimOut", "canonical_params"]


@dataclass(frozen=True, slots=True)
class ClaimIn:
    """A claim as received: subject, typed parameters, case reference."""

    subject: str
    params: dict[str, Scalar]
    case_reference: str = ""


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    """Claims column-wise: claim i is (`subjects[i]`, `param_sets[param_index[i]]`, `case_references[i]`).

    A batch repeats a few parameter sets (ladder rungs), so each distinct set is validated and hashed once.
    """

    subjects: list[str]
    param_index: list[int]
    param_sets: list[dict[str, Scalar]]
    case_references: list[str]

    def __len__(self) -> int:
        """The number of claims."""
        return len(self.subjects)

    @classmethod
    def of(cls, claims: list[ClaimIn]) -> ClaimBatch:
        """Column-wise form of a list of claims."""
        sets: dict[str, int] = {}
        param_sets: list[dict[str, Scalar]] = []
        index = []
        for c in claims:
            key = canonical_params(c.params)
            k = sets.get(key)
            if k is None:
                k = sets[key] = len(param_sets)
                param_sets.append(c.params)
            index.append(k)
        return cls([c.subject for c in claims], index, param_sets, [c.case_reference for c in claims])


@dataclass(frozen=True, slots=True)
class CheckAnswer:
    """The answer to a request: refusals by claim index, and the answered claims in order.

    The k-th answered claim is claim `admitted[k]`, with `outcomes[k]`, `bands[k]` and leaf k of
    `receipts`. `timings` holds the seconds spent per stage (for the benchmark and the logs).
    """

    size: int
    refusals: dict[int, tuple[str, str]]
    admitted: list[int]
    outcomes: tuple[int, ...]
    bands: list[str]
    receipts: ReceiptBatch | None
    timings: dict[str, float]

    def claim(self, i: int) -> ClaimOut:
        """Claim i's answer as one object (slow path: single checks, tests)."""
        if i in self.refusals:
            return ClaimOut(*self.refusals[i])
        k = self.admitted.index(i)
        assert self.receipts is not None
        return ClaimOut("", "", self.outcomes[k], self.bands[k], self.receipts.receipt(k))


@dataclass(frozen=True, slots=True)
class ClaimOut:
    """A claim's answer, or its refusal (`status` is a reason, "" when answered)."""

    status: str = ""
    message: str = ""
    outcome: int = -1
    band: str = ""
    receipt: ReceiptData | None = None


def canonical_params(params: dict[str, Scalar]) -> str:
    """The parameter set as canonical text (sorted names): one key per distinct set."""
    return json.dumps(sorted(params.items()), separators=(",", ":"), ensure_ascii=False)
