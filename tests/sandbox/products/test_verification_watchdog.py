"""The sandbox's verification watchdog: one shared thread interrupts statements past their deadline."""

from __future__ import annotations

import time

import duckdb
import pytest

from sandbox.products.verification import _WATCHDOG


def test_verification_watchdog_interrupts_a_statement_past_its_deadline() -> None:
    """The shared watchdog interrupts a long statement at its deadline and leaves quick ones alone."""
    con = duckdb.connect()
    cur = con.cursor()
    with _WATCHDOG.watch(cur, 5.0):
        assert cur.execute("SELECT 42").fetchall() == [(42,)]
    started = time.monotonic()
    with pytest.raises(duckdb.InterruptException), _WATCHDOG.watch(cur, 0.2):
        cur.execute("SELECT count(*) FROM range(10000000000) a, range(1000) b").fetchall()
    assert 0.15 < time.monotonic() - started < 5.0
    with _WATCHDOG.watch(cur, 5.0):  # the cursor is usable again
        assert cur.execute("SELECT 1").fetchall() == [(1,)]
