"""Replicas on one storage follow each other's policy reloads.

A reload (ReloadPolicy, SIGHUP) on any replica bumps the shared "policy" generation in the governance state
(`gateway.rpc.admin.reload_policy`); every replica polls that counter and, when it grew, reloads the policy
file and the data owner's settings itself, without bumping it again. Replicas read the same policy file (a
shared or identically deployed path), so after one poll interval every replica serves the same policy.
Overrides and revocations need no following: every request reads them from the shared state.
"""

from __future__ import annotations

import logging
import threading

from gateway.budgets.governor import Governor
from gateway.budgets.owner import OwnerSettings
from gateway.errors import GatewayError
from gateway.rpc.admin import POLICY_GENERATION, reload_policy

__all__ = ["PolicyFollower"]

log = logging.getLogger("gateway.rpc.replicas")


class PolicyFollower:
    """A daemon thread that reloads the policy when another replica announced a reload."""

    def __init__(self, governor: Governor, owner: OwnerSettings | None, *, interval_s: float = 1.0) -> None:
        """Follow `governor`'s state from its current generation on; poll every `interval_s` seconds."""
        self._governor = governor
        self._owner = owner
        self._interval_s = interval_s
        self._seen = governor.state.generation(POLICY_GENERATION)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgw-policy-follower", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> bool:
        """Reload if the shared generation grew since the last poll; True if it did."""
        current = self._governor.state.generation(POLICY_GENERATION)
        if current <= self._seen:
            return False
        self._seen = current
        try:
            reload_policy(self._governor, self._owner, announce=False)
        except GatewayError as exc:
            log.error("policy reload announced by another replica refused here: %s", exc.message)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll()
            except GatewayError as exc:  # storage briefly unavailable: try again next interval
                log.warning("policy generation not read: %s", exc.message)
