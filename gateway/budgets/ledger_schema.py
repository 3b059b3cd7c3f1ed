"""The ledger's tables, per backend: SQLite DDL, triggers and migrations, and the PostgreSQL equivalent.

The spending buckets (running totals per budget scope and time bucket) are kept by triggers in the
charging transaction on both backends; the scope key is ``json_array(tag, columns...)`` computed in SQL
(SQLite's built-in, or `gateway.storage.pg.json_array_functions` with the same compact text), so a key
computed by a read matches the one a trigger stored byte for byte.
"""

from __future__ import annotations

import sqlite3

from gateway.budgets.records import PrivacyLoss, _units, zcdp_columns
from gateway.errors import GatewayInternalError
from gateway.storage.pg import ddl, json_array_functions, translate
from sandbox.pricing.periods import BUCKET_SQL

# 2 adds exact units, organisation and metering columns; 3 adds rho_units; 4 adds zcdp_units, no_zcdp and
# the per-minute/hour/lifetime spending buckets kept by triggers; 5 adds conversion_delta_units and the
# counts on the data owner's cap (cap_*)
_SCHEMA_VERSION = 7


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    consumer TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    purpose  TEXT NOT NULL,
    epsilon  REAL NOT NULL CHECK (epsilon >= 0),
    delta    REAL NOT NULL CHECK (delta >= 0),
    PRIMARY KEY (consumer, dataset, purpose)
) STRICT;
CREATE TABLE IF NOT EXISTS charges (
    consumer    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    epsilon     REAL NOT NULL CHECK (epsilon >= 0),
    delta       REAL NOT NULL CHECK (delta >= 0),
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'failed')),
    response    BLOB,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    -- issue-gov (schema 2): exact units, the organisation level, and metering at charge time
    organization  TEXT NOT NULL DEFAULT '',
    epsilon_units INTEGER NOT NULL DEFAULT 0 CHECK (epsilon_units >= 0),
    delta_units   INTEGER NOT NULL DEFAULT 0 CHECK (delta_units >= 0),
    use_class     TEXT NOT NULL DEFAULT '',
    data_owner    TEXT NOT NULL DEFAULT '',
    request_units INTEGER NOT NULL DEFAULT 0,
    price_per_request_unit TEXT NOT NULL DEFAULT '0',
    price_per_epsilon      TEXT NOT NULL DEFAULT '0',
    currency      TEXT NOT NULL DEFAULT '',
    -- schema 3: zCDP charges in exact nano-rho (0 for pure and approximate DP charges)
    rho_units     INTEGER NOT NULL DEFAULT 0 CHECK (rho_units >= 0),
    -- schema 4: what the charge counts on a zCDP (rho) level: its rho, or for a pure charge the rho of
    -- OpenDP's make_pureDP_to_zCDP (epsilon^2 / 2), and no_zcdp = 1 for an approximate-DP charge (no conversion)
    zcdp_units    INTEGER NOT NULL DEFAULT 0 CHECK (zcdp_units >= 0),
    no_zcdp       INTEGER NOT NULL DEFAULT 0 CHECK (no_zcdp IN (0, 1)),
    -- schema 5: a zCDP charge's epsilon_units is the conversion of its rho at this delta (the grant's delta
    -- less the selection delta), which an epsilon-measured grant level counts as delta with it
    conversion_delta_units INTEGER NOT NULL DEFAULT 0 CHECK (conversion_delta_units >= 0),
    -- schema 5: what the charge counts on the data owner's cap in each definition, from the owner's
    -- conversion_delta at charge time (sandbox.pricing.cap_rules.CapCounts: the sandbox's cap ledger stores the same)
    cap_epsilon_units   INTEGER NOT NULL DEFAULT 0 CHECK (cap_epsilon_units >= 0),
    cap_delta_units     INTEGER NOT NULL DEFAULT 0 CHECK (cap_delta_units >= 0),
    cap_rho_units       INTEGER NOT NULL DEFAULT 0 CHECK (cap_rho_units >= 0),
    cap_rho_delta_units INTEGER NOT NULL DEFAULT 0 CHECK (cap_rho_delta_units >= 0),
    cap_no_epsilon      INTEGER NOT NULL DEFAULT 0 CHECK (cap_no_epsilon IN (0, 1)),
    cap_no_rho          INTEGER NOT NULL DEFAULT 0 CHECK (cap_no_rho IN (0, 1)),
    -- schema 6: the product that charged (query, model): a model grant's limit counts its own charges
    product       TEXT NOT NULL DEFAULT 'query',
    -- schema 7: the gateway process that reserved the charge (`Ledger.holder`). While it holds a live lease
    -- in `holders`, a reserved charge is in progress, after that it is settled (`Settler`)
    holder        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (consumer, request_id)
) STRICT;
CREATE INDEX IF NOT EXISTS charges_by_time ON charges (created_at);
-- Covering indexes for the per-period sums (every reservation and budget status sums a window): with
-- the units in the index the sum never reads the table rows, which hold the stored answers (about 12x
-- faster: 0.13 instead of 1.6 ms per 1,000 charges in a window). They replace the narrower
-- charges_by_key / charges_by_org / charges_by_dataset of earlier versions.
DROP INDEX IF EXISTS charges_by_key;
DROP INDEX IF EXISTS charges_by_org;
DROP INDEX IF EXISTS charges_by_dataset;
CREATE INDEX IF NOT EXISTS charges_units_by_key
    ON charges (consumer, dataset, purpose, created_at, epsilon_units, delta_units, rho_units);
CREATE INDEX IF NOT EXISTS charges_units_by_org
    ON charges (organization, dataset, purpose, created_at, epsilon_units, delta_units, rho_units);
CREATE INDEX IF NOT EXISTS charges_reserved ON charges (status, created_at) WHERE status = 'reserved';
CREATE TABLE IF NOT EXISTS holders (
    holder      TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    heartbeat   REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS charges_units_by_product
    ON charges (consumer, dataset, purpose, product, created_at, epsilon_units, delta_units);
CREATE INDEX IF NOT EXISTS charges_units_by_dataset
    ON charges (dataset, created_at, epsilon_units, delta_units, rho_units);
"""


# Schema 4: running totals per budget scope (member: consumer/dataset/purpose; organisation; dataset) and
# time bucket (width 60 s, 3600 s, or 0 = lifetime), kept in the charging transaction by triggers, so a
# window's spending is a sum of at most a few hundred bucket rows plus the charges of its two partial
# minutes, whatever the number of charges in it (summing the charges grew linearly: 56 ms per level
# with 100,000 charges in a month). The hour of a charge is its minute // 60 (integer), so the widths
# nest exactly. The charges stay the source of truth; `verify_buckets` recomputes the totals from them.
_SCOPE_COLUMNS = {
    "member": ("m", ("consumer", "dataset", "purpose")),
    "organization": ("o", ("organization", "dataset", "purpose")),
    "dataset_cap": ("d", ("dataset",)),  # also the dataset_cap_lifetime level
    "organization_all": ("O", ("organization",)),  # every grant of an organisation (spend-rate alerts)
}


# The scope key of a charge row (columns prefixed with "NEW." / "OLD." in triggers).
_SCOPES = {level: f"json_array('{tag}', " + ", ".join("{p}" + c for c in cols) + ")"
           for level, (tag, cols) in _SCOPE_COLUMNS.items()}


# What a member or organisation level reads, and what the data owner's cap levels read (flags last in each).
_GRANT_COLUMNS = ("epsilon_units", "delta_units", "rho_units", "zcdp_units", "conversion_delta_units", "no_zcdp")


_CAP_COLUMNS = ("cap_epsilon_units", "cap_delta_units", "cap_rho_units", "cap_rho_delta_units", "cap_no_epsilon",
                "cap_no_rho")


_FLAG_COLUMNS = frozenset({"no_zcdp", "cap_no_epsilon", "cap_no_rho"})


_UNIT_COLUMNS = _GRANT_COLUMNS + _CAP_COLUMNS


def _bucket_statements(prefix: str, sign: str, *, target: str = "") -> list[str]:
    """Add (sign '+') or subtract ('-') one charge row (`prefix` 'NEW.' or 'OLD.') to its buckets; `target`
    qualifies the stored value in an upsert (PostgreSQL needs ``spend_buckets.``)."""
    out = []
    values = ", ".join(f"{prefix}{c}" for c in _UNIT_COLUMNS)
    for scope in _SCOPES.values():
        for width, bucket in BUCKET_SQL.items():
            sc, b = scope.format(p=prefix), bucket.format(p=prefix)
            if sign == "+":
                sets = ", ".join(f"{c} = {target}{c} + excluded.{c}" for c in (*_UNIT_COLUMNS, "charges"))
                out.append(f"INSERT INTO spend_buckets (scope, width, bucket, {', '.join(_UNIT_COLUMNS)}, charges)"
                           f" VALUES ({sc}, {width}, {b}, {values}, 1)"
                           f" ON CONFLICT (scope, width, bucket) DO UPDATE SET {sets};")
            else:
                sets = ", ".join(f"{c} = {c} - {prefix}{c}" for c in _UNIT_COLUMNS)
                out.append(f"UPDATE spend_buckets SET {sets}, charges = charges - 1"
                           f" WHERE scope = {sc} AND width = {width} AND bucket = {b};")
    return out


_BUCKETS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spend_buckets (scope TEXT NOT NULL, width INTEGER NOT NULL,"
    " bucket INTEGER NOT NULL, " + ", ".join(f"{c} INTEGER NOT NULL" for c in _UNIT_COLUMNS) + ","
    " charges INTEGER NOT NULL, PRIMARY KEY (scope, width, bucket)) STRICT, WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS charges_buckets_insert AFTER INSERT ON charges BEGIN "
    + " ".join(_bucket_statements("NEW.", "+")) + " END",
    "CREATE TRIGGER IF NOT EXISTS charges_buckets_delete AFTER DELETE ON charges BEGIN "
    + " ".join(_bucket_statements("OLD.", "-")) + " END",
    "CREATE TRIGGER IF NOT EXISTS charges_buckets_update AFTER UPDATE OF consumer, dataset, purpose,"
    " organization, created_at, " + ", ".join(_UNIT_COLUMNS) + " ON charges BEGIN "
    + " ".join(_bucket_statements("OLD.", "-") + _bucket_statements("NEW.", "+")) + " END",
)


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4: the zCDP columns of existing charges (buckets are filled after the schema)."""
    conn.execute("ALTER TABLE charges ADD COLUMN zcdp_units INTEGER NOT NULL DEFAULT 0 CHECK (zcdp_units >= 0)")
    conn.execute("ALTER TABLE charges ADD COLUMN no_zcdp INTEGER NOT NULL DEFAULT 0 CHECK (no_zcdp IN (0, 1))")
    rows = conn.execute("SELECT rowid, epsilon_units, delta_units, rho_units FROM charges"
                        " WHERE epsilon_units > 0 OR rho_units > 0")
    conn.executemany("UPDATE charges SET zcdp_units = ?, no_zcdp = ? WHERE rowid = ?",
                     ((*zcdp_columns(int(e), int(d), int(r)), rowid) for rowid, e, d, r in rows.fetchall()))


def _migrate_v4(conn: sqlite3.Connection) -> None:
    """Schema 4 -> 5: conversion_delta_units and the owner's-cap counts of existing charges; the buckets are
    dropped here and rebuilt from the charges after the schema (they gain the new columns).

    An earlier charge counts on the owner's cap as the old rule counted it: its (epsilon, delta) units (for a
    zCDP charge: the epsilon at the grant's delta, without that delta, which is not recoverable), its rho as
    for a grant level (rho, epsilon^2 / 2 for pure, none for approximate DP). Its conversion delta is unknown
    and stays 0."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(charges)")}
    for column in ("conversion_delta_units", *_CAP_COLUMNS):
        if column in have:
            continue
        check = "IN (0, 1)" if column in _FLAG_COLUMNS else ">= 0"
        conn.execute(f"ALTER TABLE charges ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0 CHECK ({column} {check})")
    rows = conn.execute("SELECT rowid, epsilon_units, delta_units, rho_units, zcdp_units, no_zcdp FROM charges")
    conn.executemany(
        "UPDATE charges SET cap_epsilon_units = ?, cap_delta_units = ?, cap_rho_units = ?, cap_rho_delta_units = ?,"
        " cap_no_rho = ? WHERE rowid = ?",
        ((e, d, z, d if r > 0 else 0, n, rowid) for rowid, e, d, r, z, n in rows.fetchall()))
    for trigger in ("charges_buckets_insert", "charges_buckets_delete", "charges_buckets_update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("DROP TABLE IF EXISTS spend_buckets")


def _fill_buckets(conn: sqlite3.Connection) -> None:
    """Build the spending buckets of a migrated ledger from its charges (the triggers keep them after)."""
    sums = ", ".join(f"sum({c})" for c in _UNIT_COLUMNS)
    for scope in _SCOPES.values():
        for width, bucket in BUCKET_SQL.items():
            conn.execute(
                f"INSERT INTO spend_buckets (scope, width, bucket, {', '.join(_UNIT_COLUMNS)}, charges)"
                f" SELECT {scope.format(p='')}, {width}, {bucket.format(p='')}, {sums}, count(*)"
                " FROM charges GROUP BY 1, 2, 3"
            )


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: add the new columns and fill the exact units of existing charges."""
    for column in (
        "organization TEXT NOT NULL DEFAULT ''",
        "epsilon_units INTEGER NOT NULL DEFAULT 0 CHECK (epsilon_units >= 0)",
        "delta_units INTEGER NOT NULL DEFAULT 0 CHECK (delta_units >= 0)",
        "use_class TEXT NOT NULL DEFAULT ''",
        "data_owner TEXT NOT NULL DEFAULT ''",
        "request_units INTEGER NOT NULL DEFAULT 0",
        "price_per_request_unit TEXT NOT NULL DEFAULT '0'",
        "price_per_epsilon TEXT NOT NULL DEFAULT '0'",
        "currency TEXT NOT NULL DEFAULT ''",
    ):
        conn.execute(f"ALTER TABLE charges ADD COLUMN {column}")
    rows = conn.execute("SELECT rowid, epsilon, delta FROM charges").fetchall()
    for rowid, eps, delta in rows:
        eu, du = _units(PrivacyLoss(eps, delta))
        conn.execute(
            "UPDATE charges SET epsilon_units = ?, delta_units = ?, organization = consumer WHERE rowid = ?",
            (eu, du, rowid),
        )


def postgres_statements() -> list[str]:
    """The ledger's PostgreSQL schema (current version; a new database needs no migrations): the same tables
    (`gateway.storage.pg.ddl`), a ``rowid`` column on charges (the tie-break of the charge order, as SQLite's),
    the scope-key function, and one trigger function keeping the spending buckets."""
    def body(prefix: str, sign: str) -> str:
        return translate(" ".join(_bucket_statements(prefix, sign, target="spend_buckets.")))
    columns = ", ".join(("consumer", "dataset", "purpose", "organization", "created_at", *_UNIT_COLUMNS))
    return [
        *json_array_functions(),
        *ddl(_SCHEMA),
        "ALTER TABLE charges ADD COLUMN IF NOT EXISTS rowid BIGSERIAL",
        *ddl(_BUCKETS_SCHEMA[0]),
        "CREATE OR REPLACE FUNCTION pgw_charges_buckets() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF TG_OP IN ('UPDATE', 'DELETE') THEN {body('OLD.', '-')} END IF;"
        f" IF TG_OP IN ('UPDATE', 'INSERT') THEN {body('NEW.', '+')} END IF;"
        " RETURN NULL; END $$",
        "DROP TRIGGER IF EXISTS charges_buckets ON charges",
        f"CREATE TRIGGER charges_buckets AFTER INSERT OR DELETE OR UPDATE OF {columns} ON charges"
        " FOR EACH ROW EXECUTE FUNCTION pgw_charges_buckets()",
    ]


def sqlite_initialize(conn: sqlite3.Connection) -> None:
    """Create or upgrade the ledger's SQLite schema to `_SCHEMA_VERSION` (WAL mode, one write transaction).

    Raises:
        GatewayInternalError: WAL mode is refused, or the file is a ledger of an unknown schema version.
    """
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise GatewayInternalError("privacy ledger could not switch to WAL mode")
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version not in (0, 1, 2, 3, 4, 5, 6, _SCHEMA_VERSION):
            raise GatewayInternalError("privacy ledger has an unknown schema version")
        if version == 1:
            _migrate_v1(conn)  # issue-gov
        if version in (1, 2):
            conn.execute("ALTER TABLE charges ADD COLUMN rho_units INTEGER NOT NULL DEFAULT 0"
                         " CHECK (rho_units >= 0)")
        if version in (1, 2, 3):
            _migrate_v3(conn)
        if version in (1, 2, 3, 4):
            _migrate_v4(conn)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(charges)")}
        if version in (1, 2, 3, 4, 5) and "product" not in columns:
            conn.execute("ALTER TABLE charges ADD COLUMN product TEXT NOT NULL DEFAULT 'query'")
        if version in (1, 2, 3, 4, 5, 6) and "holder" not in columns:
            conn.execute("ALTER TABLE charges ADD COLUMN holder TEXT NOT NULL DEFAULT ''")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        for statement in _BUCKETS_SCHEMA:
            conn.execute(statement)
        if version in (1, 2, 3, 4):
            _fill_buckets(conn)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
