"""The curated allowlist of scalar functions, shared by the gateway's analyzer and the sandbox compiler.

Each entry declares its name, arity, argument kinds (which positions must be literals), result kind,
how it renders to SQL, and its interval-arithmetic bound rule (used by `sandbox.plans.bounds`). Anything not
listed is refused by the analyzer (`UNSUPPORTED_FUNCTION`) and by the compiler (PlanRejectedError).

Safety rules for rendering (docs/threats.md, section 3): no function may raise on data. DuckDB's math functions
return NaN/inf instead of raising (checked on DuckDB 2.0.1: sqrt(-1) = NaN, ln(0) = -inf,
exp(1000) = inf), but we still guard SQRT/LN/EXP so that out-of-domain inputs give NULL. Arguments
whose values could make DuckDB raise (SUBSTRING lengths beyond 2**32, for example) must be literals
in a small range, checked here before anything runs. Numeric arguments are rendered as DOUBLE by the
compiler, so no integer overflow can raise.

Kinds: "num", "str", "bool"; "same" means "the common kind of the arguments" (COALESCE, NULLIF,
LEAST, GREATEST); "any" accepts every kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INF = math.inf
MAX_LITERAL_POSITION = 1_000_000
MAX_ROUND_DIGITS = 15
MAX_POWER = 8


@dataclass(frozen=True, slots=True)
class Interval:
    """A closed interval of possible numeric values (bounds may be infinite) and integrality."""

    lo: float
    hi: float
    integer: bool = False

    @property
    def bounded(self) -> bool:
        """Both ends finite."""
        return math.isfinite(self.lo) and math.isfinite(self.hi)


UNBOUNDED = Interval(-INF, INF)


# A bound rule gets the intervals of the numeric arguments (None for non-numeric ones) and the
# literal values of the arguments (None where the argument is not a literal).
BoundRule = Callable[[Sequence[Interval | None], Sequence[object]], Interval | None]
Renderer = Callable[[Sequence[str]], str]


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One allowlisted function."""

    name: str  # canonical upper-case name used in plans
    min_args: int
    max_args: int | None  # None: variadic
    arg_kinds: tuple[str, ...]  # per position; the last one repeats for variadic functions
    result: str
    render: Renderer
    bound: BoundRule | None = None  # None: result is not numeric, or unbounded
    literal_args: frozenset[int] = frozenset()  # positions that must be literals
    check_literals: Callable[[Sequence[object]], str | None] | None = None  # error text or None
    doc: str = ""

    def kind_of(self, position: int) -> str:
        """The kind expected at argument `position`."""
        return self.arg_kinds[min(position, len(self.arg_kinds) - 1)]


def _num(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _hull(items: Sequence[Interval | None]) -> Interval | None:
    present = [i for i in items if i is not None]
    if not present:
        return None
    return Interval(
        min(i.lo for i in present), max(i.hi for i in present), all(i.integer for i in present)
    )


def _greatest(ivs: Sequence[Interval | None], lits: Sequence[object]) -> Interval | None:
    # DuckDB's GREATEST ignores NULL arguments, so only non-NULL literals raise the lower bound.
    h = _hull(ivs)
    if h is None:
        return None
    fixed = [f for f in (_num(v) for v in lits) if f is not None]
    lo = max(fixed) if fixed else h.lo
    return Interval(max(lo, h.lo), h.hi, h.integer)


def _least(ivs: Sequence[Interval | None], lits: Sequence[object]) -> Interval | None:
    h = _hull(ivs)
    if h is None:
        return None
    fixed = [f for f in (_num(v) for v in lits) if f is not None]
    hi = min(fixed) if fixed else h.hi
    return Interval(h.lo, min(hi, h.hi), h.integer)


def _first(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    return ivs[0] if ivs else None


def _hull_rule(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    return _hull(ivs)


def _abs(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    if x is None:
        return None
    if x.lo >= 0:
        return x
    if x.hi <= 0:
        return Interval(-x.hi, -x.lo, x.integer)
    return Interval(0.0, max(-x.lo, x.hi), x.integer)


def _sign(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    if x is None:
        return Interval(-1.0, 1.0, True)
    return Interval(float(_sgn(x.lo)), float(_sgn(x.hi)), True)


def _sgn(v: float) -> int:
    return (v > 0) - (v < 0)


def _floor(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    return None if x is None else Interval(math.floor(x.lo) if math.isfinite(x.lo) else x.lo,
                                           math.floor(x.hi) if math.isfinite(x.hi) else x.hi, True)


def _ceil(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    return None if x is None else Interval(math.ceil(x.lo) if math.isfinite(x.lo) else x.lo,
                                           math.ceil(x.hi) if math.isfinite(x.hi) else x.hi, True)


def _round(ivs: Sequence[Interval | None], lits: Sequence[object]) -> Interval | None:
    # Rounding to d digits is monotone, so [floor_d(lo), ceil_d(hi)] contains every result.
    x = ivs[0]
    if x is None:
        return None
    d = int(_num(lits[1]) or 0) if len(lits) > 1 else 0
    f = 10.0**d

    def down(v: float) -> float:
        return math.floor(v * f) / f if math.isfinite(v) else v

    def up(v: float) -> float:
        return math.ceil(v * f) / f if math.isfinite(v) else v

    return Interval(down(x.lo), up(x.hi), d <= 0)


def _sqrt(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    if x is None:
        return Interval(0.0, INF)
    return Interval(math.sqrt(max(x.lo, 0.0)), math.sqrt(max(x.hi, 0.0)))


def _ln(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    if x is None:
        return UNBOUNDED
    lo = math.log(x.lo) if x.lo > 0 else -INF
    hi = math.log(x.hi) if 0 < x.hi < INF else (INF if x.hi == INF else -INF)
    return Interval(lo, hi)


EXP_MAX = 709.0


def _exp(ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    if x is None:
        return Interval(0.0, math.exp(EXP_MAX))
    return Interval(math.exp(max(min(x.lo, EXP_MAX), -745.0)), math.exp(min(x.hi, EXP_MAX)))


def _power(ivs: Sequence[Interval | None], lits: Sequence[object]) -> Interval | None:
    x = ivs[0]
    n = int(_num(lits[1]) or 0)
    if x is None:
        return UNBOUNDED
    if n == 0:
        return Interval(1.0, 1.0, True)

    def pw(v: float) -> float:
        try:
            return float(v**n)
        except OverflowError:
            return INF if v > 0 or n % 2 == 0 else -INF

    a, b = pw(x.lo), pw(x.hi)
    if n % 2 == 1:
        return Interval(a, b, x.integer)
    lo = 0.0 if x.lo <= 0 <= x.hi else min(a, b)
    return Interval(lo, max(a, b), x.integer)


def _clamp(ivs: Sequence[Interval | None], lits: Sequence[object]) -> Interval | None:
    lo, hi = _num(lits[1]), _num(lits[2])
    assert lo is not None and hi is not None
    integer = float(lo).is_integer() and float(hi).is_integer()
    x = ivs[0]
    if x is None:
        return Interval(lo, hi, integer)
    return Interval(min(max(x.lo, lo), hi), max(min(x.hi, hi), lo), integer and x.integer)


def _length(_ivs: Sequence[Interval | None], _lits: Sequence[object]) -> Interval | None:
    return Interval(0.0, INF, True)


def _check_round(lits: Sequence[object]) -> str | None:
    if len(lits) > 1:
        d = lits[1]
        if isinstance(d, bool) or not isinstance(d, int) or abs(d) > MAX_ROUND_DIGITS:
            return f"the digits of ROUND must be an integer literal in [-{MAX_ROUND_DIGITS}, {MAX_ROUND_DIGITS}]"
    return None


def _check_substr(lits: Sequence[object]) -> str | None:
    for v in lits[1:]:
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_LITERAL_POSITION:
            return f"SUBSTRING positions must be integer literals within +-{MAX_LITERAL_POSITION}"
    if len(lits) > 2 and isinstance(lits[2], int) and lits[2] < 0:
        return "the length of SUBSTRING must not be negative"
    return None


def _check_power(lits: Sequence[object]) -> str | None:
    n = lits[1]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_POWER:
        return f"the exponent of POWER must be an integer literal in [0, {MAX_POWER}]"
    return None


def _check_clamp(lits: Sequence[object]) -> str | None:
    lo, hi = _num(lits[1]), _num(lits[2])
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return "CLAMP(x, lo, hi) needs number literals lo <= hi"
    if max(abs(lo), abs(hi)) > 2.0**53:
        return "the bounds of CLAMP must be at most 2**53 in magnitude"
    return None


def _check_pattern(lits: Sequence[object]) -> str | None:
    if not isinstance(lits[1], str):
        return "the pattern of LIKE must be a string literal"
    return None


def _call(name: str) -> Renderer:
    return lambda a: f"{name}({', '.join(a)})"


def _d(x: str) -> str:
    return f"CAST({x} AS DOUBLE)"


def _nan_null(x: str, body: str) -> str:
    # NULL stays NULL and NaN becomes NULL: `NOT isnan(NULL)` is NULL, so the CASE yields NULL.
    return f"(CASE WHEN NOT isnan({_d(x)}) THEN {body} END)"


def render_clamp(x: str, lo: str, hi: str) -> str:
    """x clamped to [lo, hi]; NULL and NaN give NULL (DuckDB's GREATEST(NULL, lo) would give lo)."""
    return _nan_null(x, f"least(greatest({_d(x)}, {lo}), {hi})")


def _lit_double(v: float) -> str:
    return f"CAST({float(v)!r} AS DOUBLE)"


FUNCTIONS: dict[str, FunctionSpec] = {
    f.name: f
    for f in (
        FunctionSpec("COALESCE", 1, None, ("any",), "same", _call("coalesce"), _hull_rule,
                     doc="first non-NULL argument; bounds: hull of the arguments"),
        FunctionSpec("NULLIF", 2, 2, ("any", "any"), "same", _call("nullif"), _first,
                     doc="NULL if equal; bounds: those of the first argument"),
        FunctionSpec("LEAST", 1, None, ("num",), "num", _call("least"), _least,
                     doc="smallest non-NULL argument"),
        FunctionSpec("GREATEST", 1, None, ("num",), "num", _call("greatest"), _greatest,
                     doc="largest non-NULL argument"),
        FunctionSpec("ABS", 1, 1, ("num",), "num", _call("abs"), _abs),
        FunctionSpec("SIGN", 1, 1, ("num",), "num", _call("sign"), _sign),
        FunctionSpec("FLOOR", 1, 1, ("num",), "num", _call("floor"), _floor),
        FunctionSpec("CEIL", 1, 1, ("num",), "num", _call("ceil"), _ceil),
        FunctionSpec("ROUND", 1, 2, ("num", "num"), "num", _call("round"), _round,
                     literal_args=frozenset({1}), check_literals=_check_round,
                     doc="digits: an integer literal in [-15, 15]"),
        FunctionSpec("SQRT", 1, 1, ("num",), "num",
                     lambda a: f"(CASE WHEN {a[0]} >= 0 THEN sqrt({a[0]}) END)", _sqrt,
                     doc="NULL for negative input"),
        FunctionSpec("LN", 1, 1, ("num",), "num",
                     lambda a: f"(CASE WHEN {a[0]} > 0 THEN ln({a[0]}) END)", _ln,
                     doc="NULL for input <= 0"),
        FunctionSpec("EXP", 1, 1, ("num",), "num",
                     lambda a: f"(CASE WHEN {a[0]} <= {EXP_MAX!r} THEN exp({a[0]}) END)", _exp,
                     doc="NULL for input > 709 (would overflow)"),
        FunctionSpec("POWER", 2, 2, ("num", "num"), "num", lambda a: f"pow({a[0]}, {a[1]})", _power,
                     literal_args=frozenset({1}), check_literals=_check_power,
                     doc="exponent: an integer literal in [0, 8]"),
        FunctionSpec("CLAMP", 3, 3, ("num", "num", "num"), "num",
                     lambda a: render_clamp(a[0], a[1], a[2]), _clamp,
                     literal_args=frozenset({1, 2}), check_literals=_check_clamp,
                     doc="ours: LEAST(GREATEST(x, lo), hi) with NULL/NaN kept NULL; bounds [lo, hi]"),
        FunctionSpec("LOWER", 1, 1, ("str",), "str", _call("lower")),
        FunctionSpec("UPPER", 1, 1, ("str",), "str", _call("upper")),
        FunctionSpec("TRIM", 1, 1, ("str",), "str", _call("trim")),
        FunctionSpec("LENGTH", 1, 1, ("str",), "num", _call("length"), _length,
                     doc="characters; unbounded above (CLAMP it to aggregate)"),
        FunctionSpec("SUBSTRING", 2, 3, ("str", "num", "num"), "str", _call("substring"),
                     literal_args=frozenset({1, 2}), check_literals=_check_substr,
                     doc="positions: integer literals"),
        FunctionSpec("CONCAT", 1, None, ("any",), "str", _call("concat"),
                     doc="NULL arguments are skipped"),
        FunctionSpec("||", 2, 2, ("any", "any"), "str", lambda a: f"({a[0]} || {a[1]})",
                     doc="NULL if either side is NULL"),
        FunctionSpec("STARTS_WITH", 2, 2, ("str", "str"), "bool", _call("starts_with")),
        FunctionSpec("ENDS_WITH", 2, 2, ("str", "str"), "bool", _call("ends_with")),
        FunctionSpec("CONTAINS", 2, 2, ("str", "str"), "bool", _call("contains")),
        FunctionSpec("LIKE", 2, 2, ("str", "str"), "bool", lambda a: f"({a[0]} LIKE {a[1]})",
                     literal_args=frozenset({1}), check_literals=_check_pattern,
                     doc="pattern: a string literal (% and _ wildcards, no ESCAPE)"),
        FunctionSpec("ILIKE", 2, 2, ("str", "str"), "bool", lambda a: f"({a[0]} ILIKE {a[1]})",
                     literal_args=frozenset({1}), check_literals=_check_pattern,
                     doc="case-insensitive LIKE"),
    )
}

ALIASES: dict[str, str] = {
    "substr": "SUBSTRING",
    "ceiling": "CEIL",
    "pow": "POWER",
    "**": "POWER",
    "^": "POWER",
    "prefix": "STARTS_WITH",
    "suffix": "ENDS_WITH",
    "~~": "LIKE",
    "~~*": "ILIKE",
}
NEGATED: dict[str, str] = {"!~~": "LIKE", "!~~*": "ILIKE"}  # NOT LIKE, NOT ILIKE


def lookup(name: str) -> FunctionSpec | None:
    """The spec for a function name as written (case-insensitive) or by canonical name."""
    if name in FUNCTIONS:
        return FUNCTIONS[name]
    canonical = ALIASES.get(name.lower(), name.upper())
    return FUNCTIONS.get(canonical)
