"""Where the files the gateway ships with live, in a source checkout and in an installed wheel.

A source checkout (this repository) keeps the example policies in ``policies/``, the ``.proto`` files in
``proto/``, the generated example data in ``examples/data`` and the state in ``.state``. An installed wheel
carries the example policies as package data (``gateway/shipped/policies/``) and the ``.proto`` files next to
the generated stubs (``privacy_gateway/v1/*.proto``), and keeps what it writes in a per-user home
(``$PGW_HOME``, else ``$XDG_DATA_HOME/privacy-gateway``, else ``~/.local/share/privacy-gateway``):
``state/`` and ``example-data/``, so `pgw` works the same from any working directory.

Standard library only: `pgw --help` and `pgw check-policy` read it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE", "ROOT", "SOURCE_CHECKOUT", "catalog_file", "data_dir_for", "default_state_dir",
           "example_data_dir", "home", "policies_dir", "policy_file", "proto_dir"]

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # the repository in a checkout; site-packages when installed
SOURCE_CHECKOUT = (ROOT / "policies" / "operator.toml").is_file() and (ROOT / "pyproject.toml").is_file()
ENV_HOME = "PGW_HOME"


def home() -> Path:
    """The installed package's per-user directory (not used by a source checkout)."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "privacy-gateway"


def policies_dir() -> Path:
    """The example operator policy and data owner's catalog."""
    return ROOT / "policies" if SOURCE_CHECKOUT else PACKAGE / "shipped" / "policies"


def policy_file() -> Path:
    """The default operator policy (the shipped example)."""
    return policies_dir() / "operator.toml"


def catalog_file() -> Path:
    """The default data owner's catalog (the shipped example)."""
    return policies_dir() / "catalog.toml"


def proto_dir() -> Path:
    """The directory to pass to protoc as ``-I``: it holds ``privacy_gateway/v1/*.proto``."""
    return ROOT / "proto" if SOURCE_CHECKOUT else ROOT


def default_state_dir() -> Path:
    """The state directory when the settings name none."""
    return ROOT / ".state" if SOURCE_CHECKOUT else home() / "state"


def example_data_dir() -> Path:
    """Where the example data the shipped catalog describes is generated."""
    return ROOT / "examples" / "data" if SOURCE_CHECKOUT else home() / "example-data"


def data_dir_for(catalog: Path) -> Path | None:
    """The data directory to use for ``catalog`` when none is set: None (the catalog's own ``data_dir``), except
    for the shipped example catalog of an installed package, whose data lives in the per-user home."""
    if SOURCE_CHECKOUT or Path(catalog).resolve() != catalog_file().resolve():
        return None
    return example_data_dir()
