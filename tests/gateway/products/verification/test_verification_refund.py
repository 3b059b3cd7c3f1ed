"""A verification charges exactly the checks that reached the sandbox: chunks whose call failed before
sending are refunded, durably, down to the subject counters and the case references.

A real sandbox process behind a relay that passes a set number of requests and then removes its socket,
so the chunk at which the sandbox becomes unreachable is chosen by the test, not by timing.
"""

from __future__ import annotations

import socket
import sqlite3
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import SandboxUnavailableError
from gateway.policy.policy import load_policy
from gateway.products.verification.claims import ClaimBatch
from gateway.products.verification.service import VerificationCore
from gateway.release.signing import Signer
from gateway.settings import ROOT
from sandbox.client import SandboxClient, SandboxProcess
from tests.helpers import Env

pytestmark = pytest.mark.integration


class _Relay:
    """Listens on `path` and relays whole request/reply frames to `target`; after `passes` requests it
    closes its connections, stops listening and removes its socket file."""

    def __init__(self, path: Path, target: Path, passes: int) -> None:
        self.path, self.target, self.left = path, target, passes
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.relayed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    @staticmethod
    def _frame(sock: socket.socket) -> bytes | None:
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return None
        (n,) = struct.unpack(">I", head)
        return head + sock.recv(n, socket.MSG_WAITALL)

    def _relay(self, conn: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(str(self.target))
        with conn, upstream:
            request = self._frame(conn)
            if request is None or self.left <= 0:
                return
            self.left -= 1
            upstream.sendall(request)
            reply = self._frame(upstream)
            assert reply is not None
            self.relayed += 1
            if self.left == 0:
                self.close()  # before the reply: the next call cannot reach the sandbox any more
            conn.sendall(reply)

    def close(self) -> None:
        if self.path.exists():
            self.path.unlink()
        self.listener.close()


@pytest.fixture(scope="module")
def sandbox(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    d = tmp_path_factory.mktemp("refund")
    proc = SandboxProcess.start(ROOT / "policies" / "catalog.toml", d / "s.sock", env.data_dir)
    yield proc
    proc.stop()


def _core(env: Env, sandbox: SandboxProcess, state: Path, relay: Path) -> VerificationCore:
    core = VerificationCore.start(load_policy(env.settings.policy).verification, sandbox.client(), state,
                                  Signer.generate())
    core.client = SandboxClient(relay, 30.0)
    core.client.MAX_IDLE = 0  # a new connection per call: the call after the relay closes fails to connect
    core.PIPELINE_CHUNK = 100  # type: ignore[misc]
    return core


def _claims(n: int) -> ClaimBatch:
    from tests.gateway.products.verification.test_verification import unknown_id

    return ClaimBatch([unknown_id(i) for i in range(n)], [0] * n, [{"threshold": 100000}],
                      [f"case-{i}" for i in range(n)])


def _state(core: VerificationCore) -> tuple[int, int, list[int], int]:
    """(consumer count, template count, subject counts, case references)."""
    with sqlite3.connect(core.state.path) as con:
        consumer = con.execute("SELECT coalesce(sum(n), 0) FROM consumer_counts").fetchone()[0]
        template = con.execute("SELECT coalesce(sum(n), 0) FROM template_counts").fetchone()[0]
        subjects = [n for (n,) in con.execute("SELECT n FROM subject_caps ORDER BY n DESC")]
        refs = con.execute("SELECT count(*) FROM case_references").fetchone()[0]
    return int(consumer), int(template), subjects, int(refs)


@pytest.mark.parametrize("reached", [0, 1, 2])
def test_only_chunks_that_reached_the_sandbox_stay_charged(env: Env, sandbox: SandboxProcess, tmp_path: Path,
                                                           reached: int) -> None:
    """A batch of 4 chunks of 100 claims; the sandbox becomes unreachable after `reached` chunks: UNAVAILABLE,
    and exactly the claims of the chunks that reached it stay charged (consumer, template and subject
    counters, case references); the counters survive a reopening of the state."""
    relay = _Relay(tmp_path / "relay.sock", sandbox.socket_path, reached)
    if reached == 0:
        relay.close()
    core = _core(env, sandbox, tmp_path / "state", relay.path)
    vpolicy = load_policy(env.settings.policy).verification
    with pytest.raises(SandboxUnavailableError, match="never reached it were not charged"):
        core.check_batch(vpolicy, "analyst", "registry", "income_at_least", "kyc", _claims(400), single=False)
    assert relay.relayed == reached
    consumer, template, subjects, refs = _state(core)
    assert (consumer, template, refs) == (100 * reached, 100 * reached, 100 * reached)
    assert sum(subjects) == 100 * reached and set(subjects) <= {0, 1}
    # Nothing was lost with the refund: the same caps answer the same claims once the sandbox is back.
    core.client = sandbox.client()
    answer = core.check_batch(vpolicy, "analyst", "registry", "income_at_least", "kyc", _claims(400), single=False)
    assert len(answer.admitted) == 400 and _state(core)[:2] == (100 * reached + 400, 100 * reached + 400)


def test_a_single_check_that_never_reached_the_sandbox_charges_nothing(env: Env, sandbox: SandboxProcess,
                                                                      tmp_path: Path) -> None:
    """Verify with the sandbox unreachable: UNAVAILABLE and no check charged."""
    core = _core(env, sandbox, tmp_path / "state", tmp_path / "nothing-here.sock")
    vpolicy = load_policy(env.settings.policy).verification
    with pytest.raises(SandboxUnavailableError):
        core.check_batch(vpolicy, "analyst", "registry", "income_at_least", "kyc", _claims(1), single=True)
    assert _state(core)[0] == 0 and _state(core)[3] == 0
