"""The gateway-sandbox link over TCP with mutual TLS under the data owner's CA: a real standalone sandbox
(`python -m sandbox --listen`), real certificates from `pgw certs --owner`, and the refusals on both sides."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.cli.main import main as pgw
from gateway.errors import ConfigError
from gateway.rpc.server import start_gateway
from gateway.settings import ROOT
from sandbox.client import SandboxClient, SandboxConnectionError, TlsEndpoint, TlsFiles
from sandbox.protocol.messages import CatalogInfo
from tests.helpers import Env
from tests.net_helpers import OwnerSandbox, gateway_files, owner_pki, remote_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def link(env: Env) -> Iterator[tuple[OwnerSandbox, Path]]:
    """A standalone sandbox on 127.0.0.1 (a free port), and a second, foreign PKI (another CA, same names)."""
    root = Path(tempfile.mkdtemp(prefix="pgw-tls-"))
    tls = owner_pki(root)
    foreign = root / "foreign"
    assert pgw(["certs", "--owner", "--out", str(foreign), "--client", "gw1", "--host", "127.0.0.1"]) == 0
    sandbox = OwnerSandbox(ROOT / "policies" / "catalog.toml", env.data_dir, tls, root / "owner-state").start()
    yield sandbox, foreign
    sandbox.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_owner_pki_files_and_a_gateway_served_over_mutual_tls(link: tuple[OwnerSandbox, Path]) -> None:
    """`pgw certs --owner` writes the owner's CA, the sandbox's pair and one pair per gateway; a gateway
    certificate from that CA gets health and the catalog over TLS 1.3, on one pooled connection."""
    sandbox, _ = link
    assert {p.name for p in sandbox.tls.iterdir()} == {
        "ca.crt", "ca.key", "sandbox.crt", "sandbox.key", "gw1.crt", "gw1.key", "gw2.crt", "gw2.key"}
    client = sandbox.client("gw2")
    health = client.health()
    assert health.serving and health.locked_down and health.parent_pid == 0 and not health.orphaned
    assert isinstance(client.describe(), CatalogInfo)
    [(_, conn)] = client._idle
    assert isinstance(conn, ssl.SSLSocket) and conn.version() == "TLSv1.3"


def test_sandbox_refuses_plaintext_and_clients_without_an_owner_certificate(
        link: tuple[OwnerSandbox, Path]) -> None:
    """Plaintext, a client certificate from another CA, and no client certificate are each refused in the
    handshake: the peer gets nothing, the sandbox logs who and why, and the gateway's client says which side
    refused what (before anything was sent: nothing to charge)."""
    sandbox, foreign = link
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as raw:
        body = b'{"type":"health"}'
        raw.sendall(struct.pack(">I", len(body)) + body)
        assert raw.recv(100) == b""  # no answer to plaintext
    assert sandbox.log_has("does not speak TLS (plaintext or another protocol): refused")

    rogue = SandboxClient(TlsEndpoint(sandbox.host, sandbox.port, TlsFiles(
        sandbox.tls / "ca.crt", foreign / "gw1.crt", foreign / "gw1.key")), 5.0)
    with pytest.raises(SandboxConnectionError) as info:
        rogue.health()
    assert info.value.before_send
    assert "refused this gateway's certificate" in str(info.value) and "data owner's CA" in str(info.value)
    assert sandbox.log_has("presented a certificate this sandbox does not accept")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(sandbox.tls / "ca.crt"))
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sandbox.host) as tls, \
            pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        tls.recv(100)  # the sandbox's alert, never its greeting
    assert sandbox.log_has("presented no client certificate: one from the data owner's CA is required")
    assert sandbox.client().health().serving  # and it keeps serving its gateways


def test_gateway_refuses_a_sandbox_from_another_ca_or_one_speaking_plaintext(
        link: tuple[OwnerSandbox, Path]) -> None:
    """A gateway that trusts another CA refuses the sandbox's certificate; a server answering plaintext frames
    is refused as not TLS. Both before a request is sent."""
    sandbox, foreign = link
    mine = gateway_files(sandbox.tls, "gw1")
    wrong_trust = SandboxClient(TlsEndpoint(sandbox.host, sandbox.port, replace(mine, ca=foreign / "ca.crt")), 5.0)
    with pytest.raises(SandboxConnectionError) as info:
        wrong_trust.health()
    assert info.value.before_send
    assert "presented a certificate this gateway does not accept" in str(info.value)
    assert "issued by the data owner's CA" in str(info.value)

    plain = socket.create_server(("127.0.0.1", 0))

    def answer_plaintext() -> None:
        conn, _ = plain.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(struct.pack(">I", 2) + b"{}")

    threading.Thread(target=answer_plaintext, daemon=True).start()
    with plain, pytest.raises(SandboxConnectionError) as info:
        SandboxClient(TlsEndpoint("127.0.0.1", plain.getsockname()[1], mine), 5.0).health()
    assert info.value.before_send and "does not speak TLS" in str(info.value)


def test_start_gateway_names_a_missing_tls_file_and_refuses_a_foreign_sandbox(
        env: Env, link: tuple[OwnerSandbox, Path], tmp_path: Path) -> None:
    """A gateway configured for a remote sandbox without its TLS files fails with the setting named; one
    that trusts another CA does not start, saying why; neither spawns a sandbox."""
    sandbox, foreign = link
    settings = remote_settings(env.settings, tmp_path / "a", sandbox.port, sandbox.tls, "gw1")
    with pytest.raises(ConfigError, match="sandbox_tls_cert") as info:
        start_gateway(replace(settings, sandbox_tls_cert=tmp_path / "missing.crt"))
    assert "missing.crt" in str(info.value)
    with pytest.raises(SandboxConnectionError, match="does not accept"):
        start_gateway(replace(settings, sandbox_tls_ca=foreign / "ca.crt"))
    assert not (tmp_path / "a" / "sandbox.sock").exists()


def test_open_connections_are_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """Peers that connect and never finish a handshake hold at most MAX_CONNECTIONS slots: past that a new
    connection is closed at once (logged), and a gateway connects again once the slots are free."""
    from sandbox.catalog import load_catalog
    from sandbox.engine.engine import Engine
    from sandbox.engine.limits import Limits
    from sandbox.server import SandboxTlsServer
    from tests.sandbox.process.test_sandbox_lifecycle import _catalog

    monkeypatch.setattr("sandbox.server.MAX_CONNECTIONS", 2)
    tls = owner_pki(tmp_path)
    engine = Engine(load_catalog(_catalog(tmp_path)), Limits(query_timeout_ms=5000, threads=1))
    server = SandboxTlsServer(("127.0.0.1", 0), TlsFiles(tls / "ca.crt", tls / "sandbox.crt", tls / "sandbox.key"),
                              engine)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    client = SandboxClient(TlsEndpoint("127.0.0.1", server.port, gateway_files(tls, "gw1")), 5.0)
    try:
        assert client.health(fresh=True).serving
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        with pytest.raises(SandboxConnectionError) as info, caplog.at_level("WARNING", "sandbox.server"):
            for _ in range(20):  # until both idle peers hold their slots
                client.health(fresh=True)
        assert info.value.before_send
        assert "2 connections are open" in caplog.text
        for s in idle:
            s.close()
        time.sleep(0.5)
        assert client.health(fresh=True).serving
    finally:
        server.shutdown()
        server.server_close()
