"""One closed-loop client process of the throughput benchmark (`throughput.py`). It imports only gRPC and the
generated stubs, so dozens of them start quickly."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["client"]


def client(index: int, name: str, tls: str, port: int, sql: str, dataset: str, ready: Any, go: Any,
           times: Any, out: Any) -> None:
    """Connect as `name`, report ready, wait for `go`; then RunQuery back to back from times[0] until
    times[2], counting the answers and refusals of calls started at or after times[1]; put the result on `out`."""
    import random

    import grpc
    from privacy_gateway.v1 import common_pb2 as common_pb
    from privacy_gateway.v1 import query_service_pb2 as q_pb
    from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

    d = Path(tls)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.crt").read_bytes(), private_key=(d / f"{name}.key").read_bytes(),
        certificate_chain=(d / f"{name}.crt").read_bytes())
    ch = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    stub = q_grpc.QueryServiceStub(ch)
    grpc.channel_ready_future(ch).result(timeout=120)
    ready.put(index)
    go.wait()
    start_at, measure_from, stop_at = times[0], times[1], times[2]
    lat: list[float] = []
    refused = failed = calls = 0
    while time.time() < start_at:
        time.sleep(0.002)
    cpu_in = 0.0
    # Each process starts at its own random epsilon, so no two calls of one identity ask for the same release
    # (in this cell or an earlier one) and the charge-once release cache never answers.
    base = 1.0 - 1e-6 * random.random()
    # A `{n}` in the SQL becomes a number no other call of this identity uses (every call another plan), above
    # 10^12, so a filter `income < {n}` keeps every row: the work of the plan without the filter.
    first_n = 10**12 + random.randrange(10**9) * 10**3
    while True:
        now = time.time()
        if now >= stop_at:
            break
        calls += 1
        req = q_pb.RunQueryRequest(
            dataset=dataset, sql=sql.replace("{n}", str(first_n + calls)),
            purpose="benchmark", request_id=uuid.uuid4().hex,
            privacy_loss=common_pb.PrivacyLoss(epsilon=base - 1e-12 * calls))
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            stub.RunQuery(req, timeout=60)
        except grpc.RpcError as exc:
            if now >= measure_from:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                    refused += 1
                else:
                    failed += 1
            continue
        if now >= measure_from and time.time() < stop_at:
            lat.append(time.perf_counter() - t0)
            cpu_in += time.process_time() - c0
    ch.close()
    out.put({"lat": lat, "refused": refused, "failed": failed, "cpu": cpu_in})
