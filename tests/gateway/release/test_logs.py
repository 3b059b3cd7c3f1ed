"""Unit tests for gateway.release.logs: JSON lines, request context, no SQL literals or values."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from gateway.release.digests import normalize_sql, query_digest
from gateway.release.logs import JsonFormatter, log_context, query_fields

SQL = "SELECT COUNT(*) FROM residents WHERE id_number = '11010519491231002X' AND income > 123456"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Each record is one JSON object with time, level, logger, message and the extras."""
    logger, stream = captured
    logger.info("rpc done", extra={"outcome": "answered", "duration_ms": 12.5})
    logger.warning("second\nline")
    first, second = _lines(stream)
    assert set(first) >= {"time", "level", "logger", "message", "outcome", "duration_ms"}
    assert (first["level"], first["logger"], first["message"]) == ("INFO", "test.logs", "rpc done")
    assert str(first["time"]).endswith("Z") and first["duration_ms"] == 12.5
    assert second["message"] == "second\nline"  # escaped inside one line


def test_request_context_propagates(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """log_context sets request_id/consumer/rpc for the block, per thread, and restores them after."""
    logger, stream = captured
    with log_context(request_id="req-1", consumer="analyst", rpc="QueryService/RunQuery"):
        logger.info("inside")
        worker = threading.Thread(target=lambda: logger.info("other thread"))
        worker.start()
        worker.join()
        with log_context(request_id="req-2"):
            logger.info("nested")
    logger.info("outside")
    inside, other, nested, outside = _lines(stream)
    assert (inside["request_id"], inside["consumer"], inside["rpc"]) == ("req-1", "analyst", "QueryService/RunQuery")
    assert "request_id" not in other  # a new thread does not inherit this request
    assert (nested["request_id"], nested["consumer"]) == ("req-2", "analyst")
    assert "request_id" not in outside and "consumer" not in outside


def test_sql_literals_never_logged(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """SQL passed as an extra becomes its digest; value-carrying extras are dropped."""
    logger, stream = captured
    logger.info("query refused", extra={"sql": SQL, "values": [123456], "rows": [["x"]]})
    logger.info("query answered", extra=query_fields(SQL))
    text = stream.getvalue()
    for secret in ("11010519491231002X", "123456", "residents", "id_number"):
        assert secret not in text
    refused, answered = _lines(stream)
    assert refused["query_digest"] == answered["query_digest"] == query_digest(normalize_sql(SQL))
    assert "values" not in refused and "rows" not in refused and "sql" not in refused
