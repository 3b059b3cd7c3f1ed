"""`pgw serve` as an operator runs it: a real process that reloads its policy on SIGHUP, atomically.

The process is started exactly like `make serve` (without --dev), so the signal handler, the logging set-up and
the reload path are the production ones. A good file takes effect for the next request; a broken file is
refused with a log line naming the file, the key and the problem, and the running policy stays as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from privacy_gateway.v1 import admin_service_pb2 as a_pb

from gateway.identity import certs
from gateway.settings import ROOT
from tests.gov_helpers import IDENTITIES, POLICY_V2, admin, channel, fails, query
from tests.helpers import Env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class ServeProcess:
    """A `python -m gateway serve` child process and the lines it has logged so far."""

    def __init__(self, proc: subprocess.Popen[str], tls: Path, policy: Path) -> None:
        self.proc, self.tls, self.policy = proc, tls, policy
        self.lines: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = re.match(r"gateway ready port=(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._ready.set()

    def wait_ready(self, timeout: float = 120) -> None:
        if not self._ready.wait(timeout):
            raise AssertionError("pgw serve did not become ready:\n" + "\n".join(self.lines[-30:]))

    def wait_for(self, pattern: str, since: int, timeout: float = 20) -> str:
        """The first line logged after line `since` that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[since:]:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines[since:]))

    def ch(self, name: str) -> grpc.Channel:
        return channel(self.tls, self.port, name)


@pytest.fixture(scope="module")
def served(env: Env) -> Iterator[ServeProcess]:
    root = Path(tempfile.mkdtemp(prefix="pgw-hup-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=IDENTITIES)
    policy = root / "operator.toml"
    policy.write_text(POLICY_V2)
    cmd = [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0", "--policy", str(policy),
           "--catalog", str(ROOT / "policies" / "catalog.toml"), "--data-dir", str(env.data_dir),
           "--state-dir", str(root / "state"), "--tls-dir", str(tls)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    served = ServeProcess(proc, tls, policy)
    try:
        served.wait_ready()
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    assert rc == 0, "pgw serve did not stop cleanly on SIGTERM:\n" + "\n".join(served.lines[-30:])


def _bank_budget(served: ServeProcess) -> float:
    with served.ch("ops-admin") as ch:
        orgs = admin(ch).ListOrganizations(a_pb.ListOrganizationsRequest(), timeout=30).organizations
    [grant] = [g for o in orgs if o.id == "bank" for g in o.grants]
    return float(grant.budget.budget.epsilon)


def _hup_until(served: ServeProcess, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Send SIGHUP and wait until `condition()` holds (the reload runs on its own thread)."""
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the reload did not take effect:\n" + "\n".join(served.lines[-20:]))
        time.sleep(0.05)


def test_sighup_applies_a_good_policy_for_the_next_request(served: ServeProcess) -> None:
    assert _bank_budget(served) == 3.0
    served.policy.write_text(POLICY_V2.replace("epsilon = 3.0", "epsilon = 5.0", 1))
    _hup_until(served, lambda: _bank_budget(served) == 5.0)
    with served.ch("analyst") as ch:
        assert query(ch, 0.1, "credit").HasField("budget")


def test_sighup_with_a_broken_file_changes_nothing_and_says_why(served: ServeProcess) -> None:
    before = _bank_budget(served)
    good = served.policy.read_text()
    for broken, where in (
        (good.replace(f"epsilon = {before:.1f}", "epsilon = nan", 1), r"grants\[0\]\.epsilon"),
        (good.replace('use_class = "commercial"', 'use_class = "gratis"', 1), r"purposes\.credit\.use_class"),
        (good + "\n[[grants]\norganization = ", r"operator\.toml"),  # not even TOML
    ):
        served.policy.write_text(broken)
        since = len(served.lines)
        served.proc.send_signal(signal.SIGHUP)
        line = served.wait_for(r"policy reload refused", since)
        assert re.search(where, line), line
        assert str(served.policy.name) in line, line
        assert _bank_budget(served) == before
        with served.ch("analyst") as ch:  # still serving with the old policy
            assert query(ch, 0.1, "credit").HasField("budget")
    served.policy.write_text(good)


def test_sighup_removing_a_member_refuses_its_next_request(served: ServeProcess) -> None:
    with served.ch("intern") as ch:
        assert query(ch, 0.1, "credit").HasField("budget")
    without = served.policy.read_text().replace(
        '[organizations.bank.members.intern]\nroles = ["consumer"]\n', "").replace(
        "[grants.members.intern]\nepsilon = 1.0\ndelta = 0.0\n", "")
    assert "intern" not in without
    served.policy.write_text(without)

    def intern_gone() -> bool:
        with served.ch("ops-admin") as ch:
            orgs = admin(ch).ListOrganizations(a_pb.ListOrganizationsRequest(), timeout=30).organizations
        return "intern" not in {m.identity for o in orgs for m in o.members}

    _hup_until(served, intern_gone)
    with served.ch("intern") as ch:
        err = fails(query, ch, 0.1, "credit")
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    with served.ch("analyst") as ch:
        assert query(ch, 0.1, "credit").HasField("budget")
