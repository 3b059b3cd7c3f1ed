"""`--json` of the commands that print a response message, through a real gateway: the `.proto`'s snake_case
names, every field present, 64-bit integers and doubles as JSON numbers (never quoted), enums by name."""

from __future__ import annotations

import json
from typing import Any

import pytest
from privacy_gateway.v1 import common_pb2 as common_pb

from gateway.cli.main import main
from gateway.rpc.server import Gateway
from tests.helpers import Env

pytestmark = [pytest.mark.integration]


def _pgw_json(env: Env, gateway: Gateway, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run `pgw ARGV --json` as the analyst and parse what it printed."""
    capsys.readouterr()
    rc = main([*argv, "--json", "--target", f"127.0.0.1:{gateway.port}", "--tls-dir", str(env.tls_dir),
               "--as", "analyst"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _no_camel_case_keys(doc: Any) -> None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            assert key == key.lower(), key
            _no_camel_case_keys(value)
    elif isinstance(doc, list):
        for item in doc:
            _no_camel_case_keys(item)


def test_budget_json(env: Env, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _pgw_json(env, gateway, capsys, "budget", "--dataset", "registry")
    assert doc["consumer"] == "analyst"
    [grant] = [g for g in doc["grants"] if g["purpose"] == "testing"]
    # every field of the message, in the .proto's order, also those at their zero value: a stable shape
    assert list(grant) == [f.name for f in common_pb.BudgetStatus.DESCRIPTOR.fields]
    for amount in ("budget", "spent", "remaining", "max_per_query"):
        assert set(grant[amount]) == {"epsilon", "delta", "rho"}
        assert all(_number(v) for v in grant[amount].values()), grant[amount]
    assert grant["budget"]["epsilon"] > 0
    _no_camel_case_keys(doc)


def test_datasets_json(env: Env, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _pgw_json(env, gateway, capsys, "datasets")
    [registry] = [d for d in doc["datasets"] if d["name"] == "registry"]
    tables = {t["name"]: t for t in registry["tables"]}
    residents = tables["residents"]
    # int64: a number, not protobuf's quoted string; a public lookup table says 0 rather than leaving it out
    assert type(residents["max_rows_per_unit"]) is int and residents["max_rows_per_unit"] >= 1
    assert any(t["max_rows_per_unit"] == 0 for t in tables.values()), tables.keys()
    columns = {c["name"]: c for c in residents["columns"]}
    assert columns["income"]["type"] in ("COLUMN_TYPE_INT64", "COLUMN_TYPE_DOUBLE")
    assert columns["income"]["has_bounds"] is True and _number(columns["income"]["upper"])
    assert columns["sex"]["domain"] == ["F", "M"] and columns["sex"]["has_bounds"] is False
    assert registry["privacy_unit"] and isinstance(registry["purposes"], list)
    _no_camel_case_keys(doc)


def test_explain_json(env: Env, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _pgw_json(env, gateway, capsys, "explain", "--dataset", "registry", "--purpose", "testing",
                    "--epsilon", "0.5", "SELECT sex, COUNT(*) AS n FROM residents GROUP BY sex")
    plan = doc["plan"]
    assert plan["table"] == "residents" and plan["group_by"] == ["sex"]
    for key in ("row_count", "max_rows_per_unit", "threshold"):  # the plan's int64 fields
        assert type(plan[key]) is int, (key, plan[key])
    assert plan["row_count"] > 0 and plan["max_rows_per_unit"] >= 1
    [release] = plan["releases"]
    assert release["output"] == "n" and _number(release["scale"]) and _number(release["half_width_95"])
    assert doc["privacy_cost"]["epsilon"] == pytest.approx(0.5) and doc["affordable"] is True
    assert doc["budget"]["max_per_query"]["epsilon"] > 0
    _no_camel_case_keys(doc)
