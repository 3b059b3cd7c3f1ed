"""Test helpers for the networked sandbox: the data owner's PKI and a standalone `python -m sandbox --listen`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.identity import certs
from gateway.settings import ROOT, Settings
from sandbox.client import SandboxClient, TlsEndpoint, TlsFiles

READY = "sandbox ready listen="


def owner_pki(root: Path, gateways: Sequence[str] = ("gw1", "gw2"),
              hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> Path:
    """The data owner's link PKI under `root/owner-tls` (CA, sandbox pair, a pair per gateway)."""
    out = root / "owner-tls"
    certs.write_owner_pki(out, gateways, hosts)
    return out


def gateway_files(tls: Path, name: str) -> TlsFiles:
    """The files gateway `name` uses on the link (trust: the owner's CA in `tls`)."""
    return TlsFiles(tls / "ca.crt", tls / f"{name}.crt", tls / f"{name}.key")


def remote_settings(base: Settings, state: Path, port: int, tls: Path, name: str, *,
                    host: str = "127.0.0.1") -> Settings:
    """`base` for a gateway named `name` with its own state, reaching the sandbox at host:port over TLS."""
    from dataclasses import replace

    f = gateway_files(tls, name)
    return replace(base, state_dir=state, sandbox_socket=state / "sandbox.sock", sandbox_address=f"{host}:{port}",
                   sandbox_tls_ca=f.ca, sandbox_tls_cert=f.cert, sandbox_tls_key=f.key)


@dataclass
class OwnerSandbox:
    """A standalone sandbox serving over TCP with mutual TLS (the data owner's process, started by the test)."""

    catalog: Path
    data_dir: Path | None
    tls: Path
    state: Path
    host: str = "127.0.0.1"
    port: int = 0
    prefix: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", "owner") to run it on another "host"
    proc: subprocess.Popen[str] | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=500))

    def start(self, timeout_s: float = 60.0) -> OwnerSandbox:
        """Start it and wait for its ready line (the port it bound is kept, so a restart reuses it)."""
        cmd = [*self.prefix, sys.executable, "-m", "sandbox", "--catalog", str(self.catalog),
               "--listen", f"{self.host}:{self.port}", "--tls-dir", str(self.tls), "--state-dir", str(self.state),
               "--memory-limit", "1GiB"]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        err = proc.stderr
        threading.Thread(target=lambda: self.stderr.extend(err), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        for line in proc.stdout:
            if line.startswith(READY):
                self.port = int(line[len(READY):].split()[0].rpartition(":")[2])
                return self
            if time.monotonic() > deadline:
                break
        self.kill()
        time.sleep(0.2)
        raise RuntimeError("the sandbox did not start:\n" + "".join(self.stderr))

    def client(self, gateway: str = "gw1", timeout_s: float = 10.0) -> SandboxClient:
        return SandboxClient(TlsEndpoint(self.host, self.port, gateway_files(self.tls, gateway)), timeout_s)

    def log_has(self, text: str, wait_s: float = 5.0) -> bool:
        """True once a stderr line of the sandbox contains `text`."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.stderr)):
                return True
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
