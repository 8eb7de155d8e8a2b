"""The report's statistical tests (evaluation/significance.py) on synthetic data with a
known effect: exact p-values by hand, the verdict flipping as the effect crosses the
detectable size, the power calculation against a simulated t-test, censored runs,
determinism and config errors."""
import itertools
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from evaluation.significance import (
    COLUMNS, SignificanceSettings, bootstrap_diff_ci, compare, effect_size, min_seeds_for_permutation,
    permutation_test, seeds_for_power, significance_settings, significance_table, t_test_power, verdict,
)
from pcpo.config import ConfigError
from tests.helpers import ROOT

S = SignificanceSettings()


# ------------------------------------------------------------------ synthetic tables

def curves_frame(runs: dict, model="m", reward="r") -> pd.DataFrame:
    """``{algorithm: {seed: [reward per epoch]}}`` -> a training table."""
    rows = [{"epoch": e, "reward_mean": float(v), "clipfrac": 0.1, "model": model, "reward": reward,
             "algorithm": alg, "seed": seed}
            for alg, seeds in runs.items() for seed, rs in seeds.items() for e, v in enumerate(rs)]
    return pd.DataFrame(rows)


def config(targets=None, significance=None, algorithms=("x", "pcpo-x")) -> dict:
    block = {"model": "m", "algorithms": list(algorithms), "rewards": ["r"], "seeds": [0]}
    cfg = {"experiment": "t", "matrix": [block], "evaluation": {"targets": targets or {}}}
    if significance is not None:
        cfg["report"] = {"significance": significance}
    return cfg


def ramp(reach: int | None, epochs: int = 10) -> list[float]:
    """A training curve that first reaches 1.0 at 0-based epoch ``reach`` (never if None)."""
    return [1.0 if reach is not None and e >= reach else 0.1 * e / epochs for e in range(epochs)]


def row_of(df, metric, checkpoints=False):
    """The row of ``metric``; for a quality metric, the one at a matched level (``checkpoints``:
    the one over the evaluated checkpoints)."""
    sub = df[df["metric"] == metric]
    if metric not in ("final_reward", "epochs_to_target"):
        sub = sub[sub["level"].isna() == checkpoints]
    assert len(sub) == 1, df[["metric", "a", "b"]]
    return sub.iloc[0]


# ------------------------------------------------------------------ the permutation test

def test_exact_p_values_by_hand():
    # paired: differences 1, 2, 3; of the 8 sign patterns only +++ and --- are as extreme
    p, how = permutation_test([0, 0, 0], [1, 2, 3], paired=True)
    assert p == pytest.approx(2 / 8) and "exact, 8 sign patterns" in how
    # unpaired: {1, 2} against {3, 4}; of the 6 splits only the observed and its mirror reach |diff| = 2
    p, how = permutation_test([1, 2], [3, 4], paired=False)
    assert p == pytest.approx(2 / 6) and "exact, 6 splits" in how
    # no difference at all: every pattern is as extreme
    assert permutation_test([1, 2, 3], [1, 2, 3], paired=True)[0] == 1.0
    assert permutation_test([5.0, 5.0], [5.0, 5.0], paired=False)[0] == 1.0


def _exact_paired(d):
    d = np.asarray(d, float)
    stat = np.array([np.mean(np.array(s) * d) for s in itertools.product([-1, 1], repeat=len(d))])
    return np.mean(np.abs(stat) >= abs(d.mean()) - 1e-12)


def _exact_unpaired(a, b):
    x = np.concatenate([a, b])
    obs = abs(np.mean(b) - np.mean(a))
    hits = total = 0
    for idx in itertools.combinations(range(len(x)), len(b)):
        mask = np.zeros(len(x), bool)
        mask[list(idx)] = True
        hits += abs(x[mask].mean() - x[~mask].mean()) >= obs - 1e-12
        total += 1
    return hits / total


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_scipy_exact_sign_flip_equals_brute_force_enumeration(n):
    rng = np.random.default_rng(n)
    d = rng.normal(0.3, 1.0, n)
    p, how = permutation_test(np.zeros(n), d, paired=True)
    assert f"exact, {2 ** n} sign patterns" in how
    assert p == pytest.approx(_exact_paired(d), abs=1e-12)


@pytest.mark.parametrize("na,nb", [(1, 2), (2, 2), (3, 3), (2, 5), (4, 6), (6, 6)])
def test_scipy_exact_two_sample_equals_brute_force_enumeration(na, nb):
    rng = np.random.default_rng(10 * na + nb)
    a, b = rng.normal(0, 1, na), rng.normal(0.7, 1, nb)
    p, how = permutation_test(a, b, paired=False)
    assert f"exact, {math.comb(na + nb, nb)} splits" in how
    # |mean difference| counted both ways, so an unequal split's skewed null is not doubled
    assert p == pytest.approx(_exact_unpaired(a, b), abs=1e-12)


def test_monte_carlo_p_values_approach_the_exact_ones_and_are_reproducible():
    rng = np.random.default_rng(3)
    d = rng.normal(0.5, 1.0, 13)  # 8192 sign patterns: past the exact limit
    p, how = permutation_test(np.zeros(13), d, paired=True, n_permutations=20000, seed=1)
    assert "Monte Carlo" in how
    assert p == pytest.approx(_exact_paired(d), abs=0.015)
    assert permutation_test(np.zeros(13), d, paired=True, n_permutations=20000, seed=1)[0] == p
    a, b = rng.normal(0, 1, 8), rng.normal(1, 1, 8)  # 12870 splits
    p, how = permutation_test(a, b, paired=False, n_permutations=20000, seed=1)
    assert "Monte Carlo" in how
    assert p == pytest.approx(_exact_unpaired(a, b), abs=0.015)


def test_smallest_attainable_p_sets_a_floor_on_the_seeds():
    assert min_seeds_for_permutation(0.05, paired=True) == 6  # 2 / 2**6 = 0.031; 2 / 2**5 = 0.0625
    assert min_seeds_for_permutation(0.05, paired=False) == 4  # 2 / C(8, 4) = 0.029; 2 / C(6, 3) = 0.1
    # a perfectly consistent effect with 3 paired seeds still cannot be significant
    r = compare(pd.Series([0.0, 0.1, 0.2]), pd.Series([1.0, 1.1, 1.2]), S)
    assert r["p_value"] == pytest.approx(0.25) and not r["significant"]
    assert r["seeds_for_power"] == 6


def test_bootstrap_ci_matches_a_plain_resampling_and_needs_two_seeds():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 6), rng.normal(0.5, 1, 6)
    lo, hi = bootstrap_diff_ci(a, b, paired=True, n_boot=20000)
    d = b - a
    boot = d[np.random.default_rng(9).integers(0, 6, (20000, 6))].mean(axis=1)
    # the two resamplings differ only by Monte Carlo error: a few bootstrap standard errors of a quantile
    tol = 4 * boot.std() * math.sqrt(0.025 * 0.975 / 20000) / stats.norm.pdf(stats.norm.ppf(0.025))
    assert lo == pytest.approx(np.quantile(boot, 0.025), abs=tol)
    assert hi == pytest.approx(np.quantile(boot, 0.975), abs=tol)
    assert all(math.isnan(x) for x in bootstrap_diff_ci([1.0], [2.0], paired=True))
    assert all(math.isnan(x) for x in bootstrap_diff_ci([1.0], [2.0, 3.0], paired=False))


def test_bootstrap_ci_keeps_the_pairing():
    a = np.array([0.0, 10.0, 20.0, 30.0])
    b = a + np.array([1.0, 1.1, 0.9, 1.0])  # large spread across seeds, tiny within a seed
    lo, hi = bootstrap_diff_ci(a, b, paired=True)
    assert 0.9 <= lo <= 1.0 <= hi <= 1.1
    lo_u, hi_u = bootstrap_diff_ci(a, b, paired=False)
    assert hi_u - lo_u > 10 * (hi - lo)  # unpaired resampling sees the between-seed spread
    assert bootstrap_diff_ci(a, b, paired=True) == (lo, hi)  # deterministic


# ------------------------------------------------------------------ the verdict flips at the detectable size

@pytest.mark.parametrize("paired", [True, False])
def test_verdict_flips_as_the_effect_crosses_the_detectable_size(paired):
    n, alpha = 10, 0.05
    rng = np.random.default_rng(0)
    e1, e2 = rng.normal(size=n), rng.normal(size=n)
    base = np.linspace(0.2, 0.4, n)  # seed-to-seed differences that pairing removes
    if paired:  # fixed noise of the differences: mean 0, sd 1
        noise_b, noise_a = (e1 - e1.mean()) / e1.std(ddof=1), np.zeros(n)
    else:  # each arm: mean 0, sd 1, so the pooled sd is 1
        noise_a, noise_b = (e1 - e1.mean()) / e1.std(ddof=1), (e2 - e2.mean()) / e2.std(ddof=1)
        base = np.zeros(n)
    settings = SignificanceSettings(alpha=alpha, paired="auto" if paired else False)
    grid = np.round(np.arange(0.0, 2.01, 0.05), 2)
    out = []
    for delta in grid:
        a = pd.Series(base + noise_a, index=range(n))
        b = pd.Series(base + delta + noise_b, index=range(n))
        r = compare(a, b, settings)
        r.update(model="m", reward="r", metric="final_reward", level=math.nan, a="x", b="pcpo-x",
                 statistic="mean", censored_a=0, censored_b=0)
        line = verdict(r, settings)
        assert ("not significant" in line) != r["significant"]
        assert r["effect_size"] == pytest.approx(delta)  # the known effect, in sd units
        out.append(r)
    sig = np.array([r["significant"] for r in out])
    assert not sig[0] and sig[-1]
    flip = int(np.argmax(sig))
    assert sig[flip:].all() and not sig[:flip].any(), "significance is not monotone in the effect"
    # the flip sits where the t-test's critical effect is (the permutation test's large-sample twin)
    df = n - 1 if paired else 2 * n - 2
    d_crit = stats.t.ppf(1 - alpha / 2, df) * (1 / math.sqrt(n) if paired else math.sqrt(2 / n))
    assert 0.75 * d_crit <= grid[flip] <= 1.25 * d_crit, (grid[flip], d_crit)
    # and the power calculation agrees: effects well below the detectable size need more seeds
    # than were run, effects at or above the size 10 seeds detect with 80% power need at most 10
    mde = min(d for d in np.arange(0.05, 3, 0.01) if t_test_power(d, n, alpha, paired) >= 0.8)
    for delta, r in zip(grid, out):
        if 0 < delta <= 0.6 * d_crit:
            assert r["seeds_for_power"] > n and "seeds" in verdict(r | {"verdict": ""}, settings)
        if delta >= mde:
            assert r["seeds_for_power"] <= n and r["significant"]
    assert "no observed effect" in verdict(out[0], settings)  # delta = 0


# ------------------------------------------------------------------ power

@pytest.mark.parametrize("d,n,paired", [(0.8, 10, True), (0.5, 20, False), (1.2, 6, True), (1.0, 8, False)])
def test_power_agrees_with_a_simulated_t_test(d, n, paired):
    alpha, sims = 0.05, 40000
    rng = np.random.default_rng(7)
    if paired:
        p = stats.ttest_1samp(rng.normal(d, 1.0, (sims, n)), 0.0, axis=1).pvalue
    else:
        p = stats.ttest_ind(rng.normal(d, 1.0, (sims, n)), rng.normal(0.0, 1.0, (sims, n)), axis=1).pvalue
    simulated = float(np.mean(p < alpha))
    assert t_test_power(d, n, alpha, paired) == pytest.approx(simulated, abs=0.01)


def test_seeds_for_power_textbook_values_and_edges():
    # G*Power / Cohen: d = 0.5 at alpha 0.05, 80% power: 34 pairs, 64 per group
    assert seeds_for_power(0.5, 0.05, 0.8, paired=True) == 34
    assert seeds_for_power(0.5, 0.05, 0.8, paired=False) == 64
    n = seeds_for_power(0.7, 0.05, 0.9, paired=True)
    assert t_test_power(0.7, n, 0.05, True) >= 0.9 > t_test_power(0.7, n - 1, 0.05, True)
    assert seeds_for_power(-0.5, 0.05, 0.8, paired=True) == 34  # the sign does not matter
    assert seeds_for_power(0.0) == math.inf
    assert seeds_for_power(0.01, max_seeds=1000) == math.inf  # needs ~78000
    assert math.isnan(seeds_for_power(math.nan))
    assert effect_size([1.0, 2.0], [2.0, 3.0], paired=True) == math.inf  # a constant shift
    assert seeds_for_power(math.inf, paired=True) == 6  # only the permutation floor remains
    assert math.isnan(effect_size([1.0], [2.0], paired=True))


# ------------------------------------------------------------------ censoring

def test_a_run_that_never_reaches_the_target_is_counted_censored_and_makes_its_arm_worse():
    runs = {"x": {0: ramp(3), 1: ramp(4), 2: ramp(3)},
            "pcpo-x": {0: ramp(3), 1: ramp(4), 2: ramp(None)}}
    df = significance_table(curves_frame(runs), pd.DataFrame(), config(targets={"r": 0.9}))
    r = row_of(df, "epochs_to_target")
    assert (r["n_a"], r["n_b"], r["censored_a"], r["censored_b"]) == (3, 3, 0, 1)  # not dropped
    assert r["mean_a"] == pytest.approx((4 + 5 + 4) / 3)
    assert r["mean_b"] == pytest.approx((4 + 5 + 11) / 3)  # censored at the 10-epoch horizon: 11
    assert r["diff"] > 0 and "more epochs" in r["verdict"] and "pcpo-x 1/3" in r["verdict"]
    assert "restricted mean (censored at horizon 10" in r["statistic"]
    assert "paired" in r["test"]


def test_censoring_uses_the_common_horizon():
    # pcpo-x seed 1 trained 6 epochs only: x's seed 1 reached at epoch 8 counts as censored at 6
    runs = {"x": {0: ramp(2), 1: ramp(7)}, "pcpo-x": {0: ramp(2), 1: ramp(None, epochs=6)}}
    r = row_of(significance_table(curves_frame(runs), pd.DataFrame(), config(targets={"r": 0.9})), "epochs_to_target")
    assert "horizon 6 epochs" in r["statistic"]
    assert (r["censored_a"], r["censored_b"]) == (1, 1)
    assert r["mean_a"] == r["mean_b"] == pytest.approx((3 + 7) / 2)


def test_every_arm_censored_is_no_difference():
    runs = {"x": {s: ramp(None) for s in range(3)}, "pcpo-x": {s: ramp(None) for s in range(3)}}
    r = row_of(significance_table(curves_frame(runs), pd.DataFrame(), config(targets={"r": 0.9})), "epochs_to_target")
    assert (r["censored_a"], r["censored_b"], r["diff"], r["p_value"]) == (3, 3, 0.0, 1.0)
    assert "same number of epochs" in r["verdict"]


# ------------------------------------------------------------------ the table

def _noisy_runs(n_seeds: int, effect: float, seeds_b=None):
    rng = np.random.default_rng(11)
    runs = {"x": {}, "pcpo-x": {}, "y": {}}
    for s in range(n_seeds):
        runs["x"][s] = list(0.3 + 0.01 * rng.normal(size=8))
        runs["y"][s] = list(0.3 + 0.01 * rng.normal(size=8))
    for s in (seeds_b if seeds_b is not None else range(n_seeds)):
        runs["pcpo-x"][s] = list(0.3 + effect + 0.01 * rng.normal(size=8))
    return runs


def test_pairs_are_x_against_pcpo_x_plus_the_configured_ones():
    curves = curves_frame(_noisy_runs(4, 0.02))
    df = significance_table(curves, pd.DataFrame(), config(algorithms=("x", "pcpo-x", "y")))
    assert set(zip(df["a"], df["b"])) == {("x", "pcpo-x")}
    df = significance_table(curves, pd.DataFrame(),
                            config(significance={"pairs": [["y", "pcpo-x"]]}, algorithms=("x", "pcpo-x", "y")))
    assert set(zip(df["a"], df["b"])) == {("x", "pcpo-x"), ("y", "pcpo-x")}
    assert list(df.columns) == COLUMNS


def test_pairing_follows_the_config():
    curves = curves_frame(_noisy_runs(4, 0.02))
    auto = row_of(significance_table(curves, pd.DataFrame(), config()), "final_reward")
    unpaired = row_of(significance_table(curves, pd.DataFrame(), config(significance={"paired": False})),
                      "final_reward")
    assert auto["test"].startswith("paired") and unpaired["test"].startswith("two-sample")
    assert auto["diff"] == pytest.approx(unpaired["diff"])
    # different seed sets: auto falls back to the two-sample test; paired: true pairs the common seeds
    curves = curves_frame(_noisy_runs(4, 0.02, seeds_b=[1, 2, 3, 4, 5]))
    auto = row_of(significance_table(curves, pd.DataFrame(), config()), "final_reward")
    forced = row_of(significance_table(curves, pd.DataFrame(), config(significance={"paired": True})), "final_reward")
    assert auto["test"].startswith("two-sample") and (auto["n_a"], auto["n_b"]) == (4, 5)
    assert forced["test"].startswith("paired") and (forced["n_a"], forced["n_b"]) == (3, 3)


def test_the_final_reward_verdict_flips_with_the_effect_in_the_table():
    curves_small = curves_frame(_noisy_runs(8, 0.0005))
    curves_large = curves_frame(_noisy_runs(8, 0.05))
    small = row_of(significance_table(curves_small, pd.DataFrame(), config()), "final_reward")
    large = row_of(significance_table(curves_large, pd.DataFrame(), config()), "final_reward")
    assert not small["significant"] and "not significant at alpha=0.05" in small["verdict"]
    assert small["seeds_for_power"] > 8 and "seeds needed for 80% power" in small["verdict"]
    assert large["significant"] and "): significant at alpha=0.05, better (decided by permutation)" in large["verdict"]
    assert "higher final training reward than x (better)" in large["verdict"]
    assert large["ci_low"] > 0


def test_matched_reward_metrics_drop_runs_that_never_reach_the_level():
    rows = []
    for alg, fid in (("x", 100.0), ("pcpo-x", 90.0)):
        for s in range(3):
            top = 0.2 if (alg == "pcpo-x" and s == 2) else 0.6  # one run never reaches 0.5
            for e, rew in enumerate([0.1, top]):
                rows.append({"model": "m", "reward": "r", "algorithm": alg, "seed": s, "epoch": e,
                             "eval_reward": rew, "fid": fid + s, "kid": 0.01, "diversity": 0.4})
    points = pd.DataFrame(rows)
    cfg = config()
    cfg["evaluation"]["matched_rewards"] = {"r": [0.5]}
    df = significance_table(pd.DataFrame(), points, cfg)
    r = row_of(df, "fid")
    assert r["level"] == 0.5 and (r["n_a"], r["n_b"]) == (3, 2) and r["test"].startswith("two-sample")
    assert r["diff"] == pytest.approx(90.5 - 101.0)
    assert "lower FID than x at matched reward 0.5 (better)" in r["verdict"]
    assert set(df["metric"]) == {"fid", "kid", "diversity"}


def test_deterministic():
    curves = curves_frame(_noisy_runs(13, 0.01))  # 13 seeds: Monte Carlo sign patterns
    cfg = config(targets={"r": 0.305})
    one = significance_table(curves, pd.DataFrame(), cfg)
    two = significance_table(curves, pd.DataFrame(), cfg)
    assert "Monte Carlo" in row_of(one, "final_reward")["test"]
    pd.testing.assert_frame_equal(one, two)


def test_empty_tables_give_an_empty_table():
    df = significance_table(pd.DataFrame(), pd.DataFrame(), config())
    assert df.empty and list(df.columns) == COLUMNS


# ------------------------------------------------------------------ config errors

@pytest.mark.parametrize("block,field", [
    ({"alpha": 1.5}, "report.significance.alpha"),
    ({"alpha": 0}, "report.significance.alpha"),
    ({"power": "high"}, "report.significance.power"),
    ({"paired": "yes"}, "report.significance.paired"),
    ({"paired": 1}, "report.significance.paired"),
    ({"pairs": [["x"]]}, "report.significance.pairs[0]"),
    ({"pairs": [["x", "x"]]}, "report.significance.pairs[0]"),
    ({"n_bootstrap": 0}, "report.significance.n_bootstrap"),
    ({"alhpa": 0.1}, "report.significance.alhpa"),
    ({"test": "anova"}, "report.significance.test"),
])
def test_bad_config_names_the_field(block, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        significance_settings(config(significance=block))


def test_unknown_pair_name_names_the_field_and_the_algorithm():
    curves = curves_frame(_noisy_runs(3, 0.0))
    with pytest.raises(ConfigError, match=r"report\.significance\.pairs\[0\]\[1\].*'ddpoo'"):
        significance_table(curves, pd.DataFrame(), config(significance={"pairs": [["x", "ddpoo"]]}))


def test_settings_defaults_and_values():
    assert significance_settings({}) == SignificanceSettings()
    s = significance_settings(config(significance={"alpha": 0.1, "power": 0.9, "paired": False,
                                                   "pairs": [["x", "y"]], "seed": 3}))
    assert (s.alpha, s.power, s.paired, s.pairs, s.seed, s.level) == (0.1, 0.9, False, (("x", "y"),), 3, 0.9)


# ------------------------------------------------------------------ the report

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from evaluation.report import build_report

    res = tmp_path_factory.mktemp("sigreport")
    shutil.copytree(ROOT / "results/reference/tiny/tables", res / "tables")
    cfg = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    return build_report(res, cfg).parent


def test_report_writes_the_tests_in_every_format(report):
    sig = pd.read_csv(report / "significance.csv")
    assert set(zip(sig["a"], sig["b"])) == {("ddpo", "pcpo-ddpo"), ("dancegrpo", "pcpo-dancegrpo")}
    assert {"epochs_to_target", "final_reward", "fid", "kid", "diversity_inception", "coverage"} == set(sig["metric"])
    assert (sig["n_a"] == 3).all() and sig["test"].str.contains("exact, 8 sign patterns").all()
    md, tex, page = ((report / f"significance.{e}").read_text() for e in ("md", "tex", "html"))
    index = (report / "index.md").read_text()
    tips = [t for _, rows in _page_tables(page) for _, t, _ in rows]
    for v in sig["verdict"]:
        assert v in md and v in index
        assert any(t.startswith(v) for t in tips)
        assert "smallest attainable" not in v  # said once, in the headline
    assert "\\begin{itemize}" in tex and "\\begin{tabular}" in tex and "$\\sim$" in tex
    assert "## Statistical tests" in index
    # both tests' numbers are there, and which one answered
    assert sig["lmm_p"].notna().sum() >= len(sig) - 2 and sig["decided_by"].notna().all()
    assert (sig["p_value"] >= 0.25).all()  # 3 paired seeds: the permutation floor
    # ... yet the default experiment reaches verdicts: auto lets the mixed model answer there
    reached = sig[sig["outcome"].isin(["better", "worse"])]
    assert len(reached) and reached["decided_by"].str.startswith("LMM").all() and (reached["lmm_p"] <= 0.05).all()
    # the other tables are untouched
    for name in ("final_reward", "epochs_to_target", "matched_reward"):
        assert (report / f"{name}.csv").is_file()


# ------------------------------------------------------------------ the headline and the compact page

def _page_tables(page: str):
    """``[(header cells, [(row classes, row title, cells)])]`` of every table of an HTML page."""
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "table":
                self.tables.append(([], []))
            elif tag == "tr" and self.tables:
                self.row = (a.get("class", "").split(), a.get("title", ""), [])
            elif tag in ("th", "td"):
                self.cell = ""

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag == "th":
                self.tables[-1][0].append(self.cell)
                self.cell = None
            elif tag == "td":
                self.row[2].append(self.cell)
                self.cell = None
            elif tag == "tr" and self.tables and self.row[2]:
                self.tables[-1][1].append(self.row)

    p = P()
    p.feed(page)
    return p.tables


def test_significance_page_is_compact_grouped_and_offline(report):
    from evaluation.headline import PAGE_COLUMNS

    page = (report / "significance.html").read_text()
    sig = pd.read_csv(report / "significance.csv")
    tables = _page_tables(page)
    assert len(tables) == sig.groupby(["model", "reward", "a", "b"]).ngroups  # one per pair
    assert sum(len(rows) for _, rows in tables) == len(sig)
    for head, rows in tables:
        assert len(head) == len(PAGE_COLUMNS) <= 12
        for classes, title, cells in rows:
            assert len(cells) == len(head)
            verdict_class = {"better", "worse", "not-distinguishable", "no-data"} & set(classes)
            assert len(verdict_class) == 1  # every row carries its verdict's colour
            assert cells[PAGE_COLUMNS.index("verdict")].replace(" ", "-") == verdict_class.pop()
            assert title  # the long text lives in the tooltip
        metrics = [c[2][0] for c in rows]
        assert metrics == sorted(metrics, key=metrics.index)  # grouped: a metric's rows are adjacent
    assert "<script>" in page and "sortable" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched: the tests run offline
    assert page.count("pilot: 3 paired seeds cannot reach p &lt; 0.05") == 1
    assert "<details" in page and "data:image/png;base64," in page


def test_index_opens_with_the_headline(report):
    index = (report / "index.md").read_text()
    sections = [line for line in index.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline"
    head = index.split("\n## ", 2)[1]
    assert head.count("pilot: 3 paired seeds cannot reach p < 0.05 with the permutation test") == 1
    assert "6 needed" in head and "![Forest plot of every effect](headline_forest.png)" in head
    assert "### eps / digit_boldness: pcpo-ddpo against ddpo" in head
    assert "| metric | at | pcpo-ddpo − ddpo | 95% CI | p | verdict | seeds for 80% power |" in head
    assert index.count("pilot:") == 1  # not repeated per bullet
    forest = report / "headline_forest.png"
    assert forest.is_file() and forest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forest_plot_is_written_without_pairs(tmp_path):
    from evaluation.headline import plot_forest, write_headline

    p = plot_forest(pd.DataFrame(columns=COLUMNS), tmp_path / "f.png")
    assert p.is_file()
    md, paths = write_headline(pd.DataFrame(columns=COLUMNS), SignificanceSettings(), tmp_path)
    assert "No pair of algorithms to compare" in md and paths == [tmp_path / "headline_forest.png"]


def test_one_seed_gives_not_estimable_rows_and_a_page(tmp_path):
    from evaluation.headline import significance_page, write_headline

    curves = curves_frame(_noisy_runs(1, 0.05))
    sig = significance_table(curves, pd.DataFrame(), config())
    r = row_of(sig, "final_reward")
    assert r["lmm_note"] == "not estimable: 1 paired seed; a random intercept per seed needs at least 2"
    assert r["outcome"] == "not distinguishable" and "LMM not estimable" in r["decided_by"]
    md, _ = write_headline(sig, S, tmp_path)
    assert "pilot: 1 paired seed cannot reach p < 0.05" in md
    page = significance_page(sig, S, "caption", tmp_path / "headline_forest.png")
    assert "n/e" in page and "not-distinguishable" in page
