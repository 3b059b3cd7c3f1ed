"""64 concurrent VerifyBatch calls through the real server all get definite answers.

The cap state once answered some of them INTERNAL ("database is locked"): SQLite's busy handler polls with
growing sleeps, and with dozens of writers waiting an early one slept past the 30 s busy timeout. The
state's writers now queue in arrival order; a state that still cannot be written answers UNAVAILABLE with
RetryInfo. Here every batch must be answered, and the caps must count every claim exactly once.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.cli.client import error_details
from gateway.exampledata.identifiers import resident_id_check_char
from gateway.rpc.server import Gateway, start_gateway
from tests.helpers import Env, channel_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CALLS = 64
CLAIMS = 4_000


@pytest.fixture(scope="module")
def busy_gateway(env: Env) -> Iterator[Gateway]:
    """A gateway that lets one identity run 64 calls at once (its own state and sandbox)."""
    state = Path(tempfile.mkdtemp(prefix="pgw-conc-"))
    gw = start_gateway(replace(env.settings, state_dir=state, sandbox_socket=state / "sandbox.sock",
                               max_calls_per_identity=CALLS, max_workers=CALLS))
    yield gw
    gw.stop()
    shutil.rmtree(state, ignore_errors=True)


def _subjects(seed: int, n: int) -> list[str]:
    """Well-formed resident ids that are not in the data (born 2010), distinct per call."""
    out = []
    for k in range(n):
        body = f"1101012010{(seed % 12) + 1:02d}{(k % 28) + 1:02d}{(seed * 7 + k) % 999 + 1:03d}"
        out.append(body + resident_id_check_char(body))
    return out


def test_64_concurrent_batches_all_get_definite_answers(env: Env, busy_gateway: Gateway) -> None:
    def one(i: int) -> str:
        ch = channel_for(env, busy_gateway.port, "analyst")
        claims = [v_pb.Claim(subject=s, parameters={"name": v_pb.ParamValue(string_value="n")})
                  for s in _subjects(i, CLAIMS)]
        head = v_pb.VerifyBatchRequest(dataset="registry", template="identity_match", purpose="kyc")
        chunks = [head, v_pb.VerifyBatchRequest(claims=claims[: CLAIMS // 2]),
                  v_pb.VerifyBatchRequest(claims=claims[CLAIMS // 2:])]
        try:
            results = [r for resp in v_grpc.VerificationServiceStub(ch).VerifyBatch(iter(chunks), timeout=300)
                       for r in resp.results]
            ok = len(results) == CLAIMS and all(r.status == v_pb.CLAIM_STATUS_OK for r in results)
            return "OK" if ok else "INCOMPLETE"
        except grpc.RpcError as exc:
            d = error_details(exc)
            return f"{d.code.name} {d.reason}"
        finally:
            ch.close()

    with ThreadPoolExecutor(CALLS) as pool:
        outcomes = Counter(pool.map(one, range(CALLS)))
    assert outcomes == Counter({"OK": CALLS}), outcomes
    assert busy_gateway.verification is not None
    with sqlite3.connect(busy_gateway.verification.state.path) as con:
        (charged,) = con.execute("SELECT coalesce(sum(n), 0) FROM consumer_counts").fetchone()
    assert charged == CALLS * CLAIMS
