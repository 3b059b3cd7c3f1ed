"""The guides per role run as written: every code block marked ```` ```sh tested ```` or ```` ```python tested ````
in docs/analyst.md, docs/data-owner.md, docs/operator.md and docs/auditor.md is executed, in that order, in one
working directory laid out like `make serve`'s (`.state/` with the gateway's state and `.state/certs`), against
a real gateway started with the shipped policy and catalog. A block passes when it exits 0 without a traceback.
`$PGW_TARGET` points the commands at the test gateway's port, as a user would for a gateway elsewhere, and
`$PRIVACY_GATEWAY_DATA_DIR` at the test data (the setting `pgw serve` and `pgw check-policy` share)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.identity import certs
from gateway.policy.policy import load_policy
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT
from tests.helpers import Env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAGES = ("analyst", "data-owner", "operator", "auditor")
BLOCK = re.compile(r"^```(sh|python) tested\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> list[tuple[str, str]]:
    """(language, code) of every tested block of docs/<page>.md, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((ROOT / "docs" / f"{page}.md").read_text())]


def test_every_guide_has_tested_blocks() -> None:
    for page in PAGES:
        langs = {lang for lang, _ in blocks(page)}
        assert "sh" in langs, page
    assert any(lang == "python" for lang, _ in blocks("analyst"))


@pytest.fixture(scope="module")
def served(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    work = tmp_path_factory.mktemp("docs")
    state = work / ".state"
    policy = ROOT / "policies" / "operator.toml"
    certs.write_dev_pki(state / "certs", clients=load_policy(policy).identities)
    settings = dataclasses.replace(env.settings, policy=policy, catalog=ROOT / "policies" / "catalog.toml",
                                   state_dir=state, tls_dir=state / "certs", sandbox_socket=state / "sandbox.sock")
    gw = start_gateway(settings)
    yield gw, work
    gw.stop()


def _run(lang: str, code: str, gw: Gateway, work: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PGW_", "PRIVACY_GATEWAY_"))}
    environ.update(PGW_TARGET=f"127.0.0.1:{gw.port}", PYTHONPATH=str(ROOT), PRIVACY_GATEWAY_DATA_DIR=str(data_dir),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}")
    argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
    return subprocess.run(argv, cwd=work, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("page", PAGES)
def test_guide_runs_as_written(page: str, served: tuple[Gateway, Path], env: Env) -> None:
    gw, work = served
    for k, (lang, code) in enumerate(blocks(page)):
        out = _run(lang, code, gw, work, env.data_dir)
        if os.environ.get("PGW_DOCS_SHOW"):
            print(f"\n$ {code}\n{out.stdout}{out.stderr}")
        where = (f"docs/{page}.md tested block {k + 1} ({lang}):\n{code}\n--- stdout\n{out.stdout}\n"
                 f"--- stderr\n{out.stderr}")
        assert out.returncode == 0, where
        assert "Traceback" not in out.stderr, where
