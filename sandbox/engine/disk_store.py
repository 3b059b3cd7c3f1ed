"""The loaded tables in DuckDB's on-disk format, built once per data version and opened read-only.

With `storage = disk` the sandbox keeps its truncated, clamped tables in one DuckDB file under the data
owner's state directory (`<state>/tables/`), so a dataset larger than the sandbox's memory limit loads
and answers: DuckDB's buffer manager reads blocks of the file on demand and evicts them under the limit.

Life of a store file (one directory, guarded by an exclusive `flock` on `.lock`):

* It holds the loaded tables and the tables derived from them at load (the verification templates'
  tables, `sandbox.products.verification.template_tables`), so both spill under the memory limit while
  they are built, are built once per data version, and are reused on restart.
* Its name is a key over everything that determines its contents (`store_key`): the store format, the
  DuckDB version, each dataset's privacy unit, each table's public description, a SHA-256 of each
  source file and the SQL of each derived table. The key is keyed with the sandbox's secret
  (`sandbox.engine.keys`), like the public data version, so even the file name is no unkeyed function
  of the private data. A data-version change is a
  different key, hence a rebuild; files of other keys are removed once the current one is ready.
* Built into `tmp-<random>.duckdb` by a separate, short-lived connection (`build`), with a private spill
  directory; then the file is fsynced, renamed to `<key>.duckdb`, and a manifest `<key>.json` carrying
  the file's size and SHA-256 is written the same way (temp file, fsync, rename, fsync of the directory).
  The manifest is the commit mark: a kill at any point before it leaves no manifest, and the next start
  removes the leftovers and rebuilds. A failed build (disk full, a bad source file) removes every file it
  made before the error propagates, so nothing half-written is ever opened.
* Before use, the file's size and SHA-256 are checked against its manifest (`_intact`); a mismatch is
  logged as a refusal naming the file, the file is removed and rebuilt.
* The serving connection attaches it `READ_ONLY` before the lock-down (`sandbox.engine.duckdb_config`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import msgspec

from sandbox.catalog import Catalog
from sandbox.engine.keys import keyed_digest
from sandbox.engine.limits import Limits
from sandbox.engine.storage import STORE, DerivedTable, sql_path, store_codecs
from sandbox.errors import ConfigError

__all__ = ["FORMAT", "STORAGE_MODES", "PreparedStore", "prepare_store", "store_key", "store_paths"]

log = logging.getLogger("sandbox.engine.disk_store")

STORAGE_MODES = ("disk", "memory")
FORMAT = 2  # bump when what a store file holds changes (stored_column, truncation, codecs, derived tables)
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PreparedStore:
    """A complete, verified store file and whether this start built it."""

    path: Path
    built: bool


def store_paths(path: Path) -> tuple[str, ...]:
    """The paths DuckDB allow-lists when `path` is attached (the file and its write-ahead-log names)."""
    p = str(path)
    return (p + ".wal.recovery", p + ".wal.checkpoint", p + ".wal", p)


def store_key(catalog: Catalog, digests: Mapping[str, bytes], key: bytes, salt: str | None,
              derived: Sequence[DerivedTable] = ()) -> str:
    """The name of the store file for `catalog` over source files with SHA-256 `digests` (by table key).

    `salt` is the truncation salt when the caller fixed one (then it is part of what the file holds); a
    salt drawn afresh is not, as every salt gives a valid truncation. `derived` are the tables built from
    the loaded ones (the verification templates' tables): their SQL is part of what the file holds.
    """
    parts: list[object] = [FORMAT, duckdb.__version__, salt]
    for ds in catalog.datasets:
        parts.append([ds.name, ds.privacy_unit])
        for t in ds.tables:
            parts.append([t.name, t.file.name, digests[t.key].hex(),
                          msgspec.json.encode(t.info).decode()])
    parts.extend(["derived", d.name, d.select] for d in derived)
    text = json.dumps(parts, separators=(",", ":"), sort_keys=True)
    return keyed_digest(key, text.encode())[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the store directory's exclusive lock (two sandboxes never build in one directory at once)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _intact(db: Path, manifest: Path, key: str) -> str | None:
    """Why the store file `db` must not be used (None: it matches its manifest)."""
    if not manifest.is_file():
        return "it has no manifest (its build did not finish)"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return "its manifest is unreadable"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        return "its manifest is for another store format or key"
    if not db.is_file():
        return "the file is missing"
    size = db.stat().st_size
    if size != meta.get("size"):
        return f"its size is {size} bytes, the manifest says {meta.get('size')}"
    if _sha256(db) != meta.get("sha256"):
        return "its SHA-256 does not match the manifest (the file is corrupt)"
    return None


def _tidy(directory: Path, keep: str) -> None:
    """Remove leftovers of interrupted builds and the files of other keys (other data versions)."""
    for p in directory.iterdir():
        if p.name == ".lock" or p.name in (f"{keep}.duckdb", f"{keep}.json"):
            continue
        if p.name.startswith(("tmp-", "spill-")) or p.suffix in (".duckdb", ".json", ".wal"):
            log.info("removing %s (not the current store)", p.name)
            _remove(p)


def build_config(limits: Limits, spill: Path) -> dict[str, str | bool | int | float | list[str]]:
    """The build connection's config: the sandbox's memory limit, spilling to a private directory."""
    return {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "memory_limit": limits.memory_limit,
        "threads": limits.threads,
        "temp_directory": str(spill),
        "preserve_insertion_order": False,
    }


def build(directory: Path, key: str, limits: Limits, load: Callable[[duckdb.DuckDBPyConnection], None]) -> Path:
    """Build the store `<key>.duckdb` in `directory`: `load(con)` fills the attached `STORE`, then commit.

    Raises:
        ConfigError: the build failed (a source file, or no space left); no file of it remains.
        duckdb.OutOfMemoryException: even spilling, the build needed more than the memory limit; no file remains.
    """
    token = secrets.token_hex(8)
    tmp = directory / f"tmp-{token}.duckdb"
    spill = directory / f"spill-{token}"
    made = (tmp, Path(str(tmp) + ".wal"), spill, directory / f"tmp-{token}.json")
    final, manifest = directory / f"{key}.duckdb", directory / f"{key}.json"
    committed = False
    try:
        spill.mkdir(mode=0o700)
        con = duckdb.connect(":memory:", config=build_config(limits, spill))
        try:
            con.execute(f"ATTACH {sql_path(str(tmp))} AS {STORE}")
            con.execute(f"SET disabled_compression_methods = '{store_codecs()}'")
            load(con)
            con.execute(f"CHECKPOINT {STORE}")
            con.execute(f"DETACH {STORE}")
        finally:
            con.close()
        _remove(spill)
        _fsync_file(tmp)
        os.chmod(tmp, 0o400)
        meta = {"format": FORMAT, "key": key, "size": tmp.stat().st_size, "sha256": _sha256(tmp),
                "duckdb": duckdb.__version__}
        os.replace(tmp, final)
        _fsync_dir(directory)
        mtmp = made[3]
        with mtmp.open("w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(mtmp, manifest)
        _fsync_dir(directory)
        committed = True
        log.info("built the on-disk store %s (%d bytes)", final.name, meta["size"])
        return final
    except duckdb.OutOfMemoryException:
        raise  # not a configuration fault of the files: the sandbox names the memory setting to raise
    except (duckdb.Error, OSError) as exc:
        raise ConfigError(str(directory), "storage", f"cannot build the on-disk tables: {exc}") from exc
    finally:
        if not committed:
            for p in (*made, final, manifest):
                _remove(p)


def prepare_store(
    directory: Path, key: str, limits: Limits, load: Callable[[duckdb.DuckDBPyConnection], None],
) -> PreparedStore:
    """The verified store file for `key` in `directory`, built first if absent, incomplete or corrupt.

    Raises:
        ConfigError: the build failed (see `build`).
    """
    with _locked(directory):
        db, manifest = directory / f"{key}.duckdb", directory / f"{key}.json"
        built = False
        if db.exists() or manifest.exists():
            why = _intact(db, manifest, key)
            if why is not None:
                log.error("refusing the on-disk store %s: %s; rebuilding it", db, why)
                _remove(manifest)
                _remove(db)
        _tidy(directory, key)
        if not db.exists():
            build(directory, key, limits, load)
            built = True
        return PreparedStore(db, built)
