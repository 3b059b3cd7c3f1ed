"""`python -m tests.multihost.load`: a client host's load on one or more gateways (the multi-host tests run it in
the clients' network namespace). Each thread sends distinct pure-DP COUNTs with its own request ids, one after
the other, until the stop file appears (or `--count` requests each); every outcome is one JSON line in `--out`
(a refusal with its status code and reason), written (and flushed) as the answer arrives, so what a client
RECEIVED is on record even if a gateway dies a moment later."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.cli.client import error_details
from tests.gov_helpers import distinct_count_sql


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", action="append", required=True, help="host:port of a gateway (repeatable)")
    p.add_argument("--tls-dir", type=Path, required=True)
    p.add_argument("--as", dest="identity", default="analyst")
    p.add_argument("--threads", type=int, default=4, help="threads per target")
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--purpose", default="credit")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stop", type=Path, required=True, help="stop once this file exists")
    p.add_argument("--count", type=int, default=0, help="at most this many requests per thread (0: no limit)")
    p.add_argument("--rid-prefix", default="", help="prefixed to every request id")
    args = p.parse_args()
    d = args.tls_dir
    creds = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(), (d / f"{args.identity}.key").read_bytes(),
                                         (d / f"{args.identity}.crt").read_bytes())
    out = args.out.open("a", buffering=1)
    lock = threading.Lock()

    def run(target: str, t: int) -> None:
        stub = q_grpc.QueryServiceStub(grpc.secure_channel(target, creds))
        i = 0
        while not args.stop.exists() and (args.count == 0 or i < args.count):
            rid = f"{args.rid_prefix}{target.replace(':', '_')}-{t}-{i}"
            i += 1
            line: dict[str, object] = {"rid": rid, "target": target}
            try:
                resp = stub.RunQuery(q_pb.RunQueryRequest(
                    dataset="registry", sql=distinct_count_sql(rid), purpose=args.purpose, request_id=rid,
                    privacy_loss=common_pb.PrivacyLoss(epsilon=args.epsilon)), timeout=30)
                line["ok"] = True
                line["receipt"] = bool(resp.HasField("receipt"))
            except grpc.RpcError as exc:
                line["ok"] = False
                line["code"] = exc.code().name
                line["reason"] = error_details(exc).reason
            with lock:
                out.write(json.dumps(line) + "\n")
            if not line["ok"]:
                time.sleep(0.2)  # a dead gateway or an exhausted cap: do not spin

    threads = [threading.Thread(target=run, args=(target, t)) for target in args.target for t in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print("load done", flush=True)


if __name__ == "__main__":
    main()
