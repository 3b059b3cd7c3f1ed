"""How large each part of a request may be: the numbers the gateway's API promises and enforces.

The request walker (`gateway.rpc.limits`) checks every field against these before a method body runs; the
products check the few they decide on again where they decide (a request id's length, a case reference's).
docs/reference.md's limits table is generated from them (`gateway.rpc.limits.markdown_table`).
"""

from __future__ import annotations

from sandbox.protocol.verification import MAX_BATCH

__all__ = [
    "CASE_REFERENCE_CHARS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_COEFFICIENT",
    "MAX_EPSILON",
    "MAX_EXPORT_BYTES",
    "MAX_EXPORT_ENTRIES",
    "MAX_HALF_WIDTH",
    "MAX_MESSAGE_BYTES",
    "MAX_OUTPUT_ENTRIES",
    "MAX_PAGE",
    "MAX_PARAMETERS",
    "MAX_RHO",
    "MAX_SEQ",
    "NAME_CHARS",
    "PARAM_STRING_CHARS",
    "REASON_CHARS",
    "RECEIPT_CHARS",
    "REQUEST_ID_CHARS",
    "SQL_CHARS",
    "SUBJECT_CHARS",
    "TERM_CHARS",
    "TIMESTAMP_CHARS",
    "WEIGHT_RANGE",
]

NAME_CHARS = 128  # datasets, purposes, organisations, identities, templates, tables, columns, outputs
REQUEST_ID_CHARS = 128
SQL_CHARS = 20_000
SUBJECT_CHARS = 64  # resident ids and credit codes have 18
CASE_REFERENCE_CHARS = 256
PARAM_STRING_CHARS = 1_000  # the largest `max_length` a template may declare
TERM_CHARS = 512  # "column=value" of a one-hot coefficient
REASON_CHARS = 1_024
TIMESTAMP_CHARS = 64
MAX_OUTPUT_ENTRIES = 256  # weights, accuracy targets and interval shares per query
MAX_PARAMETERS = 32
MAX_EPSILON = 1e6  # per request, and in grant adjustments: far above any policy's per-query maximum
MAX_RHO = 1e6
WEIGHT_RANGE = (1e-6, 1e6)
MAX_HALF_WIDTH = 1e18
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one message (grpc.max_receive_message_length)
MAX_BATCH_BYTES = 64 * 1024 * 1024  # all messages of one VerifyBatch stream together
MAX_BATCH_MESSAGES = MAX_BATCH + 1  # a header-only first message, then at least one claim per message
MAX_COEFFICIENT = 1e12
MAX_SEQ = 2_000_000_000  # audit sequence numbers and alert ids (far above any log this gateway keeps)
MAX_PAGE = 500  # audit entries per page
MAX_EXPORT_ENTRIES = 10_000  # audit entries per ExportAuditLog page
MAX_EXPORT_BYTES = MAX_MESSAGE_BYTES // 2  # an ExportAuditLog page's entries, so the whole page fits one message
RECEIPT_CHARS = 65_536  # a receipt file (a few KiB in practice)
