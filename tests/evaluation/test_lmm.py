"""The paper's linear mixed model (evaluation/lmm.py) against independent computations:
least squares with seed fixed effects on a balanced design, scipy's paired and two-sample
t-tests with one observation per run, the coverage of its CI on data simulated from the
model, and an explicit "not estimable" on degenerate inputs."""
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from evaluation.lmm import lmm_test
from evaluation.significance import SignificanceSettings, compare


def simulate(n_seeds=4, epochs=(7, 15, 23), effect=0.5, sd_seed=2.0, sd=0.3, seed=0, algs=("x", "pcpo-x")):
    """value = seed intercept + epoch effect + effect * [pcpo-x] + noise, every seed x epoch x algorithm."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, sd_seed, n_seeds)
    rows = []
    for s in range(n_seeds):
        for k, e in enumerate(epochs):
            for j, alg in enumerate(algs):
                rows.append({"algorithm": alg, "seed": s, "epoch": e,
                             "value": 10 + u[s] + 0.4 * k + effect * j + rng.normal(0, sd)})
    return pd.DataFrame(rows)


def test_balanced_design_equals_least_squares_with_seed_fixed_effects():
    d = simulate()
    r = lmm_test(d, "x", "pcpo-x", paired=True)
    ols = smf.ols("value ~ C(algorithm, Treatment('x')) + C(epoch) + C(seed)", d).fit()
    name = "C(algorithm, Treatment('x'))[T.pcpo-x]"
    # within-seed contrast of a balanced design: GLS = the within estimator, same residual variance
    assert r["lmm_diff"] == pytest.approx(ols.params[name], rel=1e-6)
    se_lmm = (r["lmm_ci_high"] - r["lmm_ci_low"]) / (2 * stats.t.ppf(0.975, r["lmm_df"]))
    assert se_lmm == pytest.approx(ols.bse[name], rel=1e-3)
    assert r["lmm_df"] == ols.df_resid == 4 * 3 * 2 - 4 - 3
    assert r["lmm_p"] == pytest.approx(ols.pvalues[name], rel=1e-3)
    assert r["lmm_n_obs"] == 24 and "C(epoch)" in r["lmm_note"] and "per seed" in r["lmm_note"]


def test_one_observation_per_run_is_the_paired_t_test():
    rng = np.random.default_rng(4)
    a = rng.normal(5, 2, 5)
    b = a + rng.normal(0.8, 0.5, 5)
    d = pd.DataFrame({"algorithm": ["a"] * 5 + ["b"] * 5, "seed": list(range(5)) * 2, "epoch": math.nan,
                      "value": np.concatenate([a, b])})
    r = lmm_test(d, "a", "b", paired=True)
    t = stats.ttest_rel(b, a)
    assert r["lmm_diff"] == pytest.approx((b - a).mean(), rel=1e-6)
    assert r["lmm_p"] == pytest.approx(t.pvalue, rel=1e-3) and r["lmm_df"] == 4
    ci = t.confidence_interval(0.95)
    assert (r["lmm_ci_low"], r["lmm_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-3)


def test_unpaired_runs_with_one_observation_are_the_two_sample_t_test():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 4), rng.normal(1.5, 1, 6)
    d = pd.DataFrame({"algorithm": ["a"] * 4 + ["b"] * 6, "seed": list(range(4)) + list(range(10, 16)),
                      "epoch": math.nan, "value": np.concatenate([a, b])})
    r = lmm_test(d, "a", "b", paired=False)
    t = stats.ttest_ind(b, a)
    assert r["lmm_p"] == pytest.approx(t.pvalue, rel=1e-6) and r["lmm_df"] == 8
    assert "least squares" in r["lmm_note"]


def test_ci_covers_the_known_effect_at_its_level():
    """Data drawn from the model itself: the 95% CI covers the true effect ~95% of the time,
    and the test rejects a zero effect at ~5%.  Bounds: 3.5 binomial standard errors."""
    sims, hits, rejects = 150, 0, 0
    for i in range(sims):
        d = simulate(n_seeds=4, epochs=(3, 7), effect=0.3, sd_seed=1.0, sd=0.5, seed=100 + i)
        r = lmm_test(d, "x", "pcpo-x", paired=True)
        hits += r["lmm_ci_low"] <= 0.3 <= r["lmm_ci_high"]
        d0 = simulate(n_seeds=4, epochs=(3, 7), effect=0.0, sd_seed=1.0, sd=0.5, seed=900 + i)
        rejects += lmm_test(d0, "x", "pcpo-x", paired=True)["lmm_p"] <= 0.05
    se = math.sqrt(0.05 * 0.95 / sims)
    assert abs(hits / sims - 0.95) <= 3.5 * se, hits / sims
    assert abs(rejects / sims - 0.05) <= 3.5 * se, rejects / sims


@pytest.mark.parametrize("case,reason", [
    ("one_seed", "1 paired seed"),
    ("exact", "no residual variation"),
    ("confounded", "confounded with the epochs"),
    ("missing_arm", "no observations"),
])
def test_degenerate_inputs_are_not_estimable_with_a_reason(case, reason):
    d = simulate(n_seeds=3, epochs=(7, 15))
    if case == "one_seed":
        d = d[d["seed"] == 0]
    elif case == "exact":  # a constant shift per seed, nothing else: every observation fits exactly
        d = d.assign(value=d["seed"] * 1.0 + 0.5 * (d["algorithm"] == "pcpo-x"))
    elif case == "confounded":  # x evaluated at epoch 7 only, pcpo-x at 15 only
        d = d[((d["algorithm"] == "x") & (d["epoch"] == 7)) | ((d["algorithm"] == "pcpo-x") & (d["epoch"] == 15))]
    else:
        d = d[d["algorithm"] == "x"]
    r = lmm_test(d, "x", "pcpo-x", paired=True)
    assert r["lmm_note"].startswith("not estimable: ") and reason in r["lmm_note"], r["lmm_note"]
    assert math.isnan(r["lmm_p"]) and math.isnan(r["lmm_diff"])


def test_auto_lets_the_lmm_decide_only_where_the_permutation_test_cannot_reach_alpha():
    rng = np.random.default_rng(1)

    def arms(n):
        a = pd.Series(rng.normal(0, 1, n))
        return a, a + 1.0 + rng.normal(0, 0.1, n)

    a, b = arms(3)
    r = compare(a, b, SignificanceSettings())
    assert r["smallest_p"] == 0.25 and r["decided_by"].startswith("LMM")
    assert r["significant"] and r["lmm_p"] < 0.05 and r["outcome"] == "better"
    only_perm = compare(a, b, SignificanceSettings(test="permutation"))
    assert not only_perm["significant"] and only_perm["outcome"] == "not distinguishable"
    assert not compare(a, b, SignificanceSettings(test="both"))["significant"]
    a, b = arms(8)
    r = compare(a, b, SignificanceSettings())
    assert r["decided_by"] == "permutation" and r["significant"]
    # lower is better: a positive difference in FID is worse
    assert compare(a, b, SignificanceSettings(), metric="fid")["outcome"] == "worse"
    # the LMM cannot be fitted (exact differences): auto says so and the permutation test answers
    a = pd.Series([0.0, 0.1, 0.2])
    r = compare(a, a + 1.0, SignificanceSettings())
    assert r["decided_by"].startswith("permutation (LMM not estimable: no residual variation")
    assert not r["significant"]
