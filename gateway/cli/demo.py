"""`make demo`: example data, dev certificates, sandbox + gateway on loopback, one enterprise session, stop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from gateway import assets

ROOT = assets.ROOT
DEMO_DIR = ROOT / ".demo"
DATA_DIR = assets.example_data_dir()
PEOPLE = 20_000
DATA_FILES = ("residents.parquet", "enterprises.parquet", "social_insurance.parquet", "regions.parquet")
READY_TIMEOUT_S = 120.0


def _step(text: str) -> None:
    print(f"\n>> {text}", flush=True)


def run_demo() -> int:
    """Run the demo end to end; return the client's exit status.

    Raises:
        ClientSetupError: not a source checkout (the demo's client session is examples/client.py).
    """
    if not assets.SOURCE_CHECKOUT:
        from pgw_client.errors import ClientSetupError

        raise ClientSetupError("pgw demo runs examples/client.py, which only a source checkout has (git clone, then "
                               "make demo); with the installed package: pgw serve --dev in one terminal, then "
                               "pgw query --as acme-bank-analyst ... (docs/analyst.md)")
    started = time.monotonic()
    from gateway.exampledata.generate import generate
    from gateway.identity import certs
    from gateway.policy.policy import load_policy

    if not all((DATA_DIR / f).exists() for f in DATA_FILES):
        _step(f"generating synthetic registry data for {PEOPLE:,} people in {DATA_DIR}")
        for name, rows in generate(DATA_DIR, PEOPLE).items():
            print(f"   {name}: {rows:,} rows")
    tls_dir = DEMO_DIR / "certs"
    state_dir = DEMO_DIR / "state"
    _step(f"development certificates (CA, server, one per consumer) in {tls_dir}")
    policy = load_policy(assets.policy_file())
    certs.write_dev_pki(tls_dir, clients=policy.identities)  # issue-gov
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh ledger: the demo starts with full budgets

    _step("starting the sandbox (loads the data, then locks DuckDB down) and the gateway (mTLS)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    log_path = DEMO_DIR / "gateway.log"
    log_file = log_path.open("w")
    print(f"   server log: {log_path}")
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0",
         "--state-dir", str(state_dir), "--tls-dir", str(tls_dir), "--data-dir", str(DATA_DIR)],
        stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=ROOT,
    )
    try:
        port = _wait_ready(server)
        print(f"   gateway listening on 127.0.0.1:{port}")
        _step("an enterprise session (examples/client.py as acme-bank-analyst)")
        client = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "client.py"), "--target",
             f"127.0.0.1:{port}", "--tls-dir", str(tls_dir), "--as", "acme-bank-analyst"],
            env=env, cwd=ROOT, check=False,
        )
    finally:
        _step("shutting down")
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log_file.close()
    print(f"demo finished in {time.monotonic() - started:.1f} s "
          f"({'ok' if client.returncode == 0 else 'FAILED'})")
    return client.returncode


def _wait_ready(server: subprocess.Popen[str]) -> int:
    assert server.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            raise SystemExit(
                f"the gateway exited during start-up (status {server.wait()}); "
                f"see {DEMO_DIR / 'gateway.log'}"
            )
        if line.startswith("gateway ready port="):
            return int(line.split()[2].split("=")[1])
    raise SystemExit("the gateway did not become ready in time")


if __name__ == "__main__":
    sys.exit(run_demo())
