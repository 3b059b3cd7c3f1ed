"""Benchmark of DP model training: accuracy of the DP fit against the non-private fit, over epsilon.

    python -m examples.bench_models [--people 1000000] [--reps 5]

Data: `examples.generate_data` with 1M people, cached in `.bench/data/1m`. The sandbox engine runs
in-process (the same code the sandbox process runs). References: the exact least squares / logistic fit
on the same bounded, scaled data (the DP algorithms' noiseless target), and scikit-learn's non-private fit
(in its own venv `.bench/venv-sklearn`, run in a subprocess; never a project dependency). Writes
BENCHMARKS-models.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from examples.generate_data import generate
from sandbox import model_pricing as mp
from sandbox import models
from sandbox.catalog import load_catalog
from sandbox.engine import Engine
from sandbox.limits import Limits
from sandbox.model_protocol import TrainRequest, TrainResult

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
SK_VENV = BENCH / "venv-sklearn"
warnings.filterwarnings("ignore", message="Arrow output on a DB-API result")
EPSILONS = (0.1, 0.3, 1.0, 3.0, 10.0)
LIN_FEATURES = ("birth_year", "employed", "region")
LOG_FEATURES = ("birth_year", "income", "sex")

SKLEARN_SCRIPT = r"""
import json, sys
import numpy as np, pyarrow.parquet as pq
from sklearn.linear_model import LinearRegression, LogisticRegression
t = pq.read_table(sys.argv[1])
kind = sys.argv[2]
names = [c for c in t.column_names if c != "label"]
X = np.column_stack([t.column(c).to_numpy().astype(float) for c in names])
y = t.column("label").to_numpy().astype(float)
if kind == "linear":
    m = LinearRegression().fit(X, y)
else:
    m = LogisticRegression(penalty=None, max_iter=1000).fit(X, y)
print(json.dumps({"coef": np.ravel(m.coef_).tolist(), "intercept": float(np.ravel(m.intercept_)[0])}))
"""


def _sklearn(engine: Engine, d: mp.Design, kind: str) -> dict[str, object] | None:
    """scikit-learn's fit on the same scaled design (subprocess in its own venv)."""
    py = SK_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SK_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "scikit-learn", "pyarrow", "numpy"], check=True)
    out = BENCH / f"design-{kind}.parquet"
    zs = ", ".join(f"{models.scaled_term_sql(t)} AS {models.quote_ident(t.name)}" for t in d.terms)
    label = models._scaled_label_sql(d.label) if kind == "linear" else models._label_sql(d.label)
    cur = engine._con.cursor()
    table = cur.execute(f"SELECT {zs}, {label} AS label FROM registry__residents "
                        f"WHERE {models.quote_ident(d.label.column)} IS NOT NULL").to_arrow_table()
    import pyarrow.parquet as pq

    pq.write_table(table, out)
    r = subprocess.run([str(py), "-c", SKLEARN_SCRIPT, str(out), kind], capture_output=True, text=True,
                       check=True)
    res: dict[str, object] = json.loads(r.stdout)
    return res


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _scaled_linear(r: TrainResult, d: mp.Design) -> np.ndarray:
    """Back from original units to the scaled space (w for v ~ w . (1, z))."""
    s_y, m_y = (d.label.upper - d.label.lower) / 2, (d.label.upper + d.label.lower) / 2
    w = [c.value / s_y / t.scale()[0] for c, t in zip(r.coefficients, d.terms, strict=True)]
    w0 = (r.intercept.value - m_y) / s_y - sum(wj * t.scale()[1] for wj, t in zip(w, d.terms, strict=True))
    return np.array([w0, *w])


def _scaled_logistic(r: TrainResult, d: mp.Design) -> np.ndarray:
    w = [c.value / t.scale()[0] for c, t in zip(r.coefficients, d.terms, strict=True)]
    w0 = r.intercept.value - sum(wj * t.scale()[1] for wj, t in zip(w, d.terms, strict=True))
    return np.array([w0, *w])


def main() -> int:
    """Run the benchmark and write BENCHMARKS-models.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--logistic-reps", type=int, default=2)
    args = ap.parse_args()
    data = BENCH / "data" / ("1m" if args.people == 1_000_000 else str(args.people))
    if not (data / "residents.parquet").exists():
        generate(data, args.people)
    engine = Engine(load_catalog(ROOT / "policies" / "catalog.toml", data_dir=data),
                    Limits(memory_limit="8GiB", query_timeout_ms=300_000, address_space_bytes=0))
    info = engine.describe().dataset("registry")
    assert info is not None
    lines = [f"# Model benchmarks ({args.people:,} people, `python -m examples.bench_models`)", ""]

    # -------- linear: income ~ birth_year + employed + region (one-hot)
    d = mp.design(info, "residents", LIN_FEATURES, "income", "linear")
    exact = np.array(models.exact_linear_statistics(engine, d, "registry__residents"), dtype=float) / mp.Q**2
    w_exact, n_exact, rmse_exact, r2_exact = models.solve_linear(exact, d, 0.0, 0.0)
    sk = _sklearn(engine, d, "linear")
    w_sk = np.array([sk["intercept"], *sk["coef"]]) if sk else None  # type: ignore[misc]
    s_y = (d.label.upper - d.label.lower) / 2
    lines += ["## Linear regression: income ~ birth_year + employed + region (one-hot, 30 indicators)", "",
              f"Noiseless fit on the bounded data: RMSE {rmse_exact * s_y:,.0f} yuan, R² {r2_exact:.4f}, "
              f"n {n_exact:,.0f}."]
    if w_sk is not None:
        lines.append(f"scikit-learn LinearRegression vs our noiseless solve: relative L2 gap "
                     f"{_rel(w_exact, w_sk):.2e} (same data, same scaling).")
    lines += ["", "Coefficients compared in the scaled space (features and label scaled to [-1, 1] by the "
              "catalog bounds), including the intercept; median over repetitions.", "",
              "| ε | coef. rel. L2 gap (median) | max | RMSE rel. gap | R² abs. gap | time/fit |",
              "|---|---|---|---|---|---|"]
    within: float | None = None
    for eps in EPSILONS:
        gaps, rm, r2g, t0 = [], [], [], time.perf_counter()
        for i in range(args.reps):
            r = models.train(engine, TrainRequest(f"b{i}", "registry", "residents", "linear", LIN_FEATURES,
                                                  "income", eps))
            assert isinstance(r, TrainResult)
            gaps.append(_rel(_scaled_linear(r, d), w_exact))
            m = {e.name: e.value for e in r.metrics}
            rm.append(abs(m["rmse"] - rmse_exact * s_y) / (rmse_exact * s_y))
            r2g.append(abs(m["r2"] - r2_exact))
        dt = (time.perf_counter() - t0) / args.reps
        med = float(np.median(gaps))
        if within is None and max(gaps) <= 0.05:
            within = eps
        lines.append(f"| {eps:g} | {med:.4f} | {max(gaps):.4f} | {np.median(rm):.4f} | {np.median(r2g):.4f} "
                     f"| {dt:.2f} s |")
        print(f"linear eps={eps}: gap {med:.4f} (max {max(gaps):.4f})", flush=True)
    lines += ["", f"Smallest ε in the grid with every repetition within 5% of the non-private coefficients: "
              f"**{within if within is not None else 'none'}**.", ""]

    # -------- logistic: employed ~ birth_year + income + sex
    d = mp.design(info, "residents", LOG_FEATURES, "employed", "logistic")
    sk = _sklearn(engine, d, "logistic")
    w_ref = np.array([sk["intercept"], *sk["coef"]]) if sk else None  # type: ignore[misc]
    lines += ["## Logistic regression: employed ~ birth_year + income + sex (δ = 1e-6, T = 30 steps)", "",
              "Gap to scikit-learn's unpenalised LogisticRegression on the same scaled design (the optimum), "
              "and to our noiseless gradient descent with the same T (the DP algorithm's own target).", "",
              "| ε | rel. L2 gap to sklearn | rel. L2 gap to noiseless GD | time/fit |", "|---|---|---|---|"]
    theta = np.zeros(d.p)
    n_true = engine._con.execute("SELECT count(*) FROM registry__residents").fetchone()[0]  # type: ignore[index]
    for _ in range(30):
        g = np.array(models.exact_gradient(engine, d, "registry__residents", theta.tolist(),
                                           mp.clip_bound(d, 0.0)), dtype=float)
        theta = theta - (4.0 / d.groups) * g / (mp.Q * n_true)
    for eps in (0.3, 1.0, 3.0):
        g_sk, g_gd, t0 = [], [], time.perf_counter()
        for i in range(args.logistic_reps):
            r = models.train(engine, TrainRequest(f"l{i}", "registry", "residents", "logistic", LOG_FEATURES,
                                                  "employed", eps, 1e-6, 30))
            assert isinstance(r, TrainResult)
            w = _scaled_logistic(r, d)
            g_gd.append(_rel(w, theta))
            if w_ref is not None:
                g_sk.append(_rel(w, w_ref))
        dt = (time.perf_counter() - t0) / args.logistic_reps
        lines.append(f"| {eps:g} | {np.median(g_sk) if g_sk else math.nan:.4f} | {np.median(g_gd):.4f} "
                     f"| {dt:.1f} s |")
        print(f"logistic eps={eps}: sklearn gap {np.median(g_sk) if g_sk else math.nan:.4f}, "
              f"GD gap {np.median(g_gd):.4f}", flush=True)
    if w_ref is not None:
        lines += ["", f"Noiseless GD (T = 30) vs sklearn optimum: relative L2 gap {_rel(theta, w_ref):.4f} "
                  "(the optimisation error of 30 plain gradient steps, independent of privacy)."]
    (ROOT / "BENCHMARKS-models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
