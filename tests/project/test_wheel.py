"""The project builds a wheel (pip and the locked setuptools, no network) whose top-level packages are the product's
only (no `examples`, no `tests`), with the example policies and the `.proto` files as package data. Installed into a
fresh virtual environment with --no-deps (its third-party dependencies come from the development environment's
site-packages through a `.pth` file, so the test runs offline), the wheel's `pgw` works from empty directories
with its defaults: `pgw check-policy` names the missing example data and how to make it, `pgw example-data`
makes it, `pgw check-policy` then passes, and `pgw serve --dev` answers a `pgw query` with the default TLS
directory; its state lives in `$PGW_HOME`, never in the installed package."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from gateway.settings import ROOT

pytestmark = [pytest.mark.slow]


def _source(tmp_path: Path) -> Path:
    """The working tree's tracked and untracked-but-not-ignored files, copied: a build reads none of the
    checkout's leftovers (an old `build/` directory would put stale modules into the wheel)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, timeout=60).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    return src


def _build(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(_source(tmp_path))], check=True, timeout=300, capture_output=True)
    (wheel,) = dist.glob("privacy_gateway-*.whl")
    return wheel


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"gateway", "sandbox", "pgw_client", "privacy_gateway"}, top
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "pgw_client/client.py" in names and "privacy_gateway/v1/query_service_pb2.py" in names
    assert {"gateway/shipped/policies/operator.toml", "gateway/shipped/policies/catalog.toml"} <= set(names)
    protos = {p.name for p in (ROOT / "proto" / "privacy_gateway" / "v1").glob("*.proto")}
    assert protos and {f"privacy_gateway/v1/{p}" for p in protos} <= set(names)
    assert "gateway/exampledata/generate.py" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text and "Classifier: Typing :: Typed" in text
    assert "Provides-Extra: pandas" in text

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300, capture_output=True)
    home = tmp_path / "home"
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith(("PGW_", "PRIVACY_GATEWAY_"))}
    clean["PGW_HOME"] = str(home)

    def pgw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        cwd.mkdir(exist_ok=True)
        return subprocess.run([str(venv / "bin" / "pgw"), *args], capture_output=True, text=True, cwd=cwd,
                              env=clean, timeout=120)

    helped = pgw("--help", cwd=tmp_path / "empty-0")
    assert helped.returncode == 0 and "receipt" in helped.stdout and "exit status" in helped.stdout, helped.stderr
    assert pgw("--version", cwd=tmp_path / "empty-0").stdout.strip() == "pgw 0.1.0"

    # the rest needs grpcio, duckdb, ...: the development environment's site-packages, after the venv's own
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "development-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = "import pgw_client, gateway, sandbox; print(pgw_client.__file__, gateway.__file__, sandbox.__file__)"
    imported = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env=clean, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert all(p.startswith(str(venv)) for p in imported.stdout.split()), imported.stdout

    before = pgw("check-policy", cwd=tmp_path / "empty-1")
    assert before.returncode == 2 and "Traceback" not in before.stderr, before.stderr
    assert "operator.toml: ok" in before.stdout and "pgw example-data" in before.stderr, before.stdout + before.stderr
    made = pgw("example-data", "--people", "2000", cwd=tmp_path / "empty-1")
    assert made.returncode == 0 and str(home / "example-data") in made.stdout, made.stderr
    after = pgw("check-policy", cwd=tmp_path / "empty-2")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "catalog.toml: ok (2 datasets; 4 data files" in after.stdout, after.stdout

    demo = pgw("demo", cwd=tmp_path / "empty-2")
    assert demo.returncode == 2 and "source checkout" in demo.stderr and "Traceback" not in demo.stderr, demo.stderr

    serve_dir = tmp_path / "empty-3"
    serve_dir.mkdir()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(venv / "bin" / "pgw"), "serve", "--dev", "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=log, text=True, cwd=serve_dir, env=clean)
    try:
        assert server.stdout is not None
        deadline, port = time.monotonic() + 180, 0
        while not port and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line, (tmp_path / "serve.log").read_text()
            if line.startswith("gateway ready port="):
                port = int(line.split()[2].split("=")[1])
        assert port, "pgw serve --dev did not become ready"
        answer = pgw("query", "--target", f"127.0.0.1:{port}", "--as", "acme-bank-analyst", "--dataset",
                     "registry", "--purpose", "credit-risk", "--epsilon", "0.5", "--json",
                     "SELECT COUNT(*) AS n FROM residents", cwd=tmp_path / "empty-4")
        assert answer.returncode == 0, answer.stderr
        assert '"charged"' in answer.stdout and '"n_lower"' in answer.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert (home / "state" / "ledger.sqlite3").is_file() and (home / "state" / "certs" / "ca.crt").is_file()
    assert not (site / ".state").exists() and not list(serve_dir.iterdir())
