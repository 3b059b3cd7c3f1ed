"""examples/client.py, the analyst's worked session, run as a user would against a real gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT
from tests.helpers import Env, isolated_settings

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def own_gateway(env: Env) -> Iterator[Gateway]:
    """A gateway with a fresh ledger: the session spends budgets other tests count on."""
    g = start_gateway(isolated_settings(env, "example-client"))
    yield g
    g.stop()


def _run(env: Env, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "client.py"), "--target", f"127.0.0.1:{port}",
                           "--tls-dir", str(env.tls_dir), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_session_runs_and_verifies_its_receipt(env: Env, own_gateway: Gateway) -> None:
    out = _run(env, own_gateway.port, "--as", "analyst", "--purpose", "testing")
    assert out.returncode == 0, out.stderr
    assert "[replayed: not charged again]" in out.stdout and "signature valid" in out.stdout
    assert "refused: INVALID_ARGUMENT (" in out.stdout and "95% CI" in out.stdout


def test_a_spent_budget_is_one_line_not_a_traceback(env: Env, own_gateway: Gateway) -> None:
    """planner's grant (epsilon 1) cannot pay for the whole session (1.1): the run ends with a message."""
    out = _run(env, own_gateway.port, "--as", "planner", "--purpose", "planning")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "the privacy budget is spent: RESOURCE_EXHAUSTED (PRIVACY_BUDGET_EXHAUSTED)" in out.stderr, out.stderr
