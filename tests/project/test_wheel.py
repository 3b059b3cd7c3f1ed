"""The project builds a wheel (pip and the locked setuptools, no network), and that wheel installed into a fresh
virtual environment with --no-deps gives a working `pgw --help` (which needs no third-party package) and an
importable client library (its dependencies taken from the development environment)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from gateway.settings import ROOT

pytestmark = [pytest.mark.slow]


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(ROOT)], check=True, timeout=300, capture_output=True)
    (wheel,) = dist.glob("privacy_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "pgw_client/client.py" in names and "privacy_gateway/v1/query_service_pb2.py" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text and "Classifier: Typing :: Typed" in text
    assert "Provides-Extra: pandas" in text

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300, capture_output=True)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PGW_")}
    helped = subprocess.run([str(venv / "bin" / "pgw"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env=clean, timeout=60)
    assert helped.returncode == 0 and "receipt" in helped.stdout and "exit status" in helped.stdout, helped.stderr
    version = subprocess.run([str(venv / "bin" / "pgw"), "--version"], capture_output=True, text=True,
                             cwd=tmp_path, env=clean, timeout=60)
    assert version.stdout.strip() == "pgw 0.1.0", version.stdout + version.stderr

    deps = sysconfig.get_paths()["purelib"]  # grpcio, cryptography, ... from the development environment
    code = "import pgw_client, gateway; print(pgw_client.__file__); print(gateway.__file__)"
    imported = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env={**clean, "PYTHONPATH": deps}, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert all(line.startswith(str(venv)) for line in imported.stdout.split()), imported.stdout
