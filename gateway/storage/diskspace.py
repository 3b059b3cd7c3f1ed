"""Room to settle: new charged work is refused early while the state directory runs out of space.

A charge is reserved, then settled (completed or failed) with its audit entry; both are writes. If the disk
fills between the two, the charge could neither complete nor fail. So the gateway keeps a ballast file of
`reserve_bytes` in its state directory and watches the free space:

- below ``2 x reserve_bytes`` free, new product calls (queries, models, verification) are refused before
  anything is charged, with UNAVAILABLE / STORAGE_LOW and RetryInfo; reads and refusals still work;
- below ``reserve_bytes`` free, the ballast is given up, so the calls in flight and the settler can write
  their settlements and audit entries;
- once ``3 x reserve_bytes`` are free again, the ballast is put back.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import StorageUnavailableError

__all__ = ["BALLAST_FILE", "DiskGuard"]

log = logging.getLogger("gateway.storage.diskspace")

BALLAST_FILE = "storage-reserve.bin"


class DiskGuard:
    """Watches the free space of the state directory and holds its ballast (see the module docstring)."""

    def __init__(self, state_dir: Path, reserve_bytes: int, *, clock: Callable[[], float] = time.monotonic,
                 every_s: float = 0.5) -> None:
        """Guard `state_dir` with a ballast of `reserve_bytes` (0 disables the guard)."""
        self.state_dir = Path(state_dir)
        self.reserve_bytes = reserve_bytes
        self.ballast = self.state_dir / BALLAST_FILE
        self.clock = clock
        self.every_s = every_s
        self._lock = threading.Lock()
        self._checked_at = -1e18
        self._free = 1 << 62
        self.refused = 0
        self.maintain()

    def free_bytes(self) -> int:
        """Free bytes on the state directory's file system (re-read at most every `every_s`)."""
        now = self.clock()
        with self._lock:
            if now - self._checked_at >= self.every_s:
                self._free = shutil.disk_usage(self.state_dir).free
                self._checked_at = now
            return self._free

    def check(self) -> None:
        """Refuse new charged work while free space is low.

        Raises:
            StorageUnavailableError: reason STORAGE_LOW, with RetryInfo.
        """
        if self.reserve_bytes and self.free_bytes() < 2 * self.reserve_bytes:
            self.refused += 1
            self.maintain()
            raise StorageUnavailableError(
                "the gateway's storage is almost full; nothing was charged; retry later", reason="STORAGE_LOW")

    def maintain(self) -> None:
        """Give up the ballast when space is short, put it back when there is room (never raises)."""
        if not self.reserve_bytes:
            return
        try:
            free = shutil.disk_usage(self.state_dir).free
            present = self.ballast.exists()
            if present and free < self.reserve_bytes:
                self.ballast.unlink()
                log.warning("storage almost full: gave up the %d-byte reserve so charges can settle",
                            self.reserve_bytes)
            elif not present and free >= 3 * self.reserve_bytes:
                self._write_ballast()
        except OSError:
            log.warning("the storage reserve could not be maintained", exc_info=True)

    def _write_ballast(self) -> None:
        tmp = self.ballast.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.reserve_bytes) if hasattr(os, "posix_fallocate") else os.ftruncate(
                fd, self.reserve_bytes)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        tmp.rename(self.ballast)
