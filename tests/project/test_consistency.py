"""The project's own rules, checked: fresh generated code, docs pinned to code (the import rules and the trust
boundary in imports: test_architecture.py)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway import errors
from gateway.cli.protogen import generate
from gateway.rpc.status import status_for
from gateway.settings import ROOT, SETTINGS

README = (ROOT / "docs" / "reference.md").read_text()  # the reference the README points to
def test_generated_code_is_fresh() -> None:
    """gen/python equals what `make proto` generates from proto/ now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = {p.relative_to(tmp): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
    committed_root = ROOT / "gen" / "python"
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in (committed_root / "privacy_gateway").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh == committed, "run `make proto` and commit gen/python"


def test_every_setting_is_documented() -> None:
    """Each process setting appears in the README's settings table."""
    for name in SETTINGS:
        assert f"| `{name}` |" in README, name


def _error_classes() -> list[type[errors.GatewayError]]:
    return [c for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, errors.GatewayError)]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_error_shape(cls: type[errors.GatewayError]) -> None:
    """Every error renders as a status with its code, an ErrorInfo (reason, domain) and a documented reason."""
    err = cls() if cls in (errors.QueryExecutionError, errors.GatewayInternalError) else cls("message")
    status = status_for(err)
    assert status.code == cls.code.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == errors.ERROR_DOMAIN
    assert re.fullmatch(r"[A-Z][A-Z_]+", info.reason)
    assert f"`{cls.code.name}`" in README and info.reason in README
    assert cls.code != grpc.StatusCode.OK


def test_every_refusal_reason_is_documented() -> None:
    """Every ErrorInfo reason the SQL corpus expects, and every literal reason in the code, is in the README."""
    reasons = set()
    for path in (ROOT / "tests" / "corpus" / "reject").glob("*.sql"):
        m = re.search(r"^-- reason: ([A-Z_]+)", path.read_text(), re.M)
        assert m, path.name
        reasons.add(m.group(1))
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "sandbox").rglob("*.py")]:
        reasons |= set(re.findall(r'reason="([A-Z_]+)"', path.read_text()))
    missing = sorted(r for r in reasons if f"`{r}`" not in README)
    assert not missing, f"undocumented reasons: {missing}"
