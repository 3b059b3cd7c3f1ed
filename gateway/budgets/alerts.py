"""Alert rules over the state database, evaluated after each request and on a timer.

Rules (configured as `[[alerts]]` in the operator policy):

* `grant_near_exhaustion` (threshold): an organisation grant or a member budget has spent at least
  `threshold` of its budget this period; fires once per subject and period.
* `refusal_burst` (count, window_s): one identity was refused `count` times within `window_s`.
* `near_identical_queries` (count, window_s): one identity sent the same normalised SQL `count` times
  within `window_s` (averaging attacks, docs/threats.md section 5).
* `unusual_spend_rate` (factor, window_s = 3600, baseline_days = 7): an organisation spent more than
  `factor` x its average epsilon per window over the baseline days before.

Each firing is a row in the `alerts` table (the audit branch also sends it to the audit log) and is
counted in `alerts_total()` by rule, for the metrics module. A rule does not fire again for the same
subject within its window (or, for exhaustion, within the same period).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from gateway.budgets.governor import Governor
from gateway.budgets.ledger import BudgetLimit, GrantKey, PrivacyLoss
from gateway.policy.model import AlertRule
from gateway.policy.periods import EPSILON_UNITS, rfc3339, to_units
from gateway.storage.state import Outcome

__all__ = ["AlertEngine", "alerts_total"]

log = logging.getLogger("gateway.budgets.alerts")

_COUNTS: Counter[str] = Counter()
_COUNTS_LOCK = threading.Lock()


def alerts_total() -> dict[str, int]:
    """Alert firings in this process by rule (for `alerts_total{rule}`)."""
    with _COUNTS_LOCK:
        return dict(_COUNTS)


class AlertEngine:
    """Evaluates the policy's alert rules and records firings."""

    def __init__(self, governor: Governor, *, clock: Callable[[], float] | None = None) -> None:
        """Evaluate `governor`'s policy rules against its state database."""
        self.governor = governor
        self.clock = clock or governor.clock
        self.fired_hooks: list[Callable[[str, str, str], None]] = []  # (rule, subject, detail)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rules(self, name: str) -> list[AlertRule]:
        return [r for r in self.governor.governance.alerts if r.rule == name]

    def _fire(self, rule: str, subject: str, detail: str, now: float, *, quiet_since: float) -> bool:
        last = self.governor.state.last_alert(rule, subject)
        if last is not None and last >= quiet_since:
            return False
        self.governor.state.record_alert(rule, subject, detail, now)
        with _COUNTS_LOCK:
            _COUNTS[rule] += 1
        log.warning("alert %s for %s: %s", rule, subject, detail)
        for hook in list(self.fired_hooks):
            hook(rule, subject, detail)
        return True

    def on_outcome(self, o: Outcome) -> None:
        """Per-request rules for the outcome's identity, then exhaustion of its grant."""
        now = o.created_at
        state = self.governor.state
        for r in self._rules("refusal_burst"):
            window = r.param("window_s", 60)
            n = state.count_outcomes(o.consumer, now - window, outcome="refused")
            if o.outcome == "refused" and n >= r.param("count", 20):
                self._fire(r.rule, o.consumer, f"{n} refusals in {window:g}s", now, quiet_since=now - window)
        for r in self._rules("near_identical_queries"):
            window = r.param("window_s", 300)
            n = state.count_outcomes(o.consumer, now - window, sql_hash=o.sql_hash)
            if n >= r.param("count", 10):
                self._fire(r.rule, o.consumer, f"{n} near-identical queries in {window:g}s", now,
                           quiet_since=now - window)
        if o.outcome in ("charged", "failed"):
            self.check_exhaustion(now, only=(o.organization, o.dataset, o.purpose))
            self.check_spend_rate(now, only=o.organization)

    def check_exhaustion(self, now: float | None = None, *, only: tuple[str, str, str] | None = None) -> None:
        """grant_near_exhaustion over every grant (or one) and its member budgets."""
        now = self.clock() if now is None else now
        rules = self._rules("grant_near_exhaustion")
        if not rules:
            return
        gov = self.governor.governance
        for g in gov.grants:
            if only is not None and (g.organization, g.dataset, g.purpose) != only:
                continue
            window = g.period.window(now)
            # zCDP grants are accounted in rho: the fraction is of rho (nano-rho units, like nano-epsilon)
            subjects = [("organization", f"{g.organization}/{g.dataset}/{g.purpose}", "",
                         g.rho if g.zcdp else g.epsilon)]
            subjects += [("member", f"{m.member}/{g.dataset}/{g.purpose}", m.member,
                          m.rho if g.zcdp else m.epsilon) for m in g.members]
            for level, subject, member, budget in subjects:
                # a zCDP level is read as the ledger checks it (earlier pure charges converted to rho)
                limit = (BudgetLimit(level, PrivacyLoss(0.0, 0.0, budget), window, "rho")  # type: ignore[arg-type]
                         if g.zcdp else BudgetLimit(level, PrivacyLoss(budget), window))  # type: ignore[arg-type]
                spent_eps, _, spent_rho = self.governor.ledger.window_spent(
                    limit, GrantKey(member, g.dataset, g.purpose), g.organization)
                spent = spent_rho if g.zcdp else spent_eps
                fraction = spent / max(1, to_units(budget, EPSILON_UNITS, up=False))
                for r in rules:
                    if fraction >= r.param("threshold", 0.9):
                        start = window.start if window.start is not None else float("-inf")
                        quiet = start if g.period.kind != "rolling" else now - g.period.window_days * 86400
                        self._fire(r.rule, subject, f"{fraction:.1%} of the budget spent since "
                                   f"{rfc3339(window.start) or 'the start'}", now, quiet_since=quiet)

    def check_spend_rate(self, now: float | None = None, *, only: str | None = None) -> None:
        """unusual_spend_rate per organisation."""
        now = self.clock() if now is None else now
        for r in self._rules("unusual_spend_rate"):
            window = r.param("window_s", 3600)
            days = r.param("baseline_days", 7)
            # from the ledger's organisation-wide spending buckets: constant cost per organisation (it
            # used to load every charge of the baseline days, on every charged request)
            ledger = self.governor.ledger
            orgs = [only] if only is not None else sorted(self.governor.governance.organizations)
            windows = days * 86400 / window
            for org in orgs:
                spent = ledger.organization_units(org, now - window, now + 1)
                if spent <= 0:
                    continue
                baseline = ledger.organization_units(org, now - days * 86400 - window, now - window) / windows
                if baseline > 0 and spent > r.param("factor", 5) * baseline:
                    self._fire(r.rule, org, f"{spent / EPSILON_UNITS:g} epsilon in {window:g}s, baseline "
                               f"{baseline / EPSILON_UNITS:.4g}", now, quiet_since=now - window)

    def tick(self, now: float | None = None) -> None:
        """The timer's evaluation: every grant's exhaustion and every organisation's spend rate."""
        try:
            self.check_exhaustion(now)
            self.check_spend_rate(now)
        except Exception:
            log.exception("alert evaluation failed")

    def start(self, interval_s: float = 30.0) -> None:
        """Evaluate on a daemon timer thread every `interval_s` seconds until `stop`."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.tick()
        self._thread = threading.Thread(target=loop, name="alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


