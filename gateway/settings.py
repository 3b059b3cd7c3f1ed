"""Process settings (addresses, paths, limits): CLI flags, then PRIVACY_GATEWAY_* environment, then defaults.

Privacy policy is not here: it lives in the operator's policy file and the data owner's catalog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# name -> (default, help). Every setting is documented here and in the README (a test checks both).
SETTINGS: dict[str, tuple[Any, str]] = {
    "listen": ("127.0.0.1:50051", "host:port the gateway serves gRPC on (TLS, client certs required)"),
    "policy": (ROOT / "policies" / "operator.toml", "the operator's policy file"),
    "catalog": (ROOT / "policies" / "catalog.toml", "the data owner's catalog (read by the sandbox)"),
    "data_dir": (None, "directory of the catalog's data files (default: the catalog's data_dir)"),
    "state_dir": (ROOT / ".state", "durable state: ledger database, sandbox socket"),
    "tls_dir": (None, "directory with ca.crt, server.crt, server.key (default: <state_dir>/certs)"),
    "sandbox_socket": (None, "Unix socket of the sandbox (default: <state_dir>/sandbox.sock)"),
    "start_sandbox": (True, "start the sandbox process (false: connect to a running one)"),
    "query_timeout_ms": (10_000, "per-query time limit inside the sandbox, milliseconds"),
    "sandbox_memory_limit": ("2GiB", "DuckDB memory limit inside the sandbox"),
    "sandbox_threads": (2, "DuckDB threads inside the sandbox"),
    "max_workers": (64, "worker threads for request bodies; also the most calls that run at once"),
    "max_calls_per_identity": (16, "the most calls one certificate identity may have running at once"),
    "max_queued_calls": (256, "calls that may wait for a free worker (beyond: RESOURCE_EXHAUSTED + RetryInfo)"),
    "queue_wait_ms": (2000, "the longest a call waits for a free worker before RESOURCE_EXHAUSTED"),
    "stream_message_timeout_ms": (10_000, "the longest a streaming call may wait for its client's next message"),
    "storage_reserve_mb": (32, "MiB kept free for settling charges: new charged work is refused below twice this"),
    "health_interval_ms": (1000, "how often the sandbox's health is probed (NOT_SERVING while it is down)"),
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
    tls_dir: Path
    sandbox_socket: Path
    start_sandbox: bool
    query_timeout_ms: int
    sandbox_memory_limit: str
    sandbox_threads: int
    max_workers: int
    max_calls_per_identity: int
    max_queued_calls: int
    queue_wait_ms: int
    stream_message_timeout_ms: int
    storage_reserve_mb: int
    health_interval_ms: int
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
    if isinstance(default, Path) or name in ("data_dir", "tls_dir", "sandbox_socket"):
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
    values["tls_dir"] = values["tls_dir"] or state / "certs"
    values["sandbox_socket"] = values["sandbox_socket"] or state / "sandbox.sock"
    if values["log_format"] not in ("text", "json"):
        raise ConfigError("settings", "log_format", f"has value {values['log_format']!r}. Use text or json.")
    settings = Settings(**values)
    return replace(settings)


def setting_names() -> list[str]:
    """Names of all settings (for docs tests)."""
    return [f.name for f in fields(Settings)]
