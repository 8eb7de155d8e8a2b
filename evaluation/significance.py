"""Statistical tests between algorithms: does ``pcpo-X`` differ from ``X``?

For every (model, reward), every pair ``(a, b)`` -- each algorithm ``X`` whose
``pcpo-X`` ran as well, plus the pairs named in ``report.significance.pairs`` --
and every metric, :func:`significance_table` reports the difference ``b - a``,
a confidence interval for it, a permutation-test p-value, the estimate, CI and p
of the paper's linear mixed model (:mod:`evaluation.lmm`), which test decided, a
one-line verdict at the configured alpha and the number of seeds a test would need
to detect the observed effect with the configured power.

Metrics (one value per run, i.e. per seed):

* ``epochs_to_target``: epochs until the training reward first reaches
  ``evaluation.targets[reward]`` (:func:`evaluation.collapse.epochs_to_target`);
  lower is better.  See *Censoring* below.
* ``final_reward``: the training reward averaged over the last 3 epochs, the
  per-seed value behind :func:`evaluation.report.final_reward_table`; higher is better.
* ``fid``, ``kid`` (lower is better), ``diversity`` and ``coverage`` (higher is better) at each
  matched evaluated-reward level (``evaluation.matched_rewards[reward]``, else
  :func:`evaluation.collapse.auto_levels`), interpolated along each run's
  checkpoints as in :func:`evaluation.collapse.matched_reward_table`.  A run that
  never reaches a level has no value there and is left out of that comparison
  (``n_a``/``n_b`` say how many remain).
* the same quality metrics over the evaluated checkpoints (``level`` NaN, statistic
  "mean over evaluated checkpoints (epochs ...)"): per run, the mean over its
  evaluated epochs -- the comparison the paper's mixed model makes, at equal epochs
  rather than at equal reward.

Observations for the mixed model: the per-epoch values behind a per-run value (the
last 3 epochs' training reward for ``final_reward``, every evaluated checkpoint for
the checkpoint rows), else the per-run value itself (one observation per run: the
model is then the paired, or two-sample, t-test).

Design.  Seeds are common random numbers: seed ``s`` of ``a`` and seed ``s`` of
``b`` draw the same prompts and initial noise, so the two runs of one seed form a
pair.  With ``paired: auto`` (the default) a comparison is paired when both
arms have the same set of seeds, unpaired otherwise; ``paired: true`` pairs the
seeds the arms share (dropping the others), ``paired: false`` never pairs.

Test (two-sided, statistic: the mean difference; :func:`scipy.stats.permutation_test`).

* paired: the sign-flip permutation test on the per-seed differences ``b_s - a_s``
  (under the null the labels within a seed are exchangeable, so each difference
  is as likely negated); exact over all ``2**n`` sign patterns when
  ``2**n <= 4096``, otherwise ``n_permutations`` random patterns.
* unpaired: the two-sample permutation test (re-labelling the pooled runs);
  exact over all splits when there are at most 4096, otherwise ``n_permutations``
  random ones.

Exact p-values count the patterns at least as extreme as the observed one, the
observed one included; Monte Carlo p-values are ``(1 + k) / (1 + n_permutations)``.
The random draws come from ``numpy.random.default_rng(seed)``: reports are
reproducible.  With few seeds the smallest attainable p-value is coarse
(``2 / 2**n`` paired, ``2 / C(n_a + n_b, n_a)`` unpaired: 0.25 for 3 paired
seeds); verdicts say so when it exceeds alpha.

Confidence interval.  Percentile bootstrap (:func:`scipy.stats.bootstrap`) of the mean difference at level
``1 - alpha`` (95% at alpha 0.05): paired comparisons resample seeds (pairs), so
each resample keeps the pairing; unpaired ones resample each arm separately.
Percentile, not BCa: BCa's jackknife acceleration is unstable at 3 to 5 seeds,
and the percentile interval matches the other tables of the report.  With so few
seeds a bootstrap interval is too narrow; the interval describes the size of the
effect, the tests decide.

Which test decides (``report.significance.test``, :func:`decide`): ``permutation``,
``lmm``, ``both`` (both must reject) or ``auto`` (default): the permutation test where
its seeds can reach alpha at all, the mixed model where they cannot (3 paired seeds:
smallest p 0.25).  The choice is fixed by the number of seeds, not by the data.  The
mixed model's p can go below the permutation floor because it assumes normal errors,
not because checkpoints add independent replications: read an LMM verdict from a
pilot of 3 seeds as a pilot's.  ``decided_by`` and the verdict name the test.

Censoring.  A run that never reaches the target is not dropped: its epochs to
target is only known to exceed its horizon (the epochs it trained).  Every run
of a comparison is followed up to the common horizon ``H`` (the shortest run's);
a run that reached the target later than ``H``, or never, is censored at ``H``
and counts ``H + 1`` epochs, the first epoch not observed (the value the
epochs-to-target table uses).  The statistic is therefore the *restricted mean*
of ``min(T, H + 1)``, labelled "restricted mean (censored at horizon H)" in the
``statistic`` column: censored runs tie at the top, which makes their arm worse
by the least amount the data prove.  The permutation test of this statistic is
exact: the truncation is applied to every run alike, so it keeps the labels
exchangeable under the null.  ``censored_a`` and ``censored_b`` count the
censored runs of each arm.

Power.  ``seeds_for_power`` is the number of seeds (pairs when paired, seeds per
arm when unpaired) at which a two-sided t-test at ``alpha`` has power ``power``
against the *observed* standardised effect ``d`` (``effect_size``: mean
difference over the standard deviation of the differences when paired, over the
pooled standard deviation when unpaired), from the noncentral t distribution
(:func:`t_test_power`).  This is the t-test approximation to the permutation
test's power, searched from 2 to ``max_seeds`` seeds; it is then raised to the
fewest seeds at which the permutation test can reach ``alpha`` at all.  ``inf``
when the observed effect is zero or more than ``max_seeds`` seeds are needed
(``effect_size`` tells which); NaN when an arm has fewer than two seeds.  The
observed effect of a handful of seeds is itself noisy: read the number as an
order of magnitude.

Config (``report.significance``, every key optional)::

    alpha: 0.05            # test level; CIs are at 1 - alpha
    power: 0.8             # target power of seeds_for_power
    paired: auto           # auto | true | false
    pairs: [[ddpo, dancegrpo]]   # extra (a, b) pairs; b - a is reported
    n_bootstrap: 10000
    n_permutations: 10000  # Monte Carlo draws when exact enumeration is too large
    seed: 0                # of the bootstrap and Monte Carlo draws
    max_seeds: 1000        # cap of the power search
    test: auto             # auto | permutation | lmm | both: which test decides the verdict
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from evaluation.collapse import auto_levels, epochs_to_target_runs, matched_reward_runs
from evaluation.lmm import lmm_test
from pcpo.config import ConfigError

EXACT_LIMIT = 4096  # enumerate sign patterns / splits exactly up to this many
FINAL_LAST_K = 3  # final reward: mean of the last 3 epochs, as final_reward_table
MATCHED_METRICS = ["fid", "kid", "fd_dino", "diversity", "diversity_inception", "coverage"]

# metric -> (words in a verdict, higher is better)
METRICS = {
    "epochs_to_target": ("epochs to target", False),
    "final_reward": ("final training reward", True),
    "fid": ("FID", False),
    "kid": ("KID", False),
    "fd_dino": ("FD-DINO", False),
    "diversity": ("diversity", True),
    "diversity_inception": ("Inception-feature diversity", True),
    "coverage": ("class coverage", True),
}

COLUMNS = ["model", "reward", "metric", "level", "statistic", "a", "b", "n_a", "n_b", "censored_a", "censored_b",
           "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "test",
           "lmm_diff", "lmm_ci_low", "lmm_ci_high", "lmm_p", "lmm_df", "lmm_n_obs", "lmm_note",
           "decided_by", "significant", "outcome", "effect_size", "seeds_for_power", "smallest_p", "verdict"]
TESTS = ("auto", "permutation", "lmm", "both")


# ------------------------------------------------------------------ config

@dataclass(frozen=True)
class SignificanceSettings:
    alpha: float = 0.05
    power: float = 0.8
    paired: str | bool = "auto"
    pairs: tuple[tuple[str, str], ...] = ()
    n_bootstrap: int = 10000
    n_permutations: int = 10000
    seed: int = 0
    max_seeds: int = 1000
    test: str = "auto"

    @property
    def level(self) -> float:
        """Confidence level of the intervals."""
        return 1.0 - self.alpha


def significance_settings(config: dict) -> SignificanceSettings:
    """``report.significance`` of an experiment config, checked; errors name the field."""
    where = "report.significance"
    rep = config.get("report") or {}
    if not isinstance(rep, dict):
        raise ConfigError(f"report: expected a mapping, got {rep!r}")
    raw = rep.get("significance") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    known = {"alpha", "power", "paired", "pairs", "n_bootstrap", "n_permutations", "seed", "max_seeds", "test"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown field; known fields of {where}: {', '.join(sorted(known))}")
    d = SignificanceSettings()
    kw = {}
    for key in ("alpha", "power"):
        v = raw.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ConfigError(f"{where}.{key}: must be a number in (0, 1), got {v!r}")
        kw[key] = float(v)
    for key, lo in (("n_bootstrap", 1), ("n_permutations", 1), ("max_seeds", 2), ("seed", 0)):
        v = raw.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{where}.{key}: must be an integer >= {lo}, got {v!r}")
        kw[key] = v
    paired = raw.get("paired", d.paired)
    if not (paired == "auto" or isinstance(paired, bool)):
        raise ConfigError(f"{where}.paired: must be auto, true or false, got {paired!r}")
    kw["paired"] = paired
    test = raw.get("test", d.test)
    if test not in TESTS:
        raise ConfigError(f"{where}.test: must be one of {', '.join(TESTS)}, got {test!r}")
    kw["test"] = test
    pairs = raw.get("pairs", [])
    if not isinstance(pairs, list):
        raise ConfigError(f"{where}.pairs: expected a list of [a, b] pairs, got {pairs!r}")
    out = []
    for i, p in enumerate(pairs):
        if (not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(x, str) for x in p)):
            raise ConfigError(f"{where}.pairs[{i}]: expected [a, b], two algorithm names, got {p!r}")
        if p[0] == p[1]:
            raise ConfigError(f"{where}.pairs[{i}]: compares {p[0]!r} with itself")
        out.append((p[0], p[1]))
    kw["pairs"] = tuple(out)
    return SignificanceSettings(**kw)


def check_pair_names(settings: SignificanceSettings, known: set[str]) -> None:
    """Every algorithm named in ``report.significance.pairs`` must be one the
    experiment runs (``known``: the matrix's algorithms and those in the tables)."""
    for i, pair in enumerate(settings.pairs):
        for j, name in enumerate(pair):
            if name not in known:
                raise ConfigError(f"report.significance.pairs[{i}][{j}]: unknown algorithm {name!r}; "
                                  f"the experiment runs {', '.join(sorted(known)) or 'none'}")


# ------------------------------------------------------------------ statistics

def _abs_mean(x, axis=-1):
    return np.abs(np.mean(x, axis=axis))


def _abs_mean_diff(x, y, axis=-1):
    return np.abs(np.mean(y, axis=axis) - np.mean(x, axis=axis))


def permutation_test(a, b, paired: bool, n_permutations: int = 10000, seed: int = 0) -> tuple[float, str]:
    """Two-sided permutation test of the mean difference ``mean(b) - mean(a)``, by
    :func:`scipy.stats.permutation_test`.

    ``paired``: ``a[i]`` and ``b[i]`` are one seed; sign-flip test of ``b - a``
    (``permutation_type='samples'`` on the differences).  Otherwise the two-sample
    re-labelling test (``permutation_type='independent'``).  Two-sided as the share of
    arrangements whose ``|mean difference|`` reaches the observed one (the statistic is
    the absolute difference, tested one-sided), so a skewed null distribution of unequal
    arms is not doubled.  Exact when there are at most :data:`EXACT_LIMIT` sign patterns
    or splits, else Monte Carlo with ``n_permutations`` draws from ``default_rng(seed)``
    (p = (1 + k) / (1 + n_permutations)).  Returns the p-value and a description.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if a.shape != b.shape:
            raise ValueError("paired test: a and b need the same length")
        if a.size == 0:
            return math.nan, "paired sign-flip permutation (no seeds)"
        count, data, stat, kind = 2 ** a.size, (b - a,), _abs_mean, "samples"
        name, unit = "paired sign-flip permutation", "sign patterns"
    else:
        if a.size == 0 or b.size == 0:
            return math.nan, "permutation (an arm has no seeds)"
        count, data, stat, kind = math.comb(a.size + b.size, b.size), (a, b), _abs_mean_diff, "independent"
        name, unit = "two-sample permutation", "splits"
    exact = count <= EXACT_LIMIT
    how = f"exact, {count} {unit}" if exact else f"Monte Carlo, {n_permutations} draws"
    if min(x.size for x in data) < 2:  # scipy wants two observations per sample; enumerate the few cases
        if paired:  # one difference: both sign patterns are as extreme
            return 1.0, f"{name} ({how})"
        x = np.concatenate(data)
        one = 0 if a.size == 1 else 1  # which arm is the single run; every run can take its place
        rest = (x.sum() - x) / (x.size - 1)
        null = np.abs(x - rest) if one == 1 else np.abs(rest - x)
        tol = 1e-12 * max(float(np.abs(x).max()), 1e-300)
        return float(np.mean(null >= stat(*data) - tol)), f"{name} ({how})"
    res = stats.permutation_test(data, stat, permutation_type=kind, vectorized=True, alternative="greater",
                                 n_resamples=np.inf if exact else n_permutations,
                                 rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue)), f"{name} ({how})"


def smallest_p(n_a: int, n_b: int, paired: bool) -> float:
    """The smallest two-sided p-value the exact permutation test can give."""
    if paired:
        return min(1.0, 2.0 / 2 ** n_a) if n_a else math.nan
    if not n_a or not n_b:
        return math.nan
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def min_seeds_for_permutation(alpha: float, paired: bool) -> int:
    """Fewest seeds (pairs, or seeds per arm of a balanced design) at which the
    permutation test can reach ``alpha`` at all."""
    n = 1
    while smallest_p(n, n, paired) > alpha:
        n += 1
    return n


def _mean_diff(x, y, axis=-1):
    return np.mean(y, axis=axis) - np.mean(x, axis=axis)


def bootstrap_diff_ci(a, b, paired: bool, level: float = 0.95, n_boot: int = 10000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(b) - mean(a)`` by :func:`scipy.stats.bootstrap`:
    resampling seeds (the differences of pairs) when paired, each arm separately
    otherwise.  NaN when a resampled sample would have a single seed (its bootstrap
    distribution is one point and says nothing about the spread)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        if a.shape != b.shape:
            raise ValueError("paired bootstrap: a and b need the same length")
        data, stat = (b - a,), np.mean
    else:
        data, stat = (a, b), _mean_diff
    if min(x.size for x in data) < 2:
        return math.nan, math.nan
    ci = stats.bootstrap(data, stat, n_resamples=n_boot, vectorized=True, paired=False, confidence_level=level,
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def effect_size(a, b, paired: bool) -> float:
    """Standardised observed effect: mean difference over the sd of the differences
    (paired) or over the pooled sd (unpaired).  ``inf`` for a non-zero difference
    without spread, NaN when an arm has fewer than two seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        d = b - a
        if d.size < 2:
            return math.nan
        diff, sd = d.mean(), d.std(ddof=1)
    else:
        if a.size < 2 or b.size < 2:
            return math.nan
        diff = b.mean() - a.mean()
        sd = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    scale = max(np.abs(a).max(), np.abs(b).max())
    if _negligible(diff, scale):
        return 0.0
    if _negligible(sd, scale):
        return math.copysign(math.inf, diff)
    return float(diff / sd)


def _negligible(x: float, scale: float) -> bool:
    """``x`` is zero up to float rounding of values of size ``scale``."""
    return abs(x) <= 1e-12 * max(abs(scale), 1e-300)


def t_test_power(effect: float, n, alpha: float, paired: bool):
    """Power of the two-sided t-test at ``alpha`` against standardised effect
    ``effect`` with ``n`` pairs (paired) or ``n`` seeds per arm (unpaired), from
    the noncentral t distribution.  ``n`` may be an array."""
    n = np.asarray(n, dtype=float)
    d = abs(float(effect))
    if paired:
        df, nc = n - 1, d * np.sqrt(n)
    else:
        df, nc = 2 * n - 2, d * np.sqrt(n / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        if math.isinf(d):
            power = np.ones_like(n)
        else:
            tc = stats.t.ppf(1 - alpha / 2, df)
            power = stats.nct.sf(tc, df, nc) + stats.nct.cdf(-tc, df, nc)
    power = np.where(n < 2, np.nan, power)
    return float(power) if power.ndim == 0 else power


def seeds_for_power(effect: float, alpha: float = 0.05, power: float = 0.8, paired: bool = True,
                    max_seeds: int = 1000) -> float:
    """Fewest seeds (pairs, or per arm) for which the t-test reaches ``power``
    against ``effect`` at ``alpha``, at least :func:`min_seeds_for_permutation`.
    ``inf`` if the effect is 0 or more than ``max_seeds`` are needed; NaN if the
    effect is unknown."""
    if effect is None or math.isnan(effect):
        return math.nan
    if effect == 0:
        return math.inf
    ns = np.arange(2, max_seeds + 1)
    pw = t_test_power(effect, ns, alpha, paired)
    hit = np.nonzero(pw >= power)[0]
    if not hit.size:
        return math.inf
    return float(max(int(ns[hit[0]]), min_seeds_for_permutation(alpha, paired)))


def compare(a: pd.Series, b: pd.Series, settings: SignificanceSettings, obs: pd.DataFrame | None = None,
            names: tuple[str, str] = ("a", "b"), metric: str = "final_reward") -> dict:
    """Every statistic of one comparison.  ``a`` and ``b``: one value per seed,
    indexed by seed number.  Pairs seeds as ``settings.paired`` says.  ``obs``: the
    observations behind those values for the linear mixed model (columns ``algorithm,
    seed, epoch, value``, algorithms named ``names``); by default the per-seed values
    themselves.  ``decided_by`` says which test the verdict follows (``settings.test``);
    ``metric`` (a key of :data:`METRICS`) says which direction is better."""
    a, b = a.dropna(), b.dropna()
    if settings.paired == "auto":
        paired = len(a) > 0 and set(a.index) == set(b.index)
    else:
        paired = bool(settings.paired)
    if paired:
        common = sorted(set(a.index) & set(b.index))
        a, b = a.loc[common], b.loc[common]
    av, bv = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    row = {"n_a": len(av), "n_b": len(bv), "paired": paired,
           "mean_a": float(av.mean()) if len(av) else math.nan,
           "mean_b": float(bv.mean()) if len(bv) else math.nan}
    row["diff"] = row["mean_b"] - row["mean_a"]
    p, test = permutation_test(av, bv, paired, settings.n_permutations, settings.seed)
    lo, hi = bootstrap_diff_ci(av, bv, paired, settings.level, settings.n_bootstrap, settings.seed)
    d = effect_size(av, bv, paired)
    row.update({"ci_low": lo, "ci_high": hi, "p_value": p, "test": test, "effect_size": d,
                "seeds_for_power": seeds_for_power(d, settings.alpha, settings.power, paired, settings.max_seeds),
                "smallest_p": smallest_p(len(av), len(bv), paired)})
    if obs is None:
        obs = pd.concat([pd.DataFrame({"algorithm": n, "seed": v.index, "epoch": math.nan, "value": v.to_numpy()})
                         for n, v in zip(names, (a, b))], ignore_index=True)
    row.update(lmm_test(obs, names[0], names[1], paired, settings.level))
    row.update(decide(row | {"metric": metric}, settings))
    return row


def decide(row: dict, settings: SignificanceSettings) -> dict:
    """Which test answers (``decided_by``), whether it rejects at alpha (``significant``) and
    the outcome for b (``better``, ``worse``, ``not distinguishable``; ``no data``).

    ``test``: ``permutation`` or ``lmm`` alone; ``both``: significant only when both reject;
    ``auto``: the permutation test where its seeds can reach alpha (its smallest attainable p
    is at most alpha), the mixed model otherwise -- a choice fixed by the design (the number of
    seeds), not by the data.  A mixed model that is not estimable answers nothing: under
    ``lmm`` and ``both`` the verdict is "not distinguishable", under ``auto`` the permutation
    test answers and ``decided_by`` says why."""
    alpha = settings.alpha
    perm_ok = not math.isnan(row["p_value"])
    lmm_ok = not math.isnan(row["lmm_p"])
    perm_sig = perm_ok and row["p_value"] <= alpha
    lmm_sig = lmm_ok and row["lmm_p"] <= alpha
    lmm_why = row["lmm_note"].removeprefix("not estimable: ") if not lmm_ok else ""
    test = settings.test
    if test == "auto":
        if perm_ok and row["smallest_p"] <= alpha:
            test, by = "permutation", "permutation"
        elif lmm_ok:
            test, by = "lmm", f"LMM: the permutation test cannot reach alpha={alpha:g} with these seeds"
        else:
            test, by = "permutation", f"permutation (LMM not estimable: {lmm_why})"
    else:
        by = {"permutation": "permutation", "lmm": "LMM", "both": "permutation and LMM"}[test]
        if test in ("lmm", "both") and not lmm_ok:
            by += f" (LMM not estimable: {lmm_why})"
    sig = {"permutation": perm_sig, "lmm": lmm_sig, "both": perm_sig and lmm_sig}[test]
    diff = row["lmm_diff"] if test == "lmm" else row["diff"]
    if math.isnan(row["diff"]):
        outcome = "no data"
    elif not sig or diff == 0:
        outcome = "not distinguishable"
    else:
        higher_better = METRICS[row["metric"]][1]
        outcome = "better" if (diff > 0) == higher_better else "worse"
    p_verdict = {"permutation": row["p_value"], "lmm": row["lmm_p"],
                 "both": max(row["p_value"], row["lmm_p"]) if lmm_ok else math.nan}[test]
    return {"decided_by": by, "significant": bool(sig), "outcome": outcome, "p_verdict": p_verdict,
            "test_used": test}


# ------------------------------------------------------------------ verdicts

def _g(x: float) -> str:
    return f"{x:.3g}"


def _ci(lo: float, hi: float) -> str:
    return f"[{_g(lo)}, {_g(hi)}]"


def verdict(row: dict, settings: SignificanceSettings) -> str:
    """The one-line verdict of a comparison row: the identifying columns of
    :data:`COLUMNS` plus what :func:`compare` returns.  The floor the permutation test's
    seeds put on p is not repeated here: the report's headline says it once."""
    words, higher_better = METRICS[row["metric"]]
    a, b, diff = row["a"], row["b"], row["diff"]
    where = f"{row['model']}/{row['reward']}: "
    if math.isnan(diff):
        return where + f"{b} against {a} on {words}: no runs to compare"
    if _negligible(diff, max(abs(row["mean_a"]), abs(row["mean_b"]))):
        diff = 0.0
    if row["metric"] == "epochs_to_target":
        target = f"{row['reward']} {row['level']:g}"
        if diff == 0:
            claim = f"{b} and {a} reach {target} in the same number of epochs"
        else:
            claim = f"{b} reaches {target} in {_g(abs(diff))} {'fewer' if diff < 0 else 'more'} epochs than {a}"
        detail = [row["statistic"].replace(" (", ", ").rstrip(")"),
                  f"censored runs: {a} {row['censored_a']}/{row['n_a']}, {b} {row['censored_b']}/{row['n_b']}"]
    else:
        if not math.isnan(row["level"]):
            at = f" at matched reward {row['level']:.4g}"
        elif row["statistic"].startswith("mean over evaluated checkpoints"):
            at = " over the evaluated checkpoints" + row["statistic"].removeprefix("mean over evaluated checkpoints")
        else:
            at = ""
        if diff == 0:
            claim = f"{b} and {a} have the same {words}{at}"
        else:
            better = (diff > 0) == higher_better
            claim = (f"{b} has {_g(abs(diff))} {'higher' if diff > 0 else 'lower'} {words} than {a}{at} "
                     f"({'better' if better else 'worse'})")
        detail = []
    level = f"{100 * settings.level:g}% CI of {b} - {a} {_ci(row['ci_low'], row['ci_high'])}"
    seeds = f"{row['n_a']} paired seeds" if row["paired"] else f"{row['n_a']} + {row['n_b']} seeds"
    test = row["test"].split(" (")[0]
    if math.isnan(row["lmm_p"]):
        lmm = f"LMM {row['lmm_note']}"
    else:
        lmm = (f"LMM {_g(row['lmm_diff'])} {_ci(row['lmm_ci_low'], row['lmm_ci_high'])}, p={row['lmm_p']:.3g} "
               f"({row['lmm_n_obs']} observations)")
    detail += [level, f"{test} p={row['p_value']:.3g}", lmm, seeds]
    line = f"{where}{claim} ({'; '.join(detail)}): "
    by = row["decided_by"]
    if row["significant"]:
        return line + f"significant at alpha={settings.alpha:g}, {row['outcome']} (decided by {by})"
    line += f"not significant at alpha={settings.alpha:g} (decided by {by})"
    n, d = row["seeds_for_power"], row["effect_size"]
    per = "" if row["paired"] else " per algorithm"
    pw = f"{100 * settings.power:g}% power"
    if math.isnan(n):
        line += "; too few seeds to estimate the seeds needed"
    elif math.isinf(n):
        line += ("; no observed effect to power a test for" if d == 0
                 else f"; >{settings.max_seeds} seeds{per} needed for {pw}")
    else:
        line += f"; ~{int(n)} seeds{per} needed for {pw}"
    return line


# ------------------------------------------------------------------ the table

def final_reward_runs(curves: pd.DataFrame, last_k: int = FINAL_LAST_K) -> pd.DataFrame:
    """Per run: the training reward averaged over its last ``last_k`` epochs.
    Columns: ``model, reward, algorithm, seed, value``."""
    keys = ["model", "reward", "algorithm", "seed"]
    if curves.empty:
        return pd.DataFrame(columns=[*keys, "value"])
    rows = [{**dict(zip(keys, k)), "value": float(s.sort_values("epoch")["reward_mean"].tail(last_k).mean())}
            for k, s in curves.groupby(keys)]
    return pd.DataFrame(rows, columns=[*keys, "value"])


def default_pairs(algorithms) -> list[tuple[str, str]]:
    """Every ``(X, pcpo-X)`` with both present."""
    algs = set(algorithms)
    return sorted((b[len("pcpo-"):], b) for b in algs if b.startswith("pcpo-") and b[len("pcpo-"):] in algs)


def _per_seed(df: pd.DataFrame, alg: str, col: str = "value") -> pd.Series:
    s = df[df["algorithm"] == alg].set_index("seed")[col]
    return s.sort_index()


def significance_table(curves: pd.DataFrame, points: pd.DataFrame, config: dict,
                       settings: SignificanceSettings | None = None) -> pd.DataFrame:
    """The comparisons of every pair on every metric, one row each (:data:`COLUMNS`):
    ``level`` is the target reward (epochs to target), the matched reward (FID, KID,
    diversity) or NaN (final reward); ``diff``, the CI and ``effect_size`` are of
    ``b - a``; ``n_a``/``n_b`` count the seeds compared (the common ones when paired).

    ``curves``: the training table (``tables/training.csv``); ``points``: the
    evaluation table (``tables/all_metrics.csv``); ``config``: the experiment
    config (``evaluation.targets``, ``evaluation.matched_rewards``, ``matrix``,
    ``report.significance``)."""
    settings = settings or significance_settings(config)
    ev = config.get("evaluation") or {}
    targets = ev.get("targets") or {}
    known = {a for block in config.get("matrix", []) for a in block.get("algorithms", [])}
    for df in (curves, points):
        if not df.empty:
            known |= set(df["algorithm"]) - {"base"}
    check_pair_names(settings, known)

    # tidy per-run values: model, reward, algorithm, seed, metric, level, value[, epochs, horizon]
    frames = []
    ett = epochs_to_target_runs(curves, targets)
    if len(ett):
        frames.append(ett.assign(metric="epochs_to_target", level=ett["target"], value=ett["epochs"]))
    fin = final_reward_runs(curves)
    # the observations behind a per-run value, for the mixed model: (model, reward, metric, level key) -> frame
    obs_of: dict[tuple, pd.DataFrame] = {}
    statistic_of: dict[tuple, str] = {}
    if len(fin):
        frames.append(fin.assign(metric="final_reward", level=math.nan))
        last = (curves.sort_values("epoch").groupby(["model", "reward", "algorithm", "seed"]).tail(FINAL_LAST_K))
        for (model, reward), g in last.groupby(["model", "reward"]):
            obs_of[(model, reward, "final_reward", -math.inf)] = g.rename(columns={"reward_mean": "value"})[
                ["algorithm", "seed", "epoch", "value"]]
            statistic_of[(model, reward, "final_reward", -math.inf)] = f"mean of the last {FINAL_LAST_K} epochs"
    if not points.empty:
        for (model, reward), p in points.groupby(["model", "reward"]):
            levels = (ev.get("matched_rewards") or {}).get(reward) or auto_levels(p, "eval_reward")
            metrics = [q for q in MATCHED_METRICS if q in p and not p[q].isna().all()]
            if levels and metrics:
                frames.append(matched_reward_runs(p, "eval_reward", metrics, levels))
            ck = p[p["epoch"] >= 0]
            epochs = sorted(int(e) for e in ck["epoch"].unique())
            for q in metrics:  # the metric at every evaluated checkpoint: the paper's "over seeds and epochs"
                o = ck[["algorithm", "seed", "epoch", q]].rename(columns={q: "value"}).dropna(subset=["value"])
                if o.empty:
                    continue
                per_run = o.groupby(["algorithm", "seed"], as_index=False)["value"].mean()
                frames.append(per_run.assign(model=model, reward=reward, metric=q, level=math.nan))
                obs_of[(model, reward, q, -math.inf)] = o
                statistic_of[(model, reward, q, -math.inf)] = (
                    f"mean over evaluated checkpoints (epochs {', '.join(map(str, epochs))})")
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    values = pd.concat(frames, ignore_index=True)
    values = values[values["algorithm"] != "base"]

    order = {m: i for i, m in enumerate(METRICS)}
    rows = []
    for (model, reward), g in values.groupby(["model", "reward"], sort=True):
        present = set(g["algorithm"])
        pairs = default_pairs(present)
        pairs += [p for p in settings.pairs if p not in pairs and set(p) <= present]
        # (metric, level) in report order; no level (final reward) as -inf, so NaN never enters a set
        keys = sorted({(m, -math.inf if pd.isna(lv) else float(lv)) for m, lv in zip(g["metric"], g["level"])},
                      key=lambda k: (order[k[0]], k[1]))
        for a, b in pairs:
            for metric, key_level in keys:
                level = math.nan if key_level == -math.inf else key_level
                sub = g[(g["metric"] == metric) & (g["level"].isna() if math.isnan(level) else g["level"] == level)]
                sub = sub[sub["algorithm"].isin([a, b])]
                if not {a, b} <= set(sub["algorithm"]):
                    continue
                row = {"model": model, "reward": reward, "metric": metric, "level": level, "a": a, "b": b,
                       "censored_a": 0, "censored_b": 0,
                       "statistic": statistic_of.get((model, reward, metric, key_level), "mean")}
                if metric == "epochs_to_target":
                    horizon = int(sub["horizon"].min())
                    vals = sub["epochs"].astype(float).clip(upper=horizon + 1)
                    cens = sub["epochs"].astype(float) > horizon
                    sub = sub.assign(value=vals, censored=cens)
                    row["statistic"] = f"restricted mean (censored at horizon {horizon} epochs)"
                sa, sb = _per_seed(sub, a), _per_seed(sub, b)
                obs = obs_of.get((model, reward, metric, key_level))
                row.update(compare(sa, sb, settings, obs=obs, names=(a, b), metric=metric))
                if metric == "epochs_to_target":  # censored among the seeds compared
                    ca, cb = _per_seed(sub, a, "censored"), _per_seed(sub, b, "censored")
                    if row["paired"]:
                        common = sorted(set(ca.index) & set(cb.index))
                        ca, cb = ca.loc[common], cb.loc[common]
                    row["censored_a"], row["censored_b"] = int(ca.sum()), int(cb.sum())
                row["verdict"] = verdict(row, settings)
                rows.append(row)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(rows)[COLUMNS]
