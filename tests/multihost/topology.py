"""Hosts on one machine: a network namespace per host, joined by a bridge in a switch namespace of its own.

Each host gets `eth0` with an address in one /24 and a veth peer on the bridge; the root namespace gets no
interface and no route, so traffic flows only between the hosts. `Hosts.add` makes one more host (the
PostgreSQL host of `test_netns_postgres.py` is one more `add` and its server started
under `prefix`). Needs root and iproute2 (`ip`); `available` says why not otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (the multi-host test runs as root; `make install` as root adds iproute2)"
    if shutil.which("ip") is None:
        return "no `ip` command: install iproute2 (`make netns` as root does it with apt-get)"
    probe = f"pgwprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Hosts:
    """Network namespaces `<tag>-<name>` on a bridge in `<tag>-switch`; addresses 10.<a>.<b>.<n>/24."""

    tag: str = field(default_factory=lambda: f"pgw{secrets.token_hex(2)}")
    subnet: str = field(default_factory=lambda: f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}")
    addresses: dict[str, str] = field(default_factory=dict)
    _made: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        switch = f"{self.tag}-switch"
        _ip("netns", "add", switch)
        self._made.append(switch)
        _ip("link", "add", "br0", "type", "bridge", ns=switch)
        _ip("link", "set", "br0", "up", ns=switch)

    def ns(self, name: str) -> str:
        """The namespace of host `name`."""
        return f"{self.tag}-{name}"

    def add(self, name: str) -> str:
        """A new host `name` on the bridge; its address."""
        ns, switch = self.ns(name), f"{self.tag}-switch"
        n = len(self.addresses) + 1
        address = f"{self.subnet}.{n}"
        _ip("netns", "add", ns)
        self._made.append(ns)
        peer = f"p{n}"
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", switch)
        _ip("link", "set", peer, "master", "br0", ns=switch)
        _ip("link", "set", peer, "up", ns=switch)
        _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        self.addresses[name] = address
        return address

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program on host `name`."""
        return ["ip", "netns", "exec", self.ns(name)]

    def run(self, name: str, cmd: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        """Start `cmd` on host `name` (`ip netns exec` execs it: the pid is the program's)."""
        return subprocess.Popen([*self.prefix(name), *cmd], text=True, **kw)  # type: ignore[call-overload, no-any-return]

    def close(self) -> None:
        """Delete every namespace (their interfaces go with them)."""
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()
