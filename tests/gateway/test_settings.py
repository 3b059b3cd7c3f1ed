"""Process settings for a sandbox on the data owner's host: the endpoint they resolve to, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings
from sandbox.client import TlsEndpoint, TlsFiles


def test_without_an_address_the_gateway_starts_its_sandbox_on_the_unix_socket(tmp_path: Path) -> None:
    s = load_settings({"state_dir": tmp_path})
    assert s.spawns_sandbox and s.sandbox_endpoint == tmp_path / "sandbox.sock"


def test_an_address_means_mutual_tls_with_the_owner_files_and_no_sandbox_of_its_own(tmp_path: Path) -> None:
    s = load_settings({"state_dir": tmp_path, "sandbox_address": "10.0.0.3:7000", "start_sandbox": "true"})
    assert not s.spawns_sandbox
    d = tmp_path / "sandbox-tls"
    assert s.sandbox_endpoint == TlsEndpoint("10.0.0.3", 7000, TlsFiles(d / "ca.crt", d / "gateway.crt",
                                                                        d / "gateway.key"))
    v6 = load_settings({"state_dir": tmp_path, "sandbox_address": "[fd00::3]:7000", "sandbox_tls_ca": "/o/ca.crt"})
    assert isinstance(v6.sandbox_endpoint, TlsEndpoint)
    assert (v6.sandbox_endpoint.host, str(v6.sandbox_endpoint), v6.sandbox_endpoint.tls.ca) == (
        "fd00::3", "[fd00::3]:7000", Path("/o/ca.crt"))


@pytest.mark.parametrize("address", ["10.0.0.3", "10.0.0.3:", ":7000", "host:70000", "host:x", "10.0.0.3:0"])
def test_a_bad_sandbox_address_is_refused_naming_the_setting(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="sandbox_address"):
        load_settings({"state_dir": tmp_path, "sandbox_address": address})
