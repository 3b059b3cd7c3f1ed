"""Every fault heals without a hand: a killed gateway restarts at once (its sandbox died with it), and a
killed, stopped or unreachable sandbox is replaced while clients keep calling, with every answer charged
once and nothing charged for what never reached the sandbox. Real gateway processes, real sandboxes, real
certificates; recovery times are printed (run with -s to see them).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.budgets.ledger import GrantKey
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT
from sandbox.client import SandboxClient
from tests.helpers import Env, channel_for, fresh, isolated_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SQL = "SELECT COUNT(*) FROM residents"
OK = grpc.StatusCode.OK
RECOVERY_LIMIT_S = 60.0  # generous for a loaded 2-core machine; the measured times are printed
KILLS = 5  # faults per scenario


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait(what: str, cond: Callable[[], bool], timeout_s: float, step: float = 0.02) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(step)
    return time.monotonic() - t0


def _summary(name: str, values: list[float]) -> str:
    line = (f"{name}: n={len(values)} median={statistics.median(values):.2f} s max={max(values):.2f} s "
            f"(load average {os.getloadavg()[0]:.2f})")
    print(line)
    return line


def _health(env: Env, port: int) -> int:
    with channel_for(env, port, "stranger") as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


# ---------------------------------------------------------------------------------------------------
# The gateway is killed
# ---------------------------------------------------------------------------------------------------


def _serve(env: Env, state: Path, log: Path) -> tuple[subprocess.Popen[str], int, float]:
    """`python -m gateway serve` in its own process; (process, port, seconds to ready)."""
    cmd = [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0", "--policy", str(env.settings.policy),
           "--catalog", str(ROOT / "policies" / "catalog.toml"), "--data-dir", str(env.data_dir),
           "--state-dir", str(state), "--tls-dir", str(env.tls_dir), "--query-timeout-ms", "5000",
           "--log-format", "json"]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "PRIVACY_GATEWAY_SANDBOX_MEMORY_LIMIT": "1GiB"}
    t0 = time.monotonic()
    with log.open("a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=environ, cwd=ROOT)
    assert proc.stdout is not None
    port: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("gateway ready port="):
                port.append(int(line.split()[2].split("=")[1]))
        # keep draining until the process ends (the pipe must never fill)

    threading.Thread(target=read, daemon=True).start()
    _wait("gateway ready", lambda: bool(port) or proc.poll() is not None, 120, 0.05)
    assert port, f"the gateway exited ({proc.returncode}): {log.read_text()[-2000:]}"
    return proc, port[0], time.monotonic() - t0


def _one_query(env: Env, port: int, who: str = "analyst", purpose: str = "testing") -> q_pb.RunQueryResponse:
    with channel_for(env, port, who) as ch:
        return q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
            dataset="registry", purpose=purpose, sql=fresh(SQL), privacy_loss=common_pb.PrivacyLoss(epsilon=0.125)),
            timeout=60)


def test_a_killed_gateway_restarts_without_a_hand(env: Env) -> None:
    """SIGKILL `pgw serve` 10 times: each time its sandbox is gone within a second (it died with its
    gateway), and a new `pgw serve` on the same state starts, serves a query, and names itself the parent
    of its sandbox. Nobody removes anything by hand."""
    state = env.root / "state-gateway-kill"
    log = env.root / "gateway-kill.log"
    orphan_gone, ready = [], []
    proc, port, took = _serve(env, state, log)
    try:
        for _ in range(10):
            ready.append(took)
            assert _one_query(env, port).rows
            health = SandboxClient(state / "sandbox.sock").health(5.0, fresh=True)
            assert health.parent_pid == proc.pid and not health.orphaned
            proc.kill()
            proc.wait()
            orphan_gone.append(_wait("the sandbox dies with its gateway", lambda pid=health.pid: _gone(pid), 10, 0.005))
            proc, port, took = _serve(env, state, log)
        assert _one_query(env, port).rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "another server is listening" not in text and "another sandbox" not in text
    assert '"logger":"sandbox"' in text  # the sandbox's lines are in the gateway's JSON log
    _summary("gateway SIGKILL: sandbox gone after", orphan_gone)
    _summary("gateway SIGKILL: new gateway ready after", ready)
    assert max(orphan_gone) < 1.0


# ---------------------------------------------------------------------------------------------------
# The sandbox is killed, stopped, or its socket removed, while clients call
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def healing_gateway(env: Env, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """A gateway with its own state (and the default health interval of 1 s)."""
    gw = start_gateway(isolated_settings(env, f"heal-{request.node.name[:40]}"))
    yield gw
    gw.stop()


@dataclasses.dataclass
class _Outcome:
    start: float
    end: float
    code: grpc.StatusCode
    request_id: str = ""
    sql: str = ""
    claims: int = 0
    cost: float = 0.0


class _Load:
    """Client threads calling `call(stub)` until stopped; every outcome recorded."""

    def __init__(self, threads: int, work: Callable[[], _Outcome]) -> None:
        self.outcomes: list[_Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(work,), daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, work: Callable[[], _Outcome]) -> None:
        while not self._stop.is_set():
            outcome = work()
            self.outcomes.append(outcome)
            if outcome.code != OK:
                time.sleep(0.05)

    def served_since(self, t: float) -> int:
        return sum(1 for o in list(self.outcomes) if o.code == OK and o.start >= t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


def _kill_and_measure(load: _Load, pid_of: Callable[[], int], kills: int, sig: int = signal.SIGKILL,
                      before: Callable[[], None] | None = None) -> list[float]:
    """`kills` times: wait for steady service, send `sig` to the sandbox, and time until a call that started
    after it is answered."""
    times = []
    for _ in range(kills):
        steady = time.monotonic()
        _wait("steady service", lambda: load.served_since(steady) >= 3, RECOVERY_LIMIT_S)  # noqa: B023
        pid = pid_of()
        if before is not None:
            before()
        os.kill(pid, sig)
        # After the signal, not before: a load thread may run between the two lines, and a call it starts
        # there is served by the old process and must not count as service resumed.
        t_kill = time.monotonic()
        times.append(_wait("service resumed", lambda: load.served_since(t_kill) >= 1, RECOVERY_LIMIT_S))  # noqa: B023
        assert pid_of() != pid
    return times


def test_sandbox_killed_during_queries(env: Env, healing_gateway: Gateway) -> None:
    """Four clients query without pause; the sandbox is SIGKILLed five times. Service resumes unaided each
    time; every call ends OK, UNAVAILABLE (never reached the sandbox: refunded) or ABORTED (reached it:
    charged); the ledger holds exactly the answered and aborted calls, once each; an UNAVAILABLE call
    retried with its request id is answered and charged once."""
    gw = healing_gateway
    assert gw.sandbox_process is not None and gw.supervisor is not None
    key = GrantKey("analyst", "registry", "testing")
    assert gw.ledger.spent(key).epsilon == 0.0

    def query() -> _Outcome:
        rid, sql, t = uuid.uuid4().hex, fresh(SQL), time.monotonic()
        with channel_for(env, gw.port, "analyst") as ch:
            try:
                resp = q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
                    dataset="registry", purpose="testing", sql=sql, request_id=rid,
                    privacy_loss=common_pb.PrivacyLoss(epsilon=0.125)), timeout=60)
                return _Outcome(t, time.monotonic(), OK, rid, sql, cost=resp.privacy_cost.epsilon)
            except grpc.RpcError as exc:
                return _Outcome(t, time.monotonic(), exc.code(), rid, sql)

    load = _Load(4, query)
    try:
        times = _kill_and_measure(load, lambda: gw.sandbox_process.pid, KILLS)  # type: ignore[union-attr]
        time.sleep(1.0)
    finally:
        load.stop()
    codes = {o.code for o in load.outcomes}
    assert codes <= {OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}, codes
    ok = [o for o in load.outcomes if o.code == OK]
    aborted = [o for o in load.outcomes if o.code == grpc.StatusCode.ABORTED]
    unavailable = [o for o in load.outcomes if o.code == grpc.StatusCode.UNAVAILABLE]
    assert {o.cost for o in ok} == {0.125}
    assert gw.ledger.spent(key).epsilon == 0.125 * (len(ok) + len(aborted))
    retried = unavailable[:5]
    with channel_for(env, gw.port, "analyst") as ch:
        for o in retried:
            resp = q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
                dataset="registry", purpose="testing", sql=o.sql, request_id=o.request_id,
                privacy_loss=common_pb.PrivacyLoss(epsilon=0.125)), timeout=60)
            assert resp.rows and not resp.replayed
    assert gw.ledger.spent(key).epsilon == 0.125 * (len(ok) + len(aborted) + len(retried))
    print(f"queries: {len(ok)} answered, {len(aborted)} aborted, {len(unavailable)} unavailable; "
          f"supervisor recoveries {[round(r.seconds, 2) for r in gw.supervisor.recoveries]}")
    _summary("sandbox SIGKILL during queries: service resumed after", times)
    assert len(gw.supervisor.recoveries) == KILLS


def _identity_claims(n: int) -> list[v_pb.Claim]:
    from tests.gateway.products.verification.test_verification import unknown_id

    return [v_pb.Claim(subject=unknown_id(i), parameters={"name": v_pb.ParamValue(string_value="x")})
            for i in range(n)]


def _counts(gw: Gateway, template: str) -> int:
    assert gw.verification is not None
    with sqlite3.connect(gw.verification.state.path) as con:
        row = con.execute("SELECT coalesce(sum(n), 0) FROM template_counts WHERE consumer = 'analyst' AND "
                          "template = ?", (template,)).fetchone()
    return int(row[0])


def test_sandbox_killed_during_verification(env: Env, healing_gateway: Gateway) -> None:
    """Single checks and pipelined batches (4 chunks of 100 claims) without pause; the sandbox is SIGKILLed
    five times. Service resumes unaided; a single check that failed UNAVAILABLE charged nothing and one
    that ABORTED charged its check (the counter is exact); a batch charged at least its answered claims and
    at most those plus the claims of its failed batches."""
    gw = healing_gateway
    assert gw.verification is not None and gw.supervisor is not None
    gw.verification.PIPELINE_CHUNK = 100  # type: ignore[misc]
    claims = _identity_claims(400)

    def single() -> _Outcome:
        t = time.monotonic()
        with channel_for(env, gw.port, "analyst") as ch:
            try:
                v_grpc.VerificationServiceStub(ch).Verify(v_pb.VerifyRequest(
                    dataset="registry", template="insured_months_at_least", purpose="kyc",
                    subject=claims[int(t * 1000) % 400].subject, parameters={"months": v_pb.ParamValue(int64_value=3)}),
                    timeout=60)
                return _Outcome(t, time.monotonic(), OK, claims=1)
            except grpc.RpcError as exc:
                return _Outcome(t, time.monotonic(), exc.code(), claims=1)

    def batch() -> _Outcome:
        t = time.monotonic()
        with channel_for(env, gw.port, "analyst") as ch:
            try:
                got = [r for resp in v_grpc.VerificationServiceStub(ch).VerifyBatch(iter([v_pb.VerifyBatchRequest(
                    dataset="registry", template="identity_match", purpose="kyc", claims=claims)]), timeout=60)
                    for r in resp.results]
                assert len(got) == 400 and all(r.status == v_pb.CLAIM_STATUS_OK for r in got)
                return _Outcome(t, time.monotonic(), OK, claims=400)
            except grpc.RpcError as exc:
                return _Outcome(t, time.monotonic(), exc.code(), claims=400)

    singles, batches = _Load(2, single), _Load(1, batch)
    try:
        times = _kill_and_measure(singles, lambda: gw.sandbox_process.pid, KILLS)  # type: ignore[union-attr]
        _wait("a batch answered", lambda: batches.served_since(time.monotonic() - 60) >= 1, RECOVERY_LIMIT_S)
    finally:
        singles.stop()
        batches.stop()
    for load in (singles, batches):
        assert {o.code for o in load.outcomes} <= {OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
    by = {code: sum(1 for o in singles.outcomes if o.code == code) for code in
          (OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)}
    assert by[grpc.StatusCode.UNAVAILABLE] > 0  # calls did meet the dead sandbox
    assert _counts(gw, "insured_months_at_least") == by[OK] + by[grpc.StatusCode.ABORTED]
    answered = sum(o.claims for o in batches.outcomes if o.code == OK)
    failed = sum(o.claims for o in batches.outcomes if o.code != OK)
    assert answered <= _counts(gw, "identity_match") <= answered + failed
    batch_codes = sorted(o.code.name for o in batches.outcomes)
    print(f"single checks {({c.name: n for c, n in by.items()})}; batches {batch_codes} ({answered} claims "
          f"answered, {failed} in failed batches, {_counts(gw, 'identity_match')} charged)")
    _summary("sandbox SIGKILL during verification: service resumed after", times)


def _charged_exactly(gw: Gateway, load: _Load) -> None:
    """Every call ended OK, ABORTED or UNAVAILABLE, and the ledger holds 0.125 for each OK and ABORTED one."""
    assert {o.code for o in load.outcomes} <= {OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
    charged = sum(o.code in (OK, grpc.StatusCode.ABORTED) for o in load.outcomes)
    assert gw.ledger.spent(GrantKey("analyst", "registry", "testing")).epsilon == 0.125 * charged


def test_a_stopped_sandbox_is_replaced(env: Env, healing_gateway: Gateway) -> None:
    """SIGSTOP the sandbox five times while clients query: health probes time out, health turns
    NOT_SERVING, the stopped process is killed and replaced, calls stuck on it end (ABORTED, charged) long
    before their deadline, and service resumes."""
    gw = healing_gateway
    assert gw.sandbox_process is not None and gw.supervisor is not None
    seen: list[bool] = []
    gw.supervisor.on_health.append(seen.append)

    def query() -> _Outcome:
        t = time.monotonic()
        try:
            _one_query(env, gw.port)
            return _Outcome(t, time.monotonic(), OK)
        except grpc.RpcError as exc:
            return _Outcome(t, time.monotonic(), exc.code())

    old: list[int] = []
    load = _Load(2, query)
    try:
        times = _kill_and_measure(load, lambda: gw.sandbox_process.pid, KILLS, signal.SIGSTOP,  # type: ignore[union-attr]
                                  before=lambda: old.append(gw.sandbox_process.pid))  # type: ignore[union-attr]
    finally:
        load.stop()
    assert all(_gone(pid) for pid in old)
    assert seen.count(False) == KILLS and seen.count(True) == KILLS
    _charged_exactly(gw, load)
    assert sum(o.code == grpc.StatusCode.ABORTED for o in load.outcomes) >= KILLS  # calls were stuck on it
    assert max(o.end - o.start for o in load.outcomes) < 30  # no call waits for its 60 s deadline
    assert all(r.cause.startswith("hung") for r in gw.supervisor.recoveries)
    _summary("sandbox SIGSTOP: service resumed after", times)


def test_a_deleted_socket_is_noticed_and_the_sandbox_replaced(env: Env, healing_gateway: Gateway) -> None:
    """Remove the sandbox's socket file five times while clients query (their pooled connections still
    work): the supervisor's fresh-connection probe notices, the sandbox is replaced, service resumes."""
    gw = healing_gateway
    assert gw.sandbox_process is not None and gw.supervisor is not None
    sock = gw.sandbox_process.socket_path

    def query() -> _Outcome:
        t = time.monotonic()
        try:
            _one_query(env, gw.port)
            return _Outcome(t, time.monotonic(), OK)
        except grpc.RpcError as exc:
            return _Outcome(t, time.monotonic(), exc.code())

    load = _Load(2, query)
    times = []
    try:
        for _ in range(KILLS):
            steady = time.monotonic()
            _wait("steady service", lambda: load.served_since(steady) >= 3, RECOVERY_LIMIT_S)  # noqa: B023
            pid = gw.sandbox_process.pid
            t0 = time.monotonic()
            sock.unlink()
            _wait("replaced", lambda: gw.sandbox_process.pid != pid, RECOVERY_LIMIT_S)  # noqa: B023
            t_new = time.monotonic()  # calls before this may still have reached the old process
            _wait("service resumed", lambda: load.served_since(t_new) >= 1, RECOVERY_LIMIT_S)  # noqa: B023
            times.append(time.monotonic() - t0)
            assert sock.exists() and _wait("old process gone", lambda: _gone(pid), 10) < 10  # noqa: B023
    finally:
        load.stop()
    assert all(r.cause.startswith("unreachable") for r in gw.supervisor.recoveries)
    _charged_exactly(gw, load)
    _summary("sandbox socket deleted: service resumed after", times)


def test_a_sandbox_that_cannot_start_is_retried_with_backoff(env: Env, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Kill the sandbox while its data file is missing: every start fails, health stays NOT_SERVING, the
    attempts are logged and spaced by growing delays; once the file is back the sandbox starts and health
    turns SERVING."""
    data = tmp_path / "data"
    shutil.copytree(env.data_dir, data)
    settings = dataclasses.replace(isolated_settings(env, "heal-backoff"), data_dir=data)
    gw = start_gateway(settings)
    try:
        assert gw.sandbox_process is not None and gw.supervisor is not None
        (data / "residents.parquet").rename(tmp_path / "residents.parquet")
        os.kill(gw.sandbox_process.pid, signal.SIGKILL)
        _wait("NOT_SERVING", lambda: _health(env, gw.port) == health_pb2.HealthCheckResponse.NOT_SERVING, 30)
        _wait("three failed starts", lambda: sum("did not start" in r.getMessage() for r in caplog.records) >= 3,
              120, 0.1)
        assert _health(env, gw.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        failures = [r for r in caplog.records if "did not start" in r.getMessage()]
        assert [f"attempt {i}" in r.getMessage() for i, r in enumerate(failures[:3], 1)] == [True] * 3
        assert "next attempt in 0.5 s" in failures[0].getMessage()
        assert "next attempt in 1.0 s" in failures[1].getMessage()
        assert "next attempt in 2.0 s" in failures[2].getMessage()
        (tmp_path / "residents.parquet").rename(data / "residents.parquet")
        _wait("SERVING", lambda: _health(env, gw.port) == health_pb2.HealthCheckResponse.SERVING, 120, 0.1)
        assert _one_query(env, gw.port).rows
        assert gw.supervisor.recoveries[-1].attempts >= 4
    finally:
        gw.stop()
