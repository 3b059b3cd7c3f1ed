"""Structured JSON logging: one JSON object per line, with the request context from contextvars.

Each line has ``time`` (UTC ISO 8601), ``level``, ``logger``, ``message``, and when known ``request_id``,
``consumer``, ``rpc`` (from ``log_context``), and the whitelisted ``extra=`` keys ``outcome``,
``duration_ms``, ``code``, ``reason``, ``dataset``, ``purpose``, ``query_digest``, ``epsilon``; any other
extra (``values``, ``rows``, ...) is dropped. SQL never reaches a log line: an extra named ``sql`` or
``query`` becomes ``query_digest`` (SHA-256 of the normalized text). Log messages themselves must not
interpolate SQL or values; log the digest (``query_fields``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO

from gateway.release.digests import normalize_sql, query_digest

__all__ = ["JsonFormatter", "install_json_logging", "log_context", "query_fields"]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("pgw_request_id", default=None)
_consumer: contextvars.ContextVar[str | None] = contextvars.ContextVar("pgw_consumer", default=None)
_rpc: contextvars.ContextVar[str | None] = contextvars.ContextVar("pgw_rpc", default=None)

_CONTEXT_FIELDS = ("request_id", "consumer", "rpc")
_EXTRA_FIELDS = ("outcome", "duration_ms", "code", "reason", "dataset", "purpose", "query_digest", "epsilon")
_SQL_KEYS = ("sql", "query")


@contextmanager
def log_context(
    *, request_id: str | None = None, consumer: str | None = None, rpc: str | None = None
) -> Iterator[None]:
    """Sets the request context for every log line emitted inside the block (this thread/task only)."""
    tokens = [
        (var, var.set(value))
        for var, value in ((_request_id, request_id), (_consumer, consumer), (_rpc, rpc))
        if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def query_fields(sql: str) -> dict[str, str]:
    """``extra=`` for a log call about a query: only its digest."""
    return {"query_digest": query_digest(normalize_sql(sql))}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for ``record``."""
        obj: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in zip(_CONTEXT_FIELDS, (_request_id, _consumer, _rpc), strict=True):
            value = getattr(record, name, None) or var.get()
            if value is not None:
                obj[name] = value
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                obj[name] = getattr(record, name)
        for name in _SQL_KEYS:
            text = getattr(record, name, None)
            if isinstance(text, str) and "query_digest" not in obj:
                obj["query_digest"] = query_digest(normalize_sql(text))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))


def install_json_logging(level: int | str = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """Replaces the root logger's handlers with one JSON-lines handler on ``stream`` (default stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
