"""`python -m sandbox --catalog FILE --socket PATH [...]`: run the sandbox process.

Order: tie this process to the gateway that started it (`--parent-pid`, see `sandbox.process.lifecycle`), cap
the address space, load and lock the engine, then bind the socket and print
`sandbox ready socket=<path> pid=<pid>`. Nothing is served before the lock-down is verified. Without
`--parent-pid` the sandbox is tied to no one (run by hand, for a gateway with `start_sandbox = false`).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

from sandbox.engine.limits import Limits
from sandbox.errors import ConfigError
from sandbox.process.lifecycle import tie_to_parent
from sandbox.process.logformat import configure


def _parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    p.add_argument("--catalog", type=Path, required=True, help="the data owner's catalog TOML")
    p.add_argument("--data-dir", type=Path, default=None, help="overrides the catalog's data_dir")
    p.add_argument("--socket", type=Path, required=True, help="Unix socket path to create")
    p.add_argument(
        "--state-dir", type=Path, default=None,
        help="the data owner's state (cap ledger); default: <socket's directory>/data-owner",
    )
    p.add_argument(
        "--storage", choices=("disk", "memory"), default="disk",
        help="where the loaded tables live: disk (a DuckDB file under <state-dir>/tables, built once per data "
             "version, opened read-only; data may exceed --memory-limit) or memory",
    )
    p.add_argument("--memory-limit", default=d.memory_limit, help="DuckDB memory_limit")
    p.add_argument("--threads", type=int, default=d.threads, help="DuckDB threads")
    p.add_argument("--query-timeout-ms", type=int, default=d.query_timeout_ms)
    p.add_argument("--max-groups", type=int, default=d.max_groups)
    p.add_argument(
        "--address-space-bytes",
        type=int,
        default=d.address_space_bytes,
        help="RLIMIT_AS for this process (0 = unlimited)",
    )
    p.add_argument(
        "--parent-pid", type=int, default=0,
        help="die with this process (the gateway that starts the sandbox passes its pid); 0: tied to no one",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="stderr log lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    tie = tie_to_parent(args.parent_pid)  # first: an orphan must not load the data
    configure(args.log_format)
    try:
        limits = Limits(
            memory_limit=args.memory_limit,
            threads=args.threads,
            query_timeout_ms=args.query_timeout_ms,
            max_groups=args.max_groups,
            address_space_bytes=args.address_space_bytes,
        )
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    if limits.address_space_bytes:
        resource.setrlimit(
            resource.RLIMIT_AS, (limits.address_space_bytes, limits.address_space_bytes)
        )
    # Imported after the rlimit so that DuckDB and OpenDP start under it.
    from sandbox.catalog import load_catalog
    from sandbox.engine.caps import CapLedger
    from sandbox.engine.engine import Engine
    from sandbox.engine.keys import load_or_create_key
    from sandbox.server import SandboxServer, serve

    state_dir = args.state_dir or args.socket.parent / "data-owner"
    try:
        caps = CapLedger(state_dir / "caps.sqlite3")  # issue-gov: the data owner's cap ledger
        engine = Engine(load_catalog(args.catalog, args.data_dir), limits, caps,
                        version_key=load_or_create_key(state_dir / "data-version.key"),
                        store_dir=state_dir / "tables" if args.storage == "disk" else None)
    except ConfigError as exc:
        print(f"sandbox: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        server = SandboxServer(args.socket, engine, tie)
    except OSError as exc:
        print(f"sandbox: cannot bind {args.socket}: {exc}", file=sys.stderr)
        return 2
    serve(server, f"sandbox ready socket={args.socket} pid={os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
