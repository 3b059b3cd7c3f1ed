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


# issue-gov: the ErrorReply message of a plan refused by the data owner's cap (the gateway maps it to
# RESOURCE_EXHAUSTED with level=dataset_cap), and of a request id the sandbox has already executed.
CAP_MESSAGE = "data owner's cap"
DUPLICATE_MESSAGE = "request id already executed"
