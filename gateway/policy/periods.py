"""Budget periods and exact budget units for the gateway (the implementation is shared with the sandbox).

The gateway may import this pure module from `sandbox` (a boundary package: docs/architecture.md); it holds
no data and no engine.
"""

from __future__ import annotations

from sandbox.pricing.periods import (
    DELTA_UNITS,
    EPSILON_UNITS,
    LIFETIME,
    RHO_UNITS,
    Period,
    Window,
    from_units,
    parse_period,
    rfc3339,
    to_units,
)

__all__ = [
    "DELTA_UNITS",
    "EPSILON_UNITS",
    "LIFETIME",
    "RHO_UNITS",
    "Period",
    "Window",
    "from_units",
    "parse_period",
    "rfc3339",
    "to_units",
]
