"""Digests shared by the audit log, receipts and logs: normalized query text, query digest, release digest.

``normalize_sql`` drops comments and collapses whitespace outside quoted strings and identifiers, so
``query_digest`` is stable under reformatting but two different statements never normalize to the same
text because of a comment swallowing a line. It is a textual normalization, not the analyzer's canonical
form; the lead may pass the analyzer's canonical text instead, and receipts record which digest they carry.
"""

from __future__ import annotations

import functools
import hashlib

__all__ = ["digest_text", "normalize_sql", "query_digest", "release_digest", "sha256_hex"]


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=256)  # pure; a request normalizes its text twice (receipt and audit entry)
def normalize_sql(sql: str) -> str:
    """SQL with comments removed and runs of whitespace outside quotes collapsed to one space.

    Args:
        sql: The SQL text as received.

    Returns:
        The normalized text (quoted strings and quoted identifiers kept byte for byte).
    """
    out: list[str] = []
    i, n = 0, len(sql)
    pending_space = False
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote escapes itself
                        end += 2
                        continue
                    break
                end += 1
            token, i = sql[i : end + 1], end + 1
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
            pending_space = True
            continue
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close < 0 else close + 2
            pending_space = True
            continue
        elif ch.isspace():
            i += 1
            pending_space = True
            continue
        else:
            token, i = ch, i + 1
        if pending_space and out:
            out.append(" ")
        pending_space = False
        out.append(token)
    return "".join(out)


def query_digest(normalized_query: str) -> str:
    """Hex SHA-256 of the UTF-8 normalized query text (what receipts and logs carry instead of SQL)."""
    return sha256_hex(normalized_query.encode("utf-8"))


def release_digest(serialized_response: bytes) -> str:
    """Hex SHA-256 of a released answer's serialized bytes (see ``receipts.release_bytes``)."""
    return sha256_hex(serialized_response)


def digest_text(text: str) -> str:
    """What an unanswered call's audit entry keeps of its request text: its SHA-256 and size, not the text."""
    return f"sha256={query_digest(text)} chars={len(text)}" if text else ""
