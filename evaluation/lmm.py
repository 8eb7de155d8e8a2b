"""The paper's test: a linear mixed model of one metric over seeds and evaluated epochs.

The paper tests its FID improvement with a linear mixed model over seeds and epochs
(docs/method.md, section 6; p = 0.047).  Its exact formula is not published; this is the
model here, fitted by REML with ``statsmodels.MixedLM``::

    value ~ algorithm + C(epoch)      random intercept per seed  (paired runs)
    value ~ algorithm + C(epoch)      random intercept per run   (unpaired runs)

* ``algorithm``: 0 for ``a``, 1 for ``b``; its coefficient is the estimate of ``b - a``.
* ``C(epoch)``: the evaluated epoch as a category (a few fixed checkpoints; no straight-line
  trend assumed), so the algorithm effect is the difference at equal epochs, averaged over
  them.  Left out when every run has one observation (a per-run value: epochs to target, a
  metric interpolated at a matched reward).
* The random intercept per seed carries the pairing: seed ``s`` of ``a`` and of ``b`` draw the
  same prompts and initial noise.  When the runs are compared unpaired, each run is its own
  group.  When every group holds a single observation the random intercept cannot be told
  from the residual and the model is ordinary least squares (a two-sample t-test).

Inference.  ``statsmodels`` reports Wald z-tests, which are too liberal with a handful of
seeds; the p-value and the CI here use a t reference with the between-within degrees of
freedom (SAS ``DDFM=BW``): for a paired design, where the algorithm varies within a seed, the
residual degrees of freedom of least squares with seed fixed effects; for an unpaired one,
the number of runs minus 2.  For a balanced paired design this is exactly least squares with
seed fixed effects (and, with one observation per run, the paired t-test), which the tests
check.

Caveat.  The checkpoints of one run are treated as independent given its seed and epoch, as
a model "over seeds and epochs" does.  A run that stays above its seed's mean at every
checkpoint makes the p-value too small; the per-run permutation test has no such assumption.
Epochs are not independent replications of the algorithm effect, seeds are.  With one
observation per run the model assumes normal errors where the permutation test assumes
nothing; for epochs to target those observations are restricted (censored) means, which a
normal model describes only roughly.

Degenerate inputs give ``note = "not estimable: <reason>"`` and NaN numbers, never an error.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

NAN_RESULT = {"lmm_diff": math.nan, "lmm_ci_low": math.nan, "lmm_ci_high": math.nan, "lmm_p": math.nan,
              "lmm_df": math.nan, "lmm_n_obs": 0}


def _not_estimable(reason: str, n_obs: int = 0) -> dict:
    return {**NAN_RESULT, "lmm_n_obs": n_obs, "lmm_note": f"not estimable: {reason}"}


def lmm_test(obs: pd.DataFrame, a: str, b: str, paired: bool, level: float = 0.95) -> dict:
    """Fit the model to ``obs`` (columns ``algorithm, seed, epoch, value``; ``epoch`` NaN
    for per-run values) and return ``lmm_diff`` (estimate of b - a), ``lmm_ci_low``,
    ``lmm_ci_high``, ``lmm_p`` (two-sided), ``lmm_df``, ``lmm_n_obs`` and ``lmm_note`` (the
    model in words, or ``not estimable: reason``)."""
    d = obs[obs["algorithm"].isin([a, b])].dropna(subset=["value"]).copy()
    n = len(d)
    if not n or set(d["algorithm"]) != {a, b}:
        return _not_estimable(f"no observations of {a if b in set(d['algorithm']) else b}", n)
    if paired:
        common = set(d.loc[d["algorithm"] == a, "seed"]) & set(d.loc[d["algorithm"] == b, "seed"])
        d = d[d["seed"].isin(common)]
        n = len(d)
        if len(common) < 2:
            return _not_estimable(f"{len(common)} paired seed{'s' * (len(common) != 1)}; a random intercept "
                                  "per seed needs at least 2", n)
        d["group"] = d["seed"].astype(str)
    else:
        d["group"] = d["algorithm"] + "/" + d["seed"].astype(str)
    n_runs = d.groupby(["algorithm", "seed"]).ngroups
    n_a = d.loc[d["algorithm"] == a, "seed"].nunique()
    n_b = d.loc[d["algorithm"] == b, "seed"].nunique()
    if not paired and (n_a < 1 or n_b < 1 or n_runs < 3):
        return _not_estimable(f"{n_a} + {n_b} runs; an unpaired comparison needs at least 3", n)
    y = d["value"].to_numpy(dtype=float)
    scale = max(float(np.abs(y).max()), 1e-300)
    d["alg"] = (d["algorithm"] == b).astype(float)
    epochs = sorted(d["epoch"].dropna().unique())
    use_epoch = len(epochs) > 1 and d["epoch"].notna().all()
    cols = [np.ones(n), d["alg"].to_numpy()]
    if use_epoch:
        cols += [(d["epoch"] == e).to_numpy(dtype=float) for e in epochs[1:]]
    X = np.column_stack(cols)
    groups = d["group"].to_numpy()
    G = (groups[:, None] == np.unique(groups)[None, :]).astype(float)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return _not_estimable("the algorithm is confounded with the epochs evaluated", n)
    within = paired  # the algorithm varies within a seed
    df = (n - np.linalg.matrix_rank(np.column_stack([X, G]))) if within else (len(np.unique(groups)) - 2)
    if df < 1:
        return _not_estimable(f"no degrees of freedom left ({n} observations, {len(np.unique(groups))} groups, "
                              f"{X.shape[1]} fixed effects)", n)
    # a fit without residual variation is singular: every difference is exact
    singleton = d.groupby("group").size().max() == 1
    full = X if singleton else np.column_stack([X, G])
    r = y - full @ np.linalg.lstsq(full, y, rcond=None)[0]
    if np.abs(r).max() <= 1e-9 * scale:
        return _not_estimable("no residual variation (the model fits every observation exactly)", n)
    what = ("value ~ algorithm" + (" + C(epoch)" if use_epoch else "")
            + (", random intercept per seed" if paired else ", random intercept per run"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if singleton:
                import statsmodels.api as sm

                fit = sm.OLS(y, X).fit()
                est, se = float(fit.params[1]), float(fit.bse[1])
                what = ("value ~ algorithm" + (" + C(epoch)" if use_epoch else "")
                        + " by least squares (one observation per group: the random intercept is the residual)")
                df = n - X.shape[1]
            else:
                from statsmodels.regression.mixed_linear_model import MixedLM

                # fitted on the standardised values: the optimiser's tolerances are absolute, and a
                # KID of 1e-3 or an FID of 1e2 would otherwise stop it early or never
                mu, sd = float(y.mean()), float(y.std())
                model = MixedLM((y - mu) / sd, X, groups=groups)
                fit = model.fit(reml=True)
                if not fit.converged:
                    # near a zero seed variance the gradient methods stop short of the boundary;
                    # the derivative-free ones reach it.  The best converged REML fit is kept.
                    tries = [model.fit(reml=True, method=m) for m in ("nm", "powell")]
                    tries = [f for f in tries if f.converged]
                    if not tries:
                        return _not_estimable("REML optimisation did not converge", n)
                    fit = max(tries, key=lambda f: f.llf)
                est, se = sd * float(fit.fe_params[1]), sd * float(fit.bse_fe[1])
        except (np.linalg.LinAlgError, ValueError) as e:
            return _not_estimable(f"singular fit ({str(e).splitlines()[0]})", n)
    if not (math.isfinite(est) and math.isfinite(se)) or se <= 0:
        return _not_estimable("singular fit (no standard error)", n)
    t = est / se
    q = stats.t.ppf(0.5 + level / 2, df)
    boundary = any("boundary" in str(w.message) for w in caught)
    note = f"{what}; {n} observations, t with {df:g} df"
    if boundary and not singleton:
        note += f"; {'seed' if paired else 'run'} variance estimated at 0"
    return {"lmm_diff": est, "lmm_ci_low": est - q * se, "lmm_ci_high": est + q * se,
            "lmm_p": float(2 * stats.t.sf(abs(t), df)), "lmm_df": float(df), "lmm_n_obs": n, "lmm_note": note}
