"""`make bench` (`python -m examples.bench [--quick] [--sizes 1000000,10000000]`): latency, accuracy and
ledger costs of the gateway, side by side with plain DuckDB (the floor) and SmartNoise SQL (a peer).

Writes BENCHMARKS.md (table, exact command, machine facts) and bench-results.json (everything measured).

* Data: `gateway.exampledata.generate` at each size, cached in `.bench/data/<size>/seed<seed>/` (git-ignored).
* Systems, timed interleaved (every repetition runs every query on every system, in a rotating order,
  so machine noise hits all of them alike):
  - `gateway`: the real gRPC stubs over mTLS to a real gateway (started in this process) and its real
    sandbox process, consumer `bench` with a large budget, epsilon 1.0 per query;
  - `duckdb`: the same SQL text in an in-process DuckDB over in-memory tables loaded from the same Parquet
    (no truncation, clamping or noise: the floor);
  - `smartnoise`: SmartNoise SQL in its own venv (`.bench/venv-smartnoise`, created on first use) over the
    same kind of DuckDB tables, in a worker subprocess (`examples/bench/smartnoise_worker.py`).
* Accuracy at epsilon 1 and 0.1 (consumer `accuracy`, huge budget); the cost of charging and auditing per
  request (median and p99: the real gateway side by side with a stand-in that skips both, defined only in
  `examples/bench/standins.py`), with the machine's floors (mTLS round trip, durable commit, fsync); and a
  per-stage profile of the gateway's request path.
* Throughput on one node (`throughput.py`, at 1,000,000 people): closed-loop client processes (1, 8, 32, 64),
  each with its own certificate identity and channel, against one sandbox and 1 or 2 gateway processes on one
  port, COUNT and grouped AVG; answers/s, p50/p99 and CPU per answer of every process. Alone:
  `python -m examples.bench.throughput`; levers side by side: `python -m examples.bench.experiments`.

The workload is `WORKLOAD` (`queries.py`): re-run after other branches merge and the "unsupported" rows fill in.

The harness, one module per part: `queries.py` (the workload), `systems.py` (the gateway, plain DuckDB,
SmartNoise; `floor.py` the stack floor; `standins.py` the stand-in gateway), `latency.py`, `accuracy.py`,
`ledger.py` (the cost of charging and auditing, the machine's floors), `profile.py` (the gateway's stages),
`report.py` (BENCHMARKS.md), `throughput.py` with `loadclient.py`, `gwproc.py`, `sbproc.py`, `cpustages.py` and
`experiments.py` (throughput, its processes, CPU per stage, A/B of levers), `__main__.py` (the command).
Other benchmarks: `python -m examples.bench.verify`
(verification), `python -m examples.bench.models` (models), `python -m examples.bench.abuse` (misbehaving
clients), `make bench-big` / `python -m examples.bench.bigdata --people 100000000 --memory-limit 256MiB`
(data beyond memory: the sandbox's on-disk store against plain DuckDB on the same file; its section of
BENCHMARKS.md is kept when `make bench` rewrites the rest).
"""
