"""`python -m sandbox --catalog FILE (--socket PATH | --listen HOST:PORT --tls-dir DIR) [...]`: run the sandbox.

`--socket`: the single-host default, a Unix socket next to the gateway that usually starts this process.
`--listen`: the sandbox on the data owner's host, serving gateways elsewhere over TCP with mutual TLS under
the owner's CA (`sandbox.process.transport`): `--tls-dir` holds `ca.crt` (the owner's CA), `sandbox.crt`
and `sandbox.key` (the files `pgw certs --owner` writes; `--tls-ca/--tls-cert/--tls-key` name them one by
one). It then needs `--state-dir` (the owner's cap ledger). It prints `sandbox ready listen=<host>:<port>
pid=<pid>` (port 0 picks a free port and prints it).

Order: tie this process to the gateway that started it (`--parent-pid`, see `sandbox.process.lifecycle`), cap
the address space, load and lock the engine, then bind the socket and print
`sandbox ready socket=<path> pid=<pid>`. Nothing is served before the lock-down is verified. Without
`--parent-pid` the sandbox is tied to no one (run by hand, for a gateway with `start_sandbox = false`).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import ssl
import sys
from pathlib import Path

from sandbox.engine.limits import (
    AUTO,
    Limits,
    address_space_for,
    human_bytes,
    larger_memory_limit,
    resolve_memory_limit,
)
from sandbox.errors import ConfigError
from sandbox.process.lifecycle import tie_to_parent
from sandbox.process.logformat import configure
from sandbox.process.transport import TlsFiles, parse_address


def _parser() -> argparse.ArgumentParser:
    d = Limits()
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    p.add_argument("--catalog", type=Path, required=True, help="the data owner's catalog TOML")
    p.add_argument("--data-dir", type=Path, default=None, help="overrides the catalog's data_dir")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", type=Path, help="Unix socket path to create")
    where.add_argument("--listen", help="host:port to serve on over TCP with mutual TLS (owner's CA)")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="with --listen: directory with ca.crt, sandbox.crt, sandbox.key")
    p.add_argument("--tls-ca", type=Path, default=None, help="the owner's CA certificate (default <tls-dir>/ca.crt)")
    p.add_argument("--tls-cert", type=Path, default=None, help="default <tls-dir>/sandbox.crt")
    p.add_argument("--tls-key", type=Path, default=None, help="default <tls-dir>/sandbox.key")
    p.add_argument(
        "--state-dir", type=Path, default=None,
        help="the data owner's state (cap ledger); default: <socket's directory>/data-owner; "
             "required with --listen",
    )
    p.add_argument(
        "--storage", choices=("disk", "memory"), default="disk",
        help="where the loaded tables live: disk (a DuckDB file under <state-dir>/tables, built once per data "
             "version, opened read-only; data may exceed --memory-limit) or memory",
    )
    p.add_argument("--memory-limit", default=AUTO,
                   help="DuckDB memory_limit, e.g. 4GiB; auto (default): half of the smaller of physical memory "
                        "and the cgroup's memory limit")
    p.add_argument("--threads", type=int, default=d.threads, help="DuckDB threads")
    p.add_argument("--query-timeout-ms", type=int, default=d.query_timeout_ms)
    p.add_argument("--max-groups", type=int, default=d.max_groups)
    p.add_argument(
        "--address-space-bytes",
        type=int,
        default=None,
        help="RLIMIT_AS for this process (0 = unlimited; default: 8 GiB, or twice --memory-limit plus 2 GiB when "
             "that is larger)",
    )
    p.add_argument(
        "--exact-cache-values", type=int, default=d.exact_cache_values,
        help="exact aggregate values kept in this process to re-noise repeated plans without running them again "
             "(least recently used go first; 0: none)",
    )
    p.add_argument(
        "--parent-pid", type=int, default=0,
        help="die with this process (the gateway that starts the sandbox passes its pid); 0: tied to no one",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="stderr log lines")
    return p


def _tls_files(args: argparse.Namespace) -> TlsFiles | str:
    """The TLS files for `--listen`, or what is missing."""
    d = args.tls_dir
    ca = args.tls_ca or (d / "ca.crt" if d else None)
    cert = args.tls_cert or (d / "sandbox.crt" if d else None)
    key = args.tls_key or (d / "sandbox.key" if d else None)
    if ca is None or cert is None or key is None:
        return "--listen needs --tls-dir (or --tls-ca, --tls-cert and --tls-key)"
    return TlsFiles(ca, cert, key)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    tls: TlsFiles | None = None
    address: tuple[str, int] | None = None
    if args.listen is not None:
        files = _tls_files(args)
        if isinstance(files, str):
            parser.error(files)
        tls = files
        if args.state_dir is None:
            parser.error("--listen needs --state-dir (the data owner's cap ledger)")
        if args.parent_pid:
            parser.error("--listen serves gateways elsewhere: it cannot be tied to a parent (--parent-pid)")
        try:
            address = parse_address(args.listen)
        except ValueError as exc:
            parser.error(f"--listen: {exc}")
    tie = tie_to_parent(args.parent_pid)  # first: an orphan must not load the data
    configure(args.log_format)
    memory = resolve_memory_limit(args.memory_limit)
    try:
        limits = Limits(
            memory_limit=memory.memory_limit,
            threads=args.threads,
            query_timeout_ms=args.query_timeout_ms,
            max_groups=args.max_groups,
            exact_cache_values=args.exact_cache_values,
            address_space_bytes=(address_space_for(memory.memory_limit, Limits().address_space_bytes)
                                 if args.address_space_bytes is None else args.address_space_bytes),
        )
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("sandbox").info("memory limit %s (%s), %d threads, address space %s",
                                      limits.memory_limit, memory.reason, limits.threads,
                                      human_bytes(limits.address_space_bytes) if limits.address_space_bytes
                                      else "unlimited")
    if limits.address_space_bytes:
        resource.setrlimit(
            resource.RLIMIT_AS, (limits.address_space_bytes, limits.address_space_bytes)
        )
    # Imported after the rlimit so that DuckDB and OpenDP start under it.
    import duckdb

    from sandbox.catalog import load_catalog
    from sandbox.engine.caps import CapLedger
    from sandbox.engine.engine import Engine
    from sandbox.engine.keys import load_or_create_key
    from sandbox.products.verification import template_tables
    from sandbox.server import SandboxServer, SandboxTlsServer, serve

    state_dir = args.state_dir or args.socket.parent / "data-owner"

    def out_of_memory(exc: duckdb.OutOfMemoryException) -> int:
        print(f"sandbox: the data does not fit in the memory limit {limits.memory_limit} (DuckDB ran out of memory "
              f"while loading the tables and templates); raise it to {larger_memory_limit(limits.memory_limit)} "
              "or more: the gateway's sandbox_memory_limit setting (PRIVACY_GATEWAY_SANDBOX_MEMORY_LIMIT), or "
              "--memory-limit when the sandbox runs on its own", file=sys.stderr)
        return 2

    try:
        caps = CapLedger(state_dir / "caps.sqlite3")  # issue-gov: the data owner's cap ledger
        catalog = load_catalog(args.catalog, args.data_dir)
        disk = args.storage == "disk"
        # With an on-disk store, the verification templates' tables are built into it before the lock-down.
        engine = Engine(catalog, limits, caps,
                        version_key=load_or_create_key(state_dir / "data-version.key"),
                        store_dir=state_dir / "tables" if disk else None,
                        derived=template_tables(catalog) if disk else ())
    except ConfigError as exc:
        print(f"sandbox: configuration error: {exc}", file=sys.stderr)
        return 2
    except duckdb.OutOfMemoryException as exc:
        return out_of_memory(exc)
    if address is not None and tls is not None:
        try:
            tcp = SandboxTlsServer(address, tls, engine)
        except duckdb.OutOfMemoryException as exc:
            return out_of_memory(exc)
        except (OSError, ssl.SSLError) as exc:
            print(f"sandbox: cannot serve on {args.listen}: {exc}", file=sys.stderr)
            return 2
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        serve(tcp, f"sandbox ready listen={host}:{tcp.port} pid={os.getpid()}")
        return 0
    try:
        server = SandboxServer(args.socket, engine, tie)
    except duckdb.OutOfMemoryException as exc:
        return out_of_memory(exc)
    except OSError as exc:
        print(f"sandbox: cannot bind {args.socket}: {exc}", file=sys.stderr)
        return 2
    serve(server, f"sandbox ready socket={args.socket} pid={os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
