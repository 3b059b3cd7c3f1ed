"""A throwaway PostgreSQL cluster for tests: initdb into a temporary directory, pg_ctl start on a private Unix
socket directory and port (no TCP listener unless asked: the multi-host test runs one on its own network-namespace
host, listening on that host's address for the gateway hosts only), stopped and removed at the end.

PostgreSQL refuses to run as root, so under root the server programs run as the ``postgres`` system user
(``runuser -u postgres``), which Debian's ``postgresql`` package creates. Every test gets a fresh database
(`PgCluster.database`), so tests never see each other's rows.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

_counter = itertools.count(1)


def _bin_dir() -> Path | None:
    """The directory of initdb and pg_ctl: PATH first, then Debian's versioned directories (newest first)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]),
                      reverse=True)
    return Path(versions[0]).parent if versions else None


@dataclass
class PgCluster:
    """A running cluster: its data directory, socket directory and port."""

    root: Path
    socket_dir: Path
    port: int
    runas: list[str]
    bin_dir: Path
    prefix: Sequence[str] = ()

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL to a database of this cluster (over its Unix socket)."""
        return f"postgresql:///{dbname}?host={self.socket_dir}&port={self.port}&user=postgres"

    def database(self) -> str:
        """Create a fresh, empty database and return its URL."""
        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate) and remove its files."""
        subprocess.run([*self.prefix, *self.runas, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                        "immediate", "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, listen: str = "", trusted: Sequence[str] = (), prefix: Sequence[str] = ()) -> PgCluster | str:
    """Start a cluster, or say why none can be started (the reason the postgres tests are skipped with).

    By default it listens on its Unix socket only. With `listen` (an address) it also listens on TCP port 5432
    there, run under `prefix` (e.g. `ip netns exec <host>` to put it on another host), and accepts TCP
    connections only from the `trusted` addresses (trust authentication, each a /32); the socket stays open to
    the test on this machine."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        return "no PostgreSQL server programs (initdb, pg_ctl): `make postgres` installs Debian's postgresql"
    runas: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (PostgreSQL refuses to run as root)"
        runas = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="pgw-pg-"))
    if runas:
        shutil.chown(root, "postgres")
    port = 5432 if listen else 20000 + os.getpid() % 20000
    init = subprocess.run([*runas, str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U",
                           "postgres", "-E", "UTF8", "--no-sync"], capture_output=True, text=True, check=False)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {init.stderr.strip()[-300:]}"
    if listen:
        hba = "local all all trust\n" + "".join(f"host all all {a}/32 trust\n" for a in trusted)
        (root / "data" / "pg_hba.conf").write_text(hba)
    options = (f"-k {root} -p {port} -c listen_addresses='{listen}' -c fsync=off -c max_connections=300"
               " -c shared_buffers=32MB")
    start = subprocess.run([*prefix, *runas, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l",
                            str(root / "server.log"), "-w", "-t", "60", "start"], capture_output=True, text=True,
                           check=False)
    if start.returncode != 0:
        log = (root / "server.log").read_text(errors="replace")[-400:] if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        return f"pg_ctl start failed: {start.stderr.strip()[-200:]} {log}"
    return PgCluster(root, root, port, runas, bin_dir, tuple(prefix))
