"""`pgw serve`: check the policy and catalog files, start the sandbox and the gateway (or `--workers N`
gateway processes on one port), the console when configured, and serve until SIGINT/SIGTERM; SIGHUP reloads."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gateway import assets

DEV_DATA_PEOPLE = 20_000
DATA_FILES = ("residents.parquet", "enterprises.parquet", "social_insurance.parquet", "regions.parquet")


def _ensure_dev_assets(settings_tls: Path, policy_path: Path, data_dir: Path | None) -> None:
    """--dev: development certificates for every consumer in the policy, and example data if missing."""
    from gateway.identity import certs
    from gateway.policy.policy import load_policy

    policy = load_policy(policy_path)
    certs.write_dev_pki(settings_tls, clients=policy.identities)  # issue-gov: operators too
    target = data_dir or assets.example_data_dir()
    if not all((target / f).exists() for f in DATA_FILES):
        from gateway.exampledata.generate import generate

        print(f">> generating example data ({DEV_DATA_PEOPLE:,} people) in {target}", flush=True)
        generate(target, DEV_DATA_PEOPLE)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run sandbox + gateway until SIGINT/SIGTERM."""
    import signal
    import threading

    from gateway.console import start_console
    from gateway.rpc.server import start_gateway
    from gateway.settings import load_settings
    from sandbox.client import SandboxConnectionError, SandboxStartError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)

    overrides = {
        "listen": args.listen, "policy": args.policy, "catalog": args.catalog,
        "data_dir": args.data_dir, "state_dir": args.state_dir, "tls_dir": args.tls_dir,
        "storage_url": args.storage_url,
        "query_timeout_ms": args.query_timeout_ms, "metrics_port": args.metrics_port,
        "log_format": args.log_format, "console_listen": args.console_listen,
        "console_public_listen": args.console_public_listen, "sandbox_address": args.sandbox_address,
        "sandbox_tls_ca": args.sandbox_tls_ca, "sandbox_tls_cert": args.sandbox_tls_cert,
        "sandbox_tls_key": args.sandbox_tls_key,
    }
    settings = load_settings({k: v for k, v in overrides.items() if v is not None})
    if settings.log_format == "json":
        from gateway.release.logs import install_json_logging

        install_json_logging()
    if args.dev:
        _ensure_dev_assets(settings.tls_dir, settings.policy, settings.data_dir)
    # The files are checked here, so a broken one is one line naming it, not the sandbox's start-up failure.
    from gateway.policy.policy import load_policy
    from sandbox.catalog import load_catalog

    load_policy(settings.policy)
    load_catalog(settings.catalog)
    if args.workers > 1:
        from gateway.cli.workers import serve_workers, worker_argv

        return serve_workers(settings, args.workers, worker_argv(args.argv))
    try:
        gateway = start_gateway(settings)
    except (SandboxConnectionError, SandboxStartError) as exc:
        where = settings.sandbox_address or str(settings.sandbox_socket)
        print(f"the sandbox ({where}) is not available: {exc}", file=sys.stderr)
        return 1
    try:
        start_console(gateway, settings)
    except BaseException:
        gateway.stop()
        raise
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # issue-gov: SIGHUP re-reads the policy file (atomic; a broken file is logged and changes nothing)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=gateway.reload_policy).start())
    # Handlers are installed before "ready" is printed (a signal right after it must not kill the process).
    print(f"gateway ready port={gateway.port} pid={os.getpid()}", flush=True)
    print(f"  clients: pgw query --target 127.0.0.1:{gateway.port} --tls-dir {settings.tls_dir} "
          f"--as <consumer> ...", flush=True)
    # Wake up regularly: the kernel may deliver a signal to one of gRPC's threads, and Python then runs its
    # handler only when the main thread next executes bytecode, which a plain stop.wait() never does (a
    # SIGHUP reload was seen to wait 20 s and more on a loaded machine).
    while not stop.wait(0.2):
        pass
    print("stopping", flush=True)
    gateway.stop()
    return 0
