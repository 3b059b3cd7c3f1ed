"""The sandbox's log lines on stderr, and how the gateway reads them back.

The sandbox writes either text (`--log-format text`, for a person running it by hand) or one JSON object
per line (`--log-format json`, what a gateway asks for): ``time`` (seconds since the epoch), ``level``,
``logger``, ``message``, and ``request_id`` when the line is about one request (``extra={"request_id":
...}``). The gateway forwards every line into its own logging (`sandbox.client.SandboxProcess`).

Nothing about the data leaves the sandbox in a log line: messages name requests, tables and states, never
values or SQL, and an exception is rendered as its type and the code locations of its traceback, never
its message (a DuckDB error can quote a value from the data).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

__all__ = ["JsonLineFormatter", "LogLine", "SafeTextFormatter", "configure", "parse_line", "safe_exception"]

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

MAX_LINE_CHARS = 16_384
_TEXT_LINE = re.compile(r"^\S+ \S+ sandbox (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}


def _short(filename: str) -> str:
    """A frame's file relative to the repository (`sandbox/engine/engine.py`), or its last two parts."""
    parts = filename.split("/")
    for top in ("sandbox", "gateway"):
        if top in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(top):])
    return "/".join(parts[-2:])


def safe_exception(exc_info: ExcInfo) -> str:
    """`Type at file:line in function <- ...` for an exception and its causes, without any message."""
    _, exc, _ = exc_info
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(parts) < 4:
        seen.add(id(exc))
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        frames = traceback.extract_tb(exc.__traceback__)[-6:]
        where = " <- ".join(f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in reversed(frames))
        parts.append(f"{name} at {where}" if where else name)
        exc = exc.__cause__ or exc.__context__
    return "; caused by ".join(parts)


class SafeTextFormatter(logging.Formatter):
    """`time sandbox LEVEL message`, with exceptions rendered by `safe_exception`."""

    def __init__(self) -> None:
        """The sandbox's text format."""
        super().__init__("%(asctime)s sandbox %(levelname)s %(message)s")

    def formatException(self, ei: ExcInfo) -> str:
        """The exception's types and code locations, never its message."""
        return "  " + safe_exception(ei)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for `record`."""
        obj: dict[str, object] = {"time": round(record.created, 6), "level": record.levelname,
                                  "logger": record.name, "message": record.getMessage()}
        request_id = getattr(record, "request_id", None)
        if isinstance(request_id, str) and request_id:
            obj["request_id"] = request_id
        if record.exc_info:
            obj["exception"] = safe_exception(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send the sandbox's logging to stderr in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else SafeTextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line the sandbox wrote, as the gateway logs it."""

    level: int
    message: str
    request_id: str | None = None
    created: float | None = None


def parse_line(line: str) -> LogLine:
    """Read one stderr line: a JSON log line, a text log line, or anything else (WARNING, verbatim)."""
    text = line.rstrip("\r\n")[:MAX_LINE_CHARS]
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            message = obj["message"]
            if isinstance(obj.get("exception"), str):
                message = f"{message} [{obj['exception']}]"
            rid = obj.get("request_id")
            created = obj.get("time")
            return LogLine(_LEVELS.get(str(obj.get("level")), logging.WARNING), message,
                           rid if isinstance(rid, str) and rid else None,
                           float(created) if isinstance(created, int | float) else None)
    match = _TEXT_LINE.match(text)
    if match:
        return LogLine(_LEVELS[match.group(1)], match.group(2))
    return LogLine(logging.WARNING, text)
