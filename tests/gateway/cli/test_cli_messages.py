"""`pgw` as a user runs it (a subprocess): every failure a new user hit is one line naming the file or setting and
what to do, with the documented exit status and no traceback; receipts of every kind round-trip through files
and verify with the key fetched from the gateway; `pgw --help` loads neither gRPC nor OpenDP."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.rpc.server import Gateway
from gateway.settings import ROOT
from tests.helpers import Env, fresh

pytestmark = [pytest.mark.integration]


def pgw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` with no PGW_* variables, as a user's shell would."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGW_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, input=stdin, env={**environ, "PYTHONPATH": str(ROOT)})


def one_line_error(out: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def client(env: Env, gateway: Gateway, who: str = "analyst") -> list[str]:
    return ["--target", f"127.0.0.1:{gateway.port}", "--tls-dir", str(env.tls_dir), "--as", who]


def test_help_loads_neither_grpc_nor_opendp() -> None:
    code = ("import sys; from gateway.cli.main import build_parser; build_parser().format_help(); "
            "heavy = [m for m in ('grpc', 'opendp', 'duckdb', 'numpy', 'gateway.rpc') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert pgw("--help").returncode == 0 and "exit status" in pgw("--help").stdout
    assert pgw("--version").stdout.startswith("pgw ")


def test_a_wrong_tls_dir_or_identity_names_the_file(env: Env, tmp_path: Path) -> None:
    one_line_error(pgw("budget", "--tls-dir", str(tmp_path / "nowhere"), "--as", "analyst"), 2,
                   "nowhere: no such TLS directory")
    one_line_error(pgw("budget", "--tls-dir", str(env.tls_dir), "--as", "nobody"), 2,
                   "nobody.crt: client certificate not found", "--tls-dir")


def test_a_foreign_certificate_is_refused_before_connecting(env: Env, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(env.tls_dir / "ca.crt", mixed / "ca.crt")
    for suffix in (".crt", ".key"):
        shutil.copy(env.foreign_tls_dir / f"analyst{suffix}", mixed / f"analyst{suffix}")
    one_line_error(pgw("budget", "--tls-dir", str(mixed), "--as", "analyst"), 2,
                   "analyst.crt: the certificate was not issued by the CA")


def _expired_identity(env: Env, tmp_path: Path) -> Path:
    """A TLS directory with the CA and a certificate `old` of that CA that expired yesterday."""
    ca_key = serialization.load_pem_private_key((env.tls_dir / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((env.tls_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    d = tmp_path / "old"
    d.mkdir()
    shutil.copy(env.tls_dir / "ca.crt", d / "ca.crt")
    (d / "old.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "old.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d


def test_an_expired_certificate_says_so_and_how_to_renew(env: Env, tmp_path: Path) -> None:
    d = _expired_identity(env, tmp_path)
    one_line_error(pgw("budget", "--tls-dir", str(d), "--as", "old"), 2, "old.crt: the certificate expired on",
                   "pgw certs --renew")


def test_the_server_logs_why_a_handshake_failed(env: Env, gateway: Gateway, tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A client that skips the checks `pgw` makes (a certificate of another CA, an expired one) is refused in the
    TLS handshake, and the server's log says why (gRPC's TLS layer writes the line to the server's stderr)."""
    import ssl

    expired = _expired_identity(env, tmp_path)
    for cert, key, why in ((env.foreign_tls_dir / "analyst.crt", env.foreign_tls_dir / "analyst.key",
                            "unable to get local issuer certificate"),
                           (expired / "old.crt", expired / "old.key", "certificate has expired")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(env.tls_dir / "ca.crt")
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    assert tls.recv(64) == b""  # TLS 1.3: the refusal arrives after the client's handshake ends
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass
        logged = ""
        for _ in range(50):
            logged += capfd.readouterr().err
            if why in logged:
                break
            time.sleep(0.1)
        assert "Handshake failed" in logged and "CERTIFICATE_VERIFY_FAILED" in logged and why in logged, logged


def test_an_unreachable_gateway_says_what_to_check(env: Env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line_error(pgw("budget", "--target", f"127.0.0.1:{port}", "--tls-dir", str(env.tls_dir), "--as", "analyst"),
                   1, f"cannot reach the gateway at 127.0.0.1:{port}")


def test_a_broken_catalog_at_serve_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "catalog.toml"
    broken.write_text('schema = "nope"\n')
    one_line_error(pgw("serve", "--catalog", str(broken), "--state-dir", str(tmp_path / "state"),
                       "--listen", "127.0.0.1:0"), 2, f"configuration error: {broken}")


@pytest.mark.slow
def test_query_receipt_round_trip_with_the_key_from_the_gateway(env: Env, gateway: Gateway, tmp_path: Path) -> None:
    """SQL from standard input; --receipt-out; `pgw receipt verify FILE` fetches the key; the same request id
    replays, charges nothing and says what the original cost; a tampered receipt is INVALID (exit 1)."""
    rid = str(uuid.uuid4())
    receipt = tmp_path / "receipt.json"
    args = ["query", *client(env, gateway), "--dataset", "registry", "--purpose", "testing", "--epsilon", "0.5",
            "--request-id", rid, "--receipt-out", str(receipt), "-"]
    sql = fresh("SELECT sex, COUNT(*) AS n FROM residents GROUP BY sex")
    first = pgw(*args, stdin=sql)
    assert first.returncode == 0, first.stderr
    assert "charged epsilon 0.5000" in first.stdout and receipt.exists()
    again = pgw(*args, stdin=sql)
    assert "charged nothing now (replay of request " + rid + ", which cost epsilon 0.5000)" in again.stdout
    verified = pgw("receipt", "verify", str(receipt), *client(env, gateway))
    assert verified.returncode == 0 and verified.stdout.startswith("VALID release receipt"), verified.stderr
    receipt.write_text(receipt.read_text().replace("analyst", "planner"))
    assert pgw("receipt", "verify", str(receipt), *client(env, gateway)).stdout.startswith("INVALID")
    # the --json output is a receipt file too
    as_json = tmp_path / "answer.json"
    as_json.write_text(pgw("query", *client(env, gateway), "--dataset", "registry", "--purpose", "testing",
                           "--epsilon", "0.1", "--json", fresh("SELECT COUNT(*) AS n FROM residents")).stdout)
    assert pgw("receipt", "verify", str(as_json), *client(env, gateway)).returncode == 0


def test_query_json_is_plain_json_in_the_client_librarys_shape(env: Env, gateway: Gateway) -> None:
    """`pgw query --json`: numbers as numbers, one object per row (value, _lower, _upper, _std), the charge of this
    request apart from the original cost, cached/replayed flags, the receipt; the keys are `Result.to_json_obj`'s
    and a replay (same --request-id) says replayed with nothing charged."""
    import json

    from pgw_client import Client

    rid = str(uuid.uuid4())
    sql = fresh("SELECT sex, COUNT(*) AS n, AVG(income) AS mean FROM residents GROUP BY sex")
    args = ["query", *client(env, gateway), "--dataset", "registry", "--purpose", "testing", "--epsilon", "0.4",
            "--request-id", rid, "--json", sql]
    first = pgw(*args)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["request_id"] == rid and answer["cached"] is False and answer["replayed"] is False
    assert answer["charged"]["epsilon"] == pytest.approx(0.4) == answer["original_cost"]["epsilon"]
    assert [c["name"] for c in answer["columns"]] == ["sex", "n", "mean"]
    assert {r["sex"] for r in answer["rows"]} == {"F", "M"}
    for row in answer["rows"]:
        assert set(row) == {"sex", "n", "n_lower", "n_upper", "n_std", "mean", "mean_lower", "mean_upper", "mean_std"}
        assert isinstance(row["n"], int) and not isinstance(row["n"], bool)
        assert all(isinstance(row[k], float) for k in ("n_lower", "n_upper", "n_std", "mean", "mean_std"))
        assert row["n_lower"] <= row["n_upper"] and row["n_std"] > 0
    assert answer["receipt"]["key_id"] and "payload_json" in answer["receipt"]
    replay = json.loads(pgw(*args).stdout)
    assert replay["replayed"] is True and replay["charged"]["epsilon"] == 0
    assert replay["original_cost"]["epsilon"] == pytest.approx(0.4) and replay["rows"] == answer["rows"]
    with Client(f"127.0.0.1:{gateway.port}", tls_dir=env.tls_dir, identity="analyst") as library:
        same = library.query(sql, dataset="registry", purpose="testing", epsilon=0.4, request_id=rid)
    assert json.loads(json.dumps(same.to_json_obj())) == replay


def test_cli_details_environment_sql_file_cached_counts_units_and_lookup_tables(env: Env, gateway: Gateway,
                                                                              tmp_path: Path) -> None:
    """The smaller friction points, through a shell's eyes: $PGW_TARGET/$PGW_TLS_DIR/$PGW_IDENTITY stand in for
    the options; SQL from @FILE; count intervals are whole numbers, right-aligned; a repeated query is answered
    from the cache and says it charged nothing; explain names the unit of each ±95% (with --accuracy); datasets
    shows descriptions, bounds and domains, and a lookup table as such."""
    import re

    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGW_")}
    environ.update(PYTHONPATH=str(ROOT), PGW_TARGET=f"127.0.0.1:{gateway.port}", PGW_TLS_DIR=str(env.tls_dir),
                   PGW_IDENTITY="analyst")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path, env=environ)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
        return out

    sql = tmp_path / "count.sql"
    sql.write_text(fresh("SELECT sex, COUNT(*) AS n FROM residents GROUP BY sex") + "\n")
    first = run("query", "--dataset", "registry", "--purpose", "testing", "--epsilon", "0.5", f"@{sql}").stdout
    lines = first.splitlines()
    header = lines[0]
    intervals = re.findall(r"\[(-?[\d,]+(?:\.\d+)?), (-?[\d,]+(?:\.\d+)?)\]", first)
    assert len(intervals) == 2 and all("." not in a + b for a, b in intervals), first
    ends = {len(line.split("[")[0].rstrip()) for line in lines[2:4]}  # the n column ends in one place
    assert len(ends) == 1 and header.split()[:2] == ["sex", "n"], first
    assert "charged epsilon 0.5000" in first
    again = run("query", "--dataset", "registry", "--purpose", "testing", "--epsilon", "0.5", f"@{sql}").stdout
    assert "charged nothing (cached: an earlier release of the same query)" in again, again

    explained = run("explain", "--dataset", "registry", "--purpose", "testing", "--accuracy", "40",
                    "SELECT COUNT(*) AS n FROM residents").stdout
    assert "±95% in" in explained and re.search(r"\brows\b", explained), explained
    units = run("explain", "--dataset", "registry", "--purpose", "testing", "--epsilon", "1",
                "SELECT SUM(income) AS total FROM residents").stdout
    assert "the sum's units" in units, units

    listed = run("datasets").stdout
    assert "public lookup table" in listed and "at most 0 row" not in listed, listed
    assert "Resident registry" in listed and re.search(r"income .*\[0, \d", listed), listed
    assert re.search(r"sex .*\bF, M\b", listed), listed


@pytest.mark.slow
def test_batch_receipts_verify_with_either_command(env: Env, gateway: Gateway, tmp_path: Path) -> None:
    """The JSON lines `verify-batch --receipts-out` writes are read by `pgw verify-receipt` and `pgw receipt
    verify`; the key comes from `pgw keys export` against the running gateway."""
    rows = duckdb.connect().execute(
        f"SELECT id_number, name FROM read_parquet('{env.data_dir}/residents.parquet') LIMIT 3").fetchall()
    claims = tmp_path / "claims.csv"
    claims.write_text("subject,name\n" + "".join(f"{s},{n}\n" for s, n in rows))
    receipts = tmp_path / "receipts.jsonl"
    batch = pgw("verify-batch", *client(env, gateway), "--dataset", "registry", "--template", "identity_match",
                "--purpose", "kyc", "--file", str(claims), "--receipts-out", str(receipts))
    assert batch.returncode == 0, batch.stderr
    pem = tmp_path / "gateway.pem"
    exported = pgw("keys", "export", *client(env, gateway), "--out", str(pem))
    assert exported.returncode == 0 and "wrote public key" in exported.stdout, exported.stderr
    old = pgw("verify-receipt", "--public-key", str(pem), str(receipts))
    assert old.returncode == 0 and "3 of 3 receipts valid" in old.stdout, old.stdout + old.stderr
    new = pgw("receipt", "verify", str(receipts), "--public-key", str(pem))
    assert new.returncode == 0 and new.stdout.count("VALID verification receipt") == 3


def test_a_file_that_is_not_a_receipt_is_one_line(tmp_path: Path) -> None:
    pem = tmp_path / "k.pem"
    pem.write_text("not a key")
    junk = tmp_path / "claims.csv"
    junk.write_text("subject,name\n1,a\n")
    one_line_error(pgw("verify-receipt", "--public-key", str(pem), str(junk)), 2, "the public key is not a PEM")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    one_line_error(pgw("receipt", "verify", str(junk), "--public-key", str(pem)), 2,
                   f"{junk}: line 1 is not JSON")
    one_line_error(pgw("receipt", "verify", str(tmp_path / "missing.json"), "--public-key", str(pem)), 2,
                   "missing.json: no such file")


def test_certs_show_expiry_and_renew(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    made = pgw("certs", "--out", str(out), "--client", "alice")
    assert made.returncode == 0 and "days left" in made.stdout, made.stderr
    before = (out / "alice.crt").read_bytes()
    assert pgw("certs", "--out", str(out), "--client", "alice").returncode == 0
    assert (out / "alice.crt").read_bytes() == before  # kept: not expiring
    renewed = pgw("certs", "--out", str(out), "--client", "alice", "--renew", "--renew-days", "400")
    assert renewed.returncode == 0 and (out / "alice.crt").read_bytes() != before


def test_check_policy_opens_the_data_files(env: Env, tmp_path: Path) -> None:
    """A missing file, a missing column and a column of another type are each one line naming the catalog key;
    the shipped catalog over the test data passes."""
    ok = pgw("check-policy", "--data-dir", str(env.data_dir))
    assert ok.returncode == 0 and "have every declared column" in ok.stdout, ok.stderr
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    for name in ("social_insurance", "regions"):
        shutil.copy(env.data_dir / f"{name}.parquet", data / f"{name}.parquet")
    residents = pq.read_table(env.data_dir / "residents.parquet")
    incomes = pa.array([str(v) for v in residents["income"].to_pylist()])
    residents = residents.drop_columns(["employed"])
    residents = residents.set_column(residents.schema.get_field_index("income"), "income", incomes)
    pq.write_table(residents, data / "residents.parquet")
    out = pgw("check-policy", "--data-dir", str(data))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "datasets.registry.tables.residents.columns.employed: no such column in residents.parquet" in out.stderr
    assert "datasets.registry.tables.residents.columns.income: declared int64 but residents.parquet holds string" \
        in out.stderr
    assert "datasets.enterprises.tables.enterprises: file " in out.stderr and "does not exist" in out.stderr
