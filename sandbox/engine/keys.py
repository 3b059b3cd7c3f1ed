"""The sandbox's own secret: the key that turns a digest of the data files into the public data version.

The data version is published with every answer and receipt and keys the gateway's charge-once cache, so
it must be stable for unchanged data and change when the data changes. A plain hash of the files would be
a deterministic function of the private data: an adversary who knows every other record could test
guesses about one person's record against it offline. Keyed with a secret that never leaves the sandbox's
state directory, it is a pseudorandom label that tells the consumer nothing beyond "same data or not".
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac

from sandbox.errors import ConfigError

__all__ = ["KEY_BYTES", "keyed_digest", "load_or_create_key"]

KEY_BYTES = 32


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte key in `path` (mode 0600), created atomically on first use.

    Raises:
        ConfigError: the file is readable or writable by group or others, or is not 32 bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        # Written to a temporary name, then linked: a crash never leaves a short key under `path`, and
        # of two processes racing, the first link wins and both read the same key.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), "mode", f"is {stat.filemode(mode)}; a key file must be 0600")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ConfigError(str(path), "length", f"is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def keyed_digest(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of `data` under `key`, as hex."""
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize().hex()
