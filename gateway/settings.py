"""Process settings (addresses, paths, limits): CLI flags, then PRIVACY_GATEWAY_* environment, then defaults.

Privacy policy is not here: it lives in the operator's policy file and the data owner's catalog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway import assets
from gateway.errors import ConfigError
from sandbox.client import Endpoint, TlsEndpoint, TlsFiles, parse_address

ROOT = assets.ROOT  # the repository in a source checkout (see gateway.assets)

# name -> (default, help). Every setting is documented here and in docs/reference.md (a test checks both).
SETTINGS: dict[str, tuple[Any, str]] = {
    "listen": ("127.0.0.1:50051", "host:port the gateway serves gRPC on (TLS, client certs required)"),
    "policy": (assets.policy_file(), "the operator's policy file (default: the shipped example)"),
    "catalog": (assets.catalog_file(), "the data owner's catalog, read by the sandbox (default: the shipped example)"),
    "data_dir": (None, "directory of the catalog's data files (default: the catalog's data_dir; for the shipped "
                       "example catalog of an installed package, <home>/example-data)"),
    "state_dir": (assets.default_state_dir(), "durable state: ledger database, sandbox socket (default: .state in "
                                              "a source checkout; <home>/state when installed, see PGW_HOME)"),
    "storage_url": ("", "PostgreSQL URL (postgresql://...) for the ledger, audit log, governance state, release "
                        "cache and verification caps, shared by gateway replicas; empty: SQLite in state_dir"),
    "tls_dir": (None, "directory with ca.crt, server.crt, server.key (default: <state_dir>/certs)"),
    "sandbox_socket": (None, "Unix socket of the sandbox (default: <state_dir>/sandbox.sock)"),
    "start_sandbox": (True, "start the sandbox process (false: connect to a running one)"),
    "sandbox_address": ("", "host:port of a sandbox on the data owner's host, reached over TCP with mutual TLS "
                            "under the owner's CA (the gateway then starts none); empty: the Unix socket"),
    "sandbox_tls_ca": (None, "the data owner's CA certificate, trusted for the sandbox's certificate "
                             "(default: <state_dir>/sandbox-tls/ca.crt)"),
    "sandbox_tls_cert": (None, "this gateway's client certificate from the owner's CA "
                               "(default: <state_dir>/sandbox-tls/gateway.crt)"),
    "sandbox_tls_key": (None, "the key of sandbox_tls_cert (default: <state_dir>/sandbox-tls/gateway.key)"),
    "query_timeout_ms": (10_000, "per-query time limit inside the sandbox, milliseconds"),
    "sandbox_memory_limit": ("auto", "DuckDB memory limit inside the sandbox, e.g. `4GiB`; `auto`: half of the "
                                     "smaller of the sandbox machine's physical memory and its cgroup's memory "
                                     "limit, rounded down to 64 MiB (the sandbox logs what it chose)"),
    "sandbox_storage": ("disk", "where the sandbox keeps the loaded tables: `disk` (a DuckDB file in its state "
                                "directory, built once per data version, opened read-only; data may exceed the "
                                "memory limit) or `memory`"),
    "sandbox_threads": (2, "DuckDB threads inside the sandbox"),
    "sandbox_ready_timeout_s": (1800, "the longest the gateway waits for a sandbox it starts to be ready (a first "
                                      "start with sandbox_storage = disk builds the store: minutes for 100M people)"),
    "max_workers": (64, "worker threads for request bodies; also the most calls that run at once"),
    "max_executing": (max(4, 4 * (os.cpu_count() or 1)),
                      "the most calls whose work runs on worker threads at the same moment (default four per CPU "
                      "core); the others wait their turn on the event loop"),
    "max_calls_per_identity": (16, "the most calls one certificate identity may have running at once"),
    "max_queued_calls": (256, "calls that may wait for a free worker (beyond: RESOURCE_EXHAUSTED + RetryInfo)"),
    "queue_wait_ms": (2000, "the longest a call waits for a free worker before RESOURCE_EXHAUSTED"),
    "stream_message_timeout_ms": (10_000, "the longest a streaming call may wait for its client's next message"),
    "storage_reserve_mb": (32, "MiB kept free for settling charges: new charged work is refused below twice this"),
    "health_interval_ms": (1000, "how often the sandbox's health is probed (NOT_SERVING while it is down)"),
    "policy_poll_ms": (1000, "how often a gateway checks whether another replica on the same storage reloaded "
                             "the policy"),
    "metrics_port": (-1, "loopback port for Prometheus /metrics (0 picks one; -1 disables)"),
    "log_format": ("text", "log lines as `text` or `json` (structured, with request ids)"),
    "console_listen": ("", "host:port of the web console (HTTPS, client certificates of the CA required); "
                           "empty: no console"),
    "console_public_listen": ("", "host:port of the public transparency page (HTTPS, no client certificate; "
                                  "nothing else is served there); empty: none"),
    "console_publish_organizations": (False, "list the organisations granted each published dataset on the "
                                             "transparency page"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved process settings."""

    listen: str
    policy: Path
    catalog: Path
    data_dir: Path | None
    state_dir: Path
    storage_url: str
    tls_dir: Path
    sandbox_socket: Path
    start_sandbox: bool
    sandbox_address: str
    sandbox_tls_ca: Path
    sandbox_tls_cert: Path
    sandbox_tls_key: Path
    query_timeout_ms: int
    sandbox_memory_limit: str
    sandbox_storage: str
    sandbox_threads: int
    sandbox_ready_timeout_s: int
    max_workers: int
    max_executing: int
    max_calls_per_identity: int
    max_queued_calls: int
    queue_wait_ms: int
    stream_message_timeout_ms: int
    storage_reserve_mb: int
    health_interval_ms: int
    policy_poll_ms: int
    metrics_port: int
    log_format: str
    console_listen: str
    console_public_listen: str
    console_publish_organizations: bool

    @property
    def ledger_path(self) -> Path:
        """The ledger database."""
        return self.state_dir / "ledger.sqlite3"

    @property
    def spawns_sandbox(self) -> bool:
        """True if this gateway starts its own sandbox (`start_sandbox` and no `sandbox_address`)."""
        return self.start_sandbox and not self.sandbox_address

    @property
    def sandbox_endpoint(self) -> Endpoint:
        """Where the sandbox is: the Unix socket, or `sandbox_address` with this gateway's TLS files."""
        if not self.sandbox_address:
            return self.sandbox_socket
        host, port = parse_address(self.sandbox_address)
        return TlsEndpoint(host, port, TlsFiles(self.sandbox_tls_ca, self.sandbox_tls_cert, self.sandbox_tls_key))

    @property
    def sandbox_timeout_s(self) -> float:
        """Hard deadline the gateway waits for the sandbox: the query limit plus a margin."""
        return self.query_timeout_ms / 1000 + 5.0


def _cast(name: str, default: Any, raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(default, bool) or name == "start_sandbox":
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes"):
            return True
        if str(raw).lower() in ("0", "false", "no"):
            return False
        raise ConfigError("settings", name, f"has value {raw!r}. Not a valid boolean.")
    if isinstance(default, int):
        try:
            value = int(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError("settings", name, f"has value {raw!r}. Not a valid int.") from exc
        if value <= 0 and name != "metrics_port":
            raise ConfigError("settings", name, f"has value {raw!r}. Must be positive.")
        if name == "metrics_port" and not -1 <= value <= 65535:
            raise ConfigError("settings", name, f"has value {raw!r}. Not a port (or -1).")
        return value
    if isinstance(default, Path) or name in ("data_dir", "tls_dir", "sandbox_socket", "sandbox_tls_ca",
                                             "sandbox_tls_cert", "sandbox_tls_key"):
        return Path(raw)
    return str(raw)


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Resolve settings: explicit overrides (CLI) > PRIVACY_GATEWAY_<NAME> env > defaults."""
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for name, (default, _help) in SETTINGS.items():
        raw = overrides.get(name)
        if raw is None:
            raw = os.environ.get(f"PRIVACY_GATEWAY_{name.upper()}")
        values[name] = default if raw is None else _cast(name, default, raw)
    state = Path(values["state_dir"])
    values["data_dir"] = values["data_dir"] or assets.data_dir_for(Path(values["catalog"]))
    values["tls_dir"] = values["tls_dir"] or state / "certs"
    values["sandbox_socket"] = values["sandbox_socket"] or state / "sandbox.sock"
    if values["storage_url"] and urlsplit(values["storage_url"]).scheme not in ("postgresql", "postgres"):
        raise ConfigError("settings", "storage_url", "is not a postgresql:// URL (leave it empty for SQLite in "
                          "state_dir).")
    for name, file in (("sandbox_tls_ca", "ca.crt"), ("sandbox_tls_cert", "gateway.crt"),
                       ("sandbox_tls_key", "gateway.key")):
        values[name] = values[name] or state / "sandbox-tls" / file
    if values["sandbox_address"]:
        try:
            _host, port = parse_address(values["sandbox_address"])
        except ValueError as exc:
            raise ConfigError("settings", "sandbox_address", f"has value {values['sandbox_address']!r}. "
                              "Use host:port.") from exc
        if port == 0:
            raise ConfigError("settings", "sandbox_address", "port 0: name the port the sandbox listens on")
    if values["log_format"] not in ("text", "json"):
        raise ConfigError("settings", "log_format", f"has value {values['log_format']!r}. Use text or json.")
    if values["sandbox_storage"] not in ("disk", "memory"):
        raise ConfigError("settings", "sandbox_storage",
                          f"has value {values['sandbox_storage']!r}. Use disk or memory.")
    settings = Settings(**values)
    return replace(settings)


def setting_names() -> list[str]:
    """Names of all settings (for docs tests)."""
    return [f.name for f in fields(Settings)]
