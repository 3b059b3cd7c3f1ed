"""DP models: exact accounting against OpenDP's maps, sensitivity bounds on neighbouring datasets, noise."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import opendp.prelude as dp
import pytest

from sandbox.catalog import load_catalog
from sandbox.engine.engine import Engine
from sandbox.engine.storage import table_ref
from sandbox.pricing import models as mp
from sandbox.products import model_sql, models, regression
from sandbox.protocol.messages import ErrorReply, decode_body, encode_frame
from sandbox.protocol.models import EvaluateRequest, TrainRequest, TrainResult

dp.enable_features("contrib")

K = 2
CATALOG = f"""
schema = "privacy_gateway.catalog.v1"
data_dir = "."

[datasets.reg]
privacy_unit = "pid"

[datasets.reg.tables.t]
file = "t.parquet"
max_rows_per_unit = {K}

[datasets.reg.tables.t.columns]
pid  = {{ type = "int64", grade = "identifier" }}
x    = {{ type = "float64", grade = "public", lower = 0.0, upper = 10.0 }}
flag = {{ type = "bool", grade = "public", domain = [false, true] }}
cat  = {{ type = "string", grade = "public", domain = ["a", "b", "c"] }}
y    = {{ type = "float64", grade = "sensitive", lower = 0.0, upper = 100.0 }}
"""


def _engine(tmp: Path, rows: list[tuple[int, float, bool, str, float]]) -> Engine:
    tmp.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("CREATE TABLE t (pid BIGINT, x DOUBLE, flag BOOLEAN, cat VARCHAR, y DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    con.execute(f"COPY t TO '{tmp / 't.parquet'}' (FORMAT parquet)")
    (tmp / "catalog.toml").write_text(CATALOG)
    return Engine(load_catalog(tmp / "catalog.toml"))


def _base_rows(seed: int = 3) -> list[tuple[int, float, bool, str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(60):
        # at most K rows per unit: the engine's truncation salt is the data version, so with more rows
        # the kept rows of *other* units could change between neighbours (see the integration notes)
        for _ in range(1 + pid % 2):
            x = float(rng.uniform(0, 10))
            flag = bool(rng.random() < 0.5)
            rows.append((pid, x, flag, str(rng.choice(["a", "b", "c"])), 5 * x + 20 * flag + float(rng.normal())))
    return rows


# An extreme unit: K rows (and one more that truncation drops) at and beyond every bound.
EXTREME = [(999, 1e6, True, "c", 1e9), (999, -1e6, True, "b", -1e9), (999, 10.0, True, "c", 100.0)]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Engine]:
    """Neighbouring datasets: D, and D plus one unit at maximum contribution."""
    base = _base_rows()
    return (_engine(tmp_path_factory.mktemp("d"), base),
            _engine(tmp_path_factory.mktemp("d1"), base + EXTREME))


def _design(e: Engine, kind: str = "linear") -> mp.Design:
    info = e.describe().dataset("reg")
    assert info is not None
    if kind == "linear":
        return mp.design(info, "t", ("x", "flag", "cat"), "y", "linear")
    return mp.design(info, "t", ("x", "cat"), "flag", "logistic")


# ------------------------------------------------------------------------------- accounting


def test_linear_charge_is_the_opendp_map(engines: tuple[Engine, Engine]) -> None:
    d = _design(engines[0])
    (cost,) = mp.price_linear(d, 0.7)
    g = d.groups + 1  # intercept, x, flag, cat, label
    assert g == 5 and cost.sensitivity == K * 2**32 * (g * g + g) // 2
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"),
                             scale=cost.scale)
    assert cost.epsilon == meas.map(int(cost.sensitivity)) <= 0.7
    assert mp.charged((cost,)) == (cost.epsilon, 0.0)


def test_logistic_charge_is_the_opendp_composition(engines: tuple[Engine, Engine]) -> None:
    """2T + 1 releases (count, T gradients, T Hessians), one OpenDP Gaussian at one d_in: the charge is
    exactly the converted composition's map, and tight."""
    d = _design(engines[0], "logistic")
    t, delta = 7, 1e-6
    count, grad, hess, comp = mp.price_logistic(d, 1.5, delta, t, 0.0)
    sens = mp.logistic_sensitivity(d, 0.0)
    assert sens == math.ceil(K * (math.sqrt(d.groups) * mp.Q + math.sqrt(d.p) / 2))
    g = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"),
                           scale=comp.scale)
    assert count.rho == grad.rho == hess.rho == g.map(sens)
    assert (count.count, grad.count, hess.count, comp.count) == (1, t, t, 2 * t + 1)
    composed = dp.c.make_composition([g] * (2 * t + 1))
    assert comp.rho == composed.map(sens)
    eps, dlt = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(composed), delta).map(sens)
    assert (comp.epsilon, comp.delta) == (eps, dlt) and eps <= 1.5
    assert mp.charged((count, grad, hess, comp)) == (eps, delta)
    # the count and the Hessian fit the same d_in: one unit changes them by at most that
    assert K * mp.count_multiplier(d, 0.0) <= sens
    qh = mp.hessian_quantization(d, 0.0)
    assert K * (qh * d.groups / 4 + math.sqrt(mp.hessian_entries(d)) / 2) <= sens
    assert K * ((qh + 1) * d.groups / 4 + math.sqrt(mp.hessian_entries(d)) / 2) > sens  # the largest such
    # tight: a 1e-6 smaller scale would cost more than asked
    tighter = mp.logistic_chain(comp.scale * (1 - 1e-6), 2 * t + 1, delta).map(sens)[0]
    assert tighter > 1.5


def test_logistic_refuses_a_clip_too_small_for_the_hessian(engines: tuple[Engine, Engine]) -> None:
    """A clip that leaves no usable Hessian quantization is refused before anything is priced."""
    d = _design(engines[0], "logistic")
    with pytest.raises(mp.ModelSpecError):
        mp.price_logistic(d, 1.0, 1e-6, 5, 1e-6)


def test_evaluation_charges_are_opendp_maps(engines: tuple[Engine, Engine]) -> None:
    d = _design(engines[0])
    costs = mp.price_eval(d, "linear", 1.0)
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    for c in costs:
        assert c.epsilon == dp.m.make_laplace(*space, scale=c.scale).map(int(c.sensitivity))
    assert mp.charged(costs)[0] <= 1.0
    (hist,) = mp.price_eval(_design(engines[0], "logistic"), "logistic", 0.5)
    assert hist.sensitivity == K and hist.epsilon == dp.m.make_laplace(*space, scale=hist.scale).map(K)


# ------------------------------------------------------------------------------- sensitivity


def test_linear_statistics_move_at_most_the_sensitivity(engines: tuple[Engine, Engine]) -> None:
    """Noiseless statistics on neighbouring datasets (one extreme unit): L1 distance <= the bound."""
    e0, e1 = engines
    d = _design(e0)
    s0 = np.array(regression.exact_linear_statistics(e0, d, "reg__t"), dtype=object)
    s1 = np.array(regression.exact_linear_statistics(e1, d, "reg__t"), dtype=object)
    l1 = sum(abs(int(a) - int(b)) for a, b in zip(s0, s1, strict=True))
    assert 0 < l1 <= mp.linear_sensitivity(d)
    # the extreme unit is near the worst case for its groups: more than half the bound is used
    assert l1 > 0.5 * mp.linear_sensitivity(d)


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_gradient_moves_at_most_the_sensitivity(engines: tuple[Engine, Engine], clip: float) -> None:
    """Clipped quantized gradient sums on neighbouring datasets: L2 distance <= the bound, at several
    models theta (including extreme ones where every residual is about +-1)."""
    e0, e1 = engines
    d = _design(e0, "logistic")
    c = mp.clip_bound(d, clip)
    bound = mp.logistic_sensitivity(d, clip)
    rng = np.random.default_rng(5)
    for theta in [np.zeros(d.p), np.full(d.p, 50.0), np.full(d.p, -50.0), *rng.normal(0, 3, (5, d.p))]:
        g0 = regression.exact_gradient(e0, d, "reg__t", theta.tolist(), c)
        g1 = regression.exact_gradient(e1, d, "reg__t", theta.tolist(), c)
        l2 = math.sqrt(sum((a - b) ** 2 for a, b in zip(g0, g1, strict=True)))
        assert l2 <= bound


@pytest.mark.statistical
def test_extreme_unit_moves_coefficients_within_the_noise(engines: tuple[Engine, Engine]) -> None:
    """Distributional check: the extreme unit's effect on the noiseless statistics is at most the
    sensitivity, so the DP coefficients on D and D' have overlapping distributions. With 40 fits each at
    epsilon 2, the difference of the mean intercepts is below 6 pooled standard errors (a z-test; the
    false-failure probability for DP-indistinguishable inputs is below 1e-6 under normality)."""
    e0, e1 = engines

    def fits(e: Engine) -> np.ndarray:
        out = []
        for i in range(40):
            r = models.train(e, TrainRequest(f"s{i}", "reg", "t", "linear", ("x", "flag", "cat"), "y", 2.0))
            assert isinstance(r, TrainResult)
            out.append(r.intercept.value)
        return np.array(out)

    a, b = fits(e0), fits(e1)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) < 6 * se + 1e-9


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_hessian_moves_at_most_the_sensitivity(engines: tuple[Engine, Engine], clip: float) -> None:
    """Quantized Hessian upper triangles on neighbouring datasets (one extreme unit): L2 distance <= the
    common d_in, at several models theta; the gradient from the same pass equals `exact_gradient`."""
    e0, e1 = engines
    d = _design(e0, "logistic")
    c, qh = mp.clip_bound(d, clip), mp.hessian_quantization(d, clip)
    bound = mp.logistic_sensitivity(d, clip)
    rng = np.random.default_rng(6)
    for theta in [np.zeros(d.p), np.full(d.p, 0.5), np.full(d.p, -2.0), *rng.normal(0, 1, (4, d.p))]:
        g0, h0 = regression.exact_step(e0, d, "reg__t", theta.tolist(), c, qh)
        _, h1 = regression.exact_step(e1, d, "reg__t", theta.tolist(), c, qh)
        assert g0 == regression.exact_gradient(e0, d, "reg__t", theta.tolist(), c)
        assert len(h0) == mp.hessian_entries(d)
        l2 = math.sqrt(sum((a - b) ** 2 for a, b in zip(h0, h1, strict=True)))
        assert 0 < l2 <= bound


def test_newton_reaches_the_unpenalised_optimum_without_noise(engines: tuple[Engine, Engine]) -> None:
    """Post-processing check: with the noisy releases replaced by the exact ones, T Newton steps land on
    the maximum-likelihood fit computed independently in numpy (to 1e-6 relative)."""
    e0, _ = engines
    d = _design(e0, "logistic")
    qh = mp.hessian_quantization(d, 0.0)
    x = np.array(e0._con.execute(
        f"SELECT x, cat = 'b', cat = 'c', flag FROM {table_ref('reg__t')} WHERE flag IS NOT NULL").fetchall(),
        dtype=float)
    z = np.column_stack([np.ones(len(x)), x[:, 0] / 5 - 1, x[:, 1], x[:, 2]])
    y = x[:, 3]
    ref = np.zeros(d.p)
    for _ in range(100):
        s = 1 / (1 + np.exp(-z @ ref))
        ref = ref - np.linalg.solve((z * (s * (1 - s))[:, None]).T @ z, z.T @ (s - y))
    theta = np.zeros(d.p)
    for _ in range(25):
        g, h = regression.exact_step(e0, d, "reg__t", theta.tolist(), mp.clip_bound(d, 0.0), qh)
        theta = theta - regression.newton_direction(np.array(g) / mp.Q, np.array(h) / qh, d.p, 1e-9)
    assert np.linalg.norm(theta - ref) <= 1e-4 * np.linalg.norm(ref)


@pytest.mark.statistical
def test_extreme_unit_moves_logistic_coefficients_within_the_noise(engines: tuple[Engine, Engine]) -> None:
    """Distributional check for logistic regression: with 30 fits each at epsilon 2 on D and on D plus
    one extreme unit, the mean intercepts differ by less than 6 pooled standard errors (a z-test; the
    false-failure probability for DP-indistinguishable inputs is below 1e-6 under normality)."""
    e0, e1 = engines
    d = _design(e0, "logistic")
    req = TrainRequest("s", "reg", "t", "logistic", ("x", "cat"), "flag", 2.0, 1e-6, 4)
    costs = mp.price_logistic(d, req.epsilon, req.delta, req.iterations, req.clip)  # priced once: same D, D'

    def fits(e: Engine) -> np.ndarray:
        out = []
        for _ in range(30):
            _, intercept, _ = regression.train_logistic(e, d, "reg__t", costs, req, req.iterations)
            out.append(intercept.value)
        return np.array(out)

    a, b = fits(e0), fits(e1)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) < 6 * se + 1e-9


@pytest.mark.statistical
def test_gaussian_noise_has_the_calibrated_scale() -> None:
    """2000 discrete Gaussian draws at scale 1000: sample sd within 10% of 1000 (false failure < 1e-6:
    the sd of a sample sd from 2000 normals is about 1.6%, so 10% is more than 6 standard errors)."""
    draws = np.array([model_sql.gaussian_release(1000.0, [0])[0] for _ in range(2000)], dtype=float)
    assert abs(draws.std() - 1000.0) < 100.0
    assert abs(draws.mean()) < 6 * 1000.0 / math.sqrt(2000)


# ------------------------------------------------------------------------------- boundary and refusals


def test_model_messages_round_trip() -> None:
    r = TrainRequest("a", "reg", "t", "logistic", ("x",), "flag", 1.0, 1e-6, 5, 0.5, 1.0, 0.1)
    assert decode_body(encode_frame(r)[4:]) == r
    e = EvaluateRequest("b", "reg", "t", "linear", (("x", 1.5),), 2.0, "y", 1.0, (), 10.0)
    assert decode_body(encode_frame(e)[4:]) == e


def test_sandbox_refuses_more_than_authorised_and_identifiers(engines: tuple[Engine, Engine]) -> None:
    e0, _ = engines
    r = models.train(e0, TrainRequest("a", "reg", "t", "linear", ("pid",), "y", 1.0))
    assert isinstance(r, ErrorReply) and r.kind == "rejected"
    # a logistic request that claims delta 0 cannot be priced
    r = models.train(e0, TrainRequest("b", "reg", "t", "logistic", ("x",), "flag", 1.0, 0.0, 3))
    assert isinstance(r, ErrorReply) and r.kind == "rejected"
    r = models.evaluate(e0, EvaluateRequest("c", "reg", "t", "linear", (("pid", 1.0),), 0.0, "y", 1.0))
    assert isinstance(r, ErrorReply) and r.kind == "rejected"


def test_auc_from_histogram() -> None:
    neg = np.array([5.0, 3.0, 0.0])
    pos = np.array([0.0, 1.0, 4.0])
    # pairs: pos bin1 vs neg bin0 (5 wins) and neg bin1 (3 ties); pos bin2 beats all 8 negs
    assert models.auc_from_histogram(pos, neg) == pytest.approx((1 * (5 + 1.5) + 4 * 8) / (5 * 8))
