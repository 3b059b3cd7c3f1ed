"""Errors the sandbox raises itself. The gateway re-exports ConfigError; sandbox never imports gateway."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file is invalid. The message is `file: key: problem`."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem


class PlanRejectedError(Exception):
    """The sandbox refused a plan before touching data (unknown table/column, cost above authorisation).

    The message depends only on the plan and the data owner's catalog, never on the data.
    """


class ExecutionFailedError(Exception):
    """Execution failed after touching data (timeout, memory, engine error). Reported uniformly."""


# The ErrorReply messages of a request refused by the data owner's periodic cap and lifetime cap (the gateway
# maps them to RESOURCE_EXHAUSTED with level dataset_cap / dataset_cap_lifetime), of a request id the sandbox
# has already executed, and the prefix of a release the owner's cap cannot count in its definition (mapped to
# FAILED_PRECONDITION, reason OWNER_CAP_INCOMPATIBLE; the rest of the message says why).
CAP_MESSAGE = "data owner's cap"
CAP_LIFETIME_MESSAGE = "data owner's lifetime cap"
DUPLICATE_MESSAGE = "request id already executed"
# The owner's cap ledger could not be written (disk full, I/O error): refused before any data is touched.
STORAGE_MESSAGE = "the data owner's cap ledger is unavailable"
INCOMPATIBLE_PREFIX = "owner cap: "
