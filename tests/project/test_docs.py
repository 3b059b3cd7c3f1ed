"""The docs run as written: every fenced ```` ```sh ````, ```` ```bash ```` and ```` ```python ```` block of README.md
and docs/*.md is executed, page by page in `PAGES` order and in order within a page, in one working directory laid
out like `make serve`'s (`.state/` with the gateway's state and `.state/certs`), against a real gateway started
with the shipped policy and catalog. A block passes when it exits 0 without a traceback.

A block that cannot run in a test says why in its info string, ```` ```sh skip: <reason> ```` (a server in the
foreground, another host, a PostgreSQL server), and there are few of them (`MAX_SKIPS`). A runnable block with
any other marker, or a bare block holding a command, fails the test: every command is either run or explained.
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

# The order the blocks run in: a later page may use what an earlier one wrote (receipt.json, gateway.pem).
PAGES = ("README.md", "docs/analyst.md", "docs/data-owner.md", "docs/operator.md", "docs/auditor.md",
         "docs/console.md", "docs/deployment.md", "docs/reference.md", "docs/architecture.md", "docs/threats.md")
RUNNABLE = ("sh", "bash", "python")
MAX_SKIPS = 8
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
INFO = re.compile(r"^(?P<lang>[A-Za-z0-9_+-]*)(?:\s+skip:\s*(?P<reason>.*\S))?\s*$")
COMMAND_LINE = re.compile(r"^\s*(\$ )?(pgw|make|python3?|\.venv/bin/\S+|pip|curl|export)\s", re.M)


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its info string's language and skip reason, and its code."""

    page: str
    line: int
    info: str
    lang: str
    skip: str | None
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line} ({self.info or 'no language'})"


def blocks(page: str) -> list[Block]:
    """Every fenced block of `page` (a path relative to the repository), in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        info = m.group(1).strip()
        parsed = INFO.match(info)
        lang = parsed.group("lang") if parsed else info
        reason = parsed.group("reason") if parsed else None
        out.append(Block(page, text.count("\n", 0, m.start()) + 1, info, lang, reason, m.group(2)))
    return out


def test_every_page_is_listed() -> None:
    assert set(PAGES) == {"README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))}


def test_every_command_is_run_or_says_why_not() -> None:
    """A runnable block has no marker (it runs) or `skip: <reason>` of a few words; a bare block or one in
    another language holds no command; the skips stay few."""
    bad, skipped = [], []
    for page in PAGES:
        for b in blocks(page):
            if b.lang in RUNNABLE:
                if INFO.match(b.info) is None:
                    bad.append(f"{b.where}: unknown marker; use ```{b.lang} or ```{b.lang} skip: <why it cannot run>")
                elif b.skip is not None:
                    skipped.append(b)
                    if len(b.skip.split()) < 4:
                        bad.append(f"{b.where}: say why the block cannot run in a test (a few words)")
            elif b.skip is not None:
                bad.append(f"{b.where}: only sh, bash and python blocks run; drop the skip marker")
            elif b.lang not in ("toml", "sql", "text", "json", "proto") and COMMAND_LINE.search(b.code):
                bad.append(f"{b.where}: holds a command: mark it ```sh (it then runs) or ```sh skip: <reason>")
    assert not bad, "\n".join(bad)
    assert 0 < len(skipped) <= MAX_SKIPS, [b.where for b in skipped]


def test_the_guides_have_shell_and_python() -> None:
    for page in ("docs/analyst.md", "docs/data-owner.md", "docs/operator.md", "docs/auditor.md"):
        assert any(b.lang == "sh" and b.skip is None for b in blocks(page)), page
    assert any(b.lang == "python" and b.skip is None for b in blocks("docs/analyst.md"))
    assert any(b.lang == "python" and b.skip is None for b in blocks("README.md"))


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


def _run(block: Block, gw: Gateway, work: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PGW_", "PRIVACY_GATEWAY_"))}
    environ.update(PGW_TARGET=f"127.0.0.1:{gw.port}", PYTHONPATH=str(ROOT), PRIVACY_GATEWAY_DATA_DIR=str(data_dir),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}")
    argv = (["bash", "-euo", "pipefail", "-c", block.code] if block.lang in ("sh", "bash")
            else [sys.executable, "-c", block.code])
    return subprocess.run(argv, cwd=work, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page: str, served: tuple[Gateway, Path], env: Env) -> None:
    gw, work = served
    for block in blocks(page):
        if block.lang not in RUNNABLE or block.skip is not None:
            continue
        out = _run(block, gw, work, env.data_dir)
        if os.environ.get("PGW_DOCS_SHOW"):
            print(f"\n# {block.where}\n{block.code}{out.stdout}{out.stderr}")
        where = f"{block.where}:\n{block.code}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
        assert out.returncode == 0, where
        assert "Traceback" not in out.stderr, where

