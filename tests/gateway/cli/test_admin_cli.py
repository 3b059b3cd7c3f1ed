"""`pgw admin ...` and `pgw budget` against a real gateway, as an operator and a data owner type them.

The CLI is called through its entry point (`gateway.cli.main.main`) with the same arguments a shell would pass; it
opens its own mTLS channel with the named certificate, so this exercises argument parsing, the AdminService,
role checks and the table / JSON / CSV rendering together.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from gateway.cli.main import main
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from tests.gov_helpers import IDENTITIES, POLICY_V2, channel, fails, query
from tests.helpers import Env

pytestmark = pytest.mark.integration


@dataclass
class Cli:
    gw: Gateway
    tls: Path
    policy: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str, who: str = "ops-admin") -> tuple[int, str, str]:
        """Run `pgw <argv> --target ... --tls-dir ... --as <who>`; returns (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        rc = main([*argv, "--target", f"127.0.0.1:{self.gw.port}", "--tls-dir", str(self.tls), "--as", who])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ch(self, name: str) -> grpc.Channel:
        return channel(self.tls, self.gw.port, name)


@pytest.fixture(scope="module")
def served(env: Env) -> Iterator[tuple[Gateway, Path, Path]]:
    root = Path(tempfile.mkdtemp(prefix="pgw-cli-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=IDENTITIES)
    policy = root / "operator.toml"
    policy.write_text(POLICY_V2)
    state = root / "state"
    gw = start_gateway(replace(env.settings, policy=policy, state_dir=state, tls_dir=tls,
                               sandbox_socket=state / "sandbox.sock"))
    yield gw, tls, policy
    gw.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cli(served: tuple[Gateway, Path, Path], capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(*served, capsys)


def _rows(table: str) -> list[list[str]]:
    """The body rows of a rendered table, split on runs of two or more spaces."""
    import re

    lines = table.strip().splitlines()
    dash = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    return [re.split(r"\s{2,}", line.strip()) for line in lines[dash + 1:] if line.strip()]


def test_orgs_lists_members_and_roles_as_a_table_and_json(cli: Cli) -> None:
    rc, out, _ = cli.run("admin", "orgs")
    assert rc == 0
    rows = {r[2]: r for r in _rows(out)}
    assert rows["analyst"][:2] == ["bank", "Bank"] and rows["analyst"][3] == "consumer"
    assert rows["ops-admin"][3] == "operator" and rows["steward"][3] == "data_owner"
    rc, out, _ = cli.run("admin", "orgs", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert {o["id"] for o in doc["organizations"]} == {"bank", "temps", "ops", "bureau"}


def test_grants_show_spending_after_a_query(cli: Cli) -> None:
    with cli.ch("analyst") as ch:
        query(ch, 0.25, "credit")
    rc, out, _ = cli.run("admin", "grants", "--json")
    assert rc == 0
    [bank] = [o for o in json.loads(out)["organizations"] if o["id"] == "bank"]
    [grant] = bank["grants"]
    assert grant["dataset"] == "registry" and grant["purpose"] == "credit"
    assert grant["budget"]["spent"]["epsilon"] >= 0.25
    rc, out, _ = cli.run("admin", "grants")
    assert rc == 0
    [row] = [r for r in _rows(out) if r[0] == "bank"]
    assert row[1:5] == ["registry", "credit", "commercial", "month"]
    assert float(row[6]) >= 0.25 and abs(float(row[5]) - float(row[6]) - float(row[7])) < 1e-3


def test_adjust_changes_what_the_consumer_sees(cli: Cli) -> None:
    rc, out, _ = cli.run("admin", "adjust", "--organization", "temps", "--dataset", "registry", "--purpose",
                         "work", "--epsilon", "42", "--max-epsilon-per-query", "0.5")
    assert rc == 0 and out.startswith("adjusted:")
    rc, out, _ = cli.run("budget", "--json", who="temp1")
    assert rc == 0
    [g] = json.loads(out)["grants"]
    assert g["budget"]["epsilon"] == 42 and g["max_per_query"]["epsilon"] == 0.5
    with cli.ch("temp1") as ch:
        err = fails(query, ch, 0.75, "work")
    assert err.reason == "PRIVACY_LOSS_ABOVE_QUERY_CAP" and "0.5" in err.message


def test_adjust_refuses_bad_numbers_with_a_clear_error(cli: Cli) -> None:
    for value in ("nan", "-1"):
        rc, _, err = cli.run("admin", "adjust", "--organization", "temps", "--dataset", "registry",
                             "--purpose", "work", "--epsilon", value)
        assert rc == 1
        assert "INVALID_ARGUMENT" in err and "epsilon" in err
    rc, _, err = cli.run("admin", "adjust", "--organization", "temps", "--dataset", "registry",
                         "--purpose", "work", "--rho", "0.5")
    assert rc == 1 and "INVALID_ADJUSTMENT" in err and "adjust its epsilon, not rho" in err


def test_usage_as_csv_and_json(cli: Cli) -> None:
    with cli.ch("analyst") as ch:
        query(ch, 0.1, "credit")
    rc, out, _ = cli.run("admin", "usage", "--csv")
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    bank = [r for r in rows if r["organization"] == "bank" and r["purpose"] == "credit"]
    assert bank and bank[0]["use_class"] == "commercial" and float(bank[0]["epsilon"]) > 0
    rc, out, _ = cli.run("admin", "usage", "--json")
    assert rc == 0
    report = json.loads(out)
    assert any(o["data_owner"] for o in report["data_owners"])
    rc, out, _ = cli.run("admin", "usage")
    assert rc == 0 and out.startswith("usage ")


def test_data_owner_sees_spending_on_its_datasets_including_refusals(cli: Cli) -> None:
    with cli.ch("analyst") as ch:
        fails(query, ch, 0.1, "credit", sql="SELECT * FROM residents")
    rc, out, _ = cli.run("admin", "spending", "--json", who="steward")
    assert rc == 0
    entries = json.loads(out)["entries"]
    bank = [e for e in entries if e["organization"] == "bank"]
    assert {e["outcome"] for e in bank} == {"charged", "refused"}
    assert all(e["epsilon"] > 0 for e in bank if e["outcome"] == "charged")
    assert any(e["reason"] == "SELECT_STAR" and e["epsilon"] == 0 for e in bank)  # every field, zeros too
    rc, out, _ = cli.run("admin", "spending", who="steward")
    assert rc == 0 and "SELECT_STAR" in out


def test_operator_commands_refuse_consumers_and_data_owners(cli: Cli) -> None:
    for who in ("analyst", "steward"):
        rc, _, err = cli.run("admin", "orgs", who=who)
        assert rc == 1 and "PERMISSION_DENIED" in err


def test_reload_after_editing_the_file(cli: Cli) -> None:
    def bank_budget() -> float:
        rc, out, _ = cli.run("admin", "grants", "--json")
        assert rc == 0
        [bank] = [o for o in json.loads(out)["organizations"] if o["id"] == "bank"]
        return float(bank["grants"][0]["budget"]["budget"]["epsilon"])

    cli.policy.write_text(POLICY_V2.replace("epsilon = 3.0", "epsilon = 4.0", 1))
    rc, out, _ = cli.run("admin", "reload")
    assert rc == 0 and "reloaded" in out and "4 organisations" in out and "2 grants" in out
    cli.capsys.readouterr()  # check-policy counts the same file the same way
    assert main(["check-policy", "--policy", str(cli.policy), "--no-data"]) == 0
    assert "4 organisations, 2 grants" in cli.capsys.readouterr().out
    assert bank_budget() == 4.0
    cli.policy.write_text(POLICY_V2.replace("epsilon = 3.0", "epsilon = -5", 1))
    rc, _, err = cli.run("admin", "reload")
    assert rc == 1 and err.startswith("INVALID_ARGUMENT (POLICY_INVALID)")
    assert "operator.toml: grants[0].epsilon: must not be negative, got -5" in err
    assert bank_budget() == 4.0


def test_revoke_member_then_organisation(cli: Cli) -> None:
    rc, out, _ = cli.run("admin", "revoke", "--member", "temp2", "--reason", "left the company")
    assert rc == 0 and "revoked member temp2" in out
    with cli.ch("temp2") as ch:
        err = fails(query, ch, 0.1, "work")
    assert err.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    with cli.ch("temp1") as ch:
        assert query(ch, 0.1, "work").HasField("budget")
    rc, out, _ = cli.run("admin", "revoke", "--organization", "temps")
    assert rc == 0 and "revoked organisation temps" in out
    with cli.ch("temp1") as ch:
        err = fails(query, ch, 0.1, "work")
    assert err.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    rc, out, _ = cli.run("admin", "orgs")
    statuses = {r[2]: r[-1] for r in _rows(out)}
    assert statuses["temp1"] == "REVOKED" and statuses["temp2"] == "REVOKED"


def test_reinstate_undoes_a_revocation(cli: Cli) -> None:
    """After test_revoke_member_then_organisation: reinstating the organisation and then the member lets the
    member query again; reinstating someone not revoked says so and changes nothing."""
    rc, out, _ = cli.run("admin", "reinstate", "--organization", "temps")
    assert rc == 0 and "reinstated organisation temps" in out
    rc, out, _ = cli.run("admin", "reinstate", "--member", "temp2", "--reason", "back")
    assert rc == 0 and "reinstated member temp2" in out
    with cli.ch("temp2") as ch:
        assert query(ch, 0.1, "work").HasField("budget")
    rc, out, _ = cli.run("admin", "reinstate", "--member", "temp2")
    assert rc == 0 and "was not revoked" in out


def test_alerts_list_and_acknowledge(cli: Cli) -> None:
    """The alert list is a table with its unacknowledged count; acknowledging an unknown id is one line."""
    rc, out, _ = cli.run("admin", "alerts", "--all")
    assert rc == 0 and out.splitlines()[0].split()[:3] == ["id", "time", "rule"] and "unacknowledged" in out
    rc, out, _ = cli.run("admin", "alerts", "--json")
    assert rc == 0 and isinstance(json.loads(out), dict)
    rc, _, err = cli.run("admin", "ack", "999999")
    assert rc == 1 and "no alert with this id" in err and len(err.strip().splitlines()) == 1


def test_a_stored_adjustment_is_reported_on_reload_and_can_be_cleared(cli: Cli) -> None:
    """A reload says which grants keep a stored adjustment over the file; `adjust --clear` lets the file apply."""
    grant = ("--organization", "temps", "--dataset", "registry", "--purpose", "work")
    cli.policy.write_text(POLICY_V2)  # a valid file (another test leaves a broken one)
    rc, _, _ = cli.run("admin", "adjust", *grant, "--epsilon", "42")
    assert rc == 0
    rc, out, _ = cli.run("admin", "reload")
    [warning] = [line for line in out.splitlines() if line.startswith("warning:")]
    assert "temps/registry/work: epsilon 42 (file " in warning and "--clear" in warning
    file_epsilon = float(warning.split("(file ")[1].split(")")[0])
    rc, _, err = cli.run("admin", "adjust", *grant, "--clear", "--epsilon", "1")
    assert rc == 1 and "INVALID_ADJUSTMENT" in err
    rc, out, _ = cli.run("admin", "adjust", *grant, "--clear")
    assert rc == 0 and out.startswith("cleared:")
    rc, out, _ = cli.run("budget", "--json", who="temp1")
    assert rc == 0 and json.loads(out)["grants"][0]["budget"]["epsilon"] == file_epsilon
    rc, out, _ = cli.run("admin", "reload")
    assert rc == 0 and "temps/registry/work" not in out
