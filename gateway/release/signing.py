"""The gateway's Ed25519 signing key, its key id, and the canonical JSON that every signature covers.

Key files live in ``<state_dir>/keys/``: ``signing.key`` (PKCS8 PEM, mode 0600, created on first start),
``signing.pub`` (SubjectPublicKeyInfo PEM, world-readable) and ``audit-hmac.key`` (32 random bytes, 0600,
the key that pseudonymizes identifiers in the audit log). Creation is race-free between gateway processes
that share a state directory: a key is written to a private temporary file and hard-linked into place,
so a file either does not exist or is complete, and the first process to link wins.

Canonical JSON (what is signed and hashed): ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8, after replacing every float by its Python ``repr`` string
(``0.5`` -> ``"0.5"``). Floats travel as strings because languages print doubles differently
(``1e+21`` vs ``1e21``, ``5e-324`` vs ``4.9406564584124654e-324``); a verifier checks the signature over
the exact bytes it received, and only then parses them. Integers must lie within +-(2**53 - 1) so that
every JSON parser reads them exactly. This module uses only the standard library and ``cryptography``,
so offline verifiers need nothing else of the gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sandbox.errors import ConfigError

__all__ = [
    "HMAC_KEY_FILE",
    "KEYS_DIR",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "Signer",
    "canonical_json",
    "canonicalize",
    "key_id_of",
    "load_or_create_hmac_key",
    "load_or_create_secret",
    "public_key_id",
    "verify",
]

KEYS_DIR = "keys"
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"
HMAC_KEY_FILE = "audit-hmac.key"
HMAC_KEY_BYTES = 32
MAX_SAFE_INTEGER = 2**53 - 1


def canonicalize(obj: object) -> object:
    """Returns ``obj`` with every float replaced by its ``repr`` string, checking the other types.

    Args:
        obj: JSON-like data: dicts with str keys, lists/tuples, str, int, bool, None, float.

    Returns:
        The same structure, floats as strings, tuples as lists.

    Raises:
        ValueError: A key is not a string, an int is outside +-(2**53 - 1), or a type is not JSON.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {obj} is outside the exactly representable range of JSON")
        return obj
    if isinstance(obj, Mapping):
        out: dict[str, object] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError(f"canonical JSON keys must be strings, got {type(key).__name__}")
            out[key] = canonicalize(value)
        return out
    if isinstance(obj, Sequence) and not isinstance(obj, bytes | bytearray):
        return [canonicalize(v) for v in obj]
    raise ValueError(f"type {type(obj).__name__} has no canonical JSON form")


def canonical_json(obj: object) -> bytes:
    """The canonical UTF-8 JSON bytes of ``obj`` (sorted keys, no whitespace, floats as repr strings).

    Args:
        obj: JSON-like data (see ``canonicalize``).

    Returns:
        The bytes that are hashed or signed.

    Raises:
        ValueError: ``obj`` has no canonical form (see ``canonicalize``), or contains lone surrogates.
    """
    text = json.dumps(canonicalize(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("canonical JSON must be valid UTF-8 (lone surrogate)") from exc


def key_id_of(raw_public_key: bytes) -> str:
    """The key id: the first 16 hex digits of SHA-256 of the 32-byte raw Ed25519 public key."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def _load_public_pem(pub_pem: bytes | str) -> Ed25519PublicKey:
    try:
        data = pub_pem.encode("ascii") if isinstance(pub_pem, str) else bytes(pub_pem)
        key = serialization.load_pem_public_key(data)
    except (UnsupportedAlgorithm, UnicodeEncodeError) as exc:  # e.g. a corrupted algorithm OID
        raise ValueError("the public key is not a supported PEM key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    return key


def public_key_id(pub_pem: bytes | str) -> str:
    """The key id of a PEM public key.

    Raises:
        ValueError: The PEM is not an Ed25519 public key.
    """
    raw = _load_public_pem(pub_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return key_id_of(raw)


def verify(pub_pem: bytes | str, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``data`` under the PEM public key.

    Never raises for bad input: a malformed key or signature is simply not valid.
    """
    try:
        key = _load_public_pem(pub_pem)
        key.verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _write_new_file(path: Path, data: bytes) -> bool:
    """Atomically creates ``path`` with mode 0600 holding ``data``; False if it already exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)  # fails if another process got there first; never a partial file
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


def _read_private(path: Path) -> bytes:
    """Reads a secret file, refusing one that group or others may read or write (like ssh)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), "mode", f"is {stat.filemode(mode)}; a key file must be 0600")
    return path.read_bytes()


def _keys_dir(state_dir: Path) -> Path:
    keys = Path(state_dir) / KEYS_DIR
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    return keys


def load_or_create_secret(path: Path, size: int) -> bytes:
    """The secret key of `size` random bytes at `path` (mode 0600), created on first use; race-free between
    processes (the first to link its file wins, the others read it).

    Raises:
        ConfigError: The file is readable by group/others or is not `size` bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_new_file(path, secrets.token_bytes(size))
    key = _read_private(path)
    if len(key) != size:
        raise ConfigError(str(path), "length", f"is {len(key)} bytes, expected {size}")
    return key


def load_or_create_hmac_key(state_dir: Path) -> bytes:
    """The audit pseudonymization key ``<state_dir>/keys/audit-hmac.key``, created on first use.

    Raises:
        ConfigError: The file is readable by group/others or is not 32 bytes.
    """
    return load_or_create_secret(_keys_dir(state_dir) / HMAC_KEY_FILE, HMAC_KEY_BYTES)


class Signer:
    """The gateway's Ed25519 key: signs receipts and audit seals.

    Attributes:
        key_id: First 16 hex digits of SHA-256 of the raw public key.
        public_pem: The public key as SubjectPublicKeyInfo PEM bytes.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        """Wraps a private key (use ``load_or_create`` for the gateway's own key)."""
        self._private_key = private_key
        public = private_key.public_key()
        self.key_id = key_id_of(
            public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        self.public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh key that is never stored (tests, offline tools)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Signer:
        """Loads ``<state_dir>/keys/signing.key``, creating it (and ``signing.pub``) on first start.

        Args:
            state_dir: The gateway's state directory.

        Returns:
            The signer.

        Raises:
            ConfigError: The key file is readable by group/others, or is not an Ed25519 PKCS8 key.
        """
        keys = _keys_dir(state_dir)
        path = keys / PRIVATE_KEY_FILE
        if not path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_new_file(path, pem)
        try:
            key = serialization.load_pem_private_key(_read_private(path), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(path), "key", "is not an unencrypted PKCS8 PEM key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(str(path), "key", "is not an Ed25519 key")
        signer = cls(key)
        pub = keys / PUBLIC_KEY_FILE
        if not pub.exists() or pub.read_bytes() != signer.public_pem:
            tmp = pub.with_name(f".{pub.name}.{os.getpid()}")
            tmp.write_bytes(signer.public_pem)
            tmp.chmod(0o644)
            tmp.replace(pub)  # atomic; every writer writes the same bytes
        return signer

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._private_key.sign(bytes(data))
