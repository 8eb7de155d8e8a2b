"""Collapse analysis: epochs to a target reward, quality and diversity at matched
reward, with bootstrap confidence intervals across seeds.

All functions take tidy pandas frames:

* training curves: one row per (run, epoch) with ``reward_mean`` and ``clipfrac``;
* evaluation points: one row per (run, checkpoint) with the evaluated reward
  and quality metrics (``fid``, ``kid``, ``diversity`` ...).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

RUN_KEYS = ["model", "reward", "algorithm", "seed"]
GROUP_KEYS = ["model", "reward", "algorithm"]


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile bootstrap CI of the mean over seeds (NaNs dropped)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def epochs_to_target(epochs, rewards, target: float, smooth: int = 1) -> float:
    """First epoch (1-based count of epochs trained) whose reward reaches ``target``;
    ``inf`` if it never does.  ``smooth`` > 1 uses a trailing moving average."""
    e = np.asarray(epochs, dtype=float)
    r = pd.Series(np.asarray(rewards, dtype=float)).rolling(max(1, smooth), min_periods=1).mean().to_numpy()
    hit = np.nonzero(r >= target)[0]
    return float(e[hit[0]] + 1) if hit.size else math.inf


def epochs_to_target_table(curves: pd.DataFrame, targets: dict, smooth: int = 1) -> pd.DataFrame:
    """Per run and per algorithm: epochs to each reward's target, mean and CI over seeds.

    Runs that never reach the target count as the number of epochs they trained
    plus one (a lower bound) and are reported in ``censored``.
    """
    rows = []
    for (model, reward, alg), g in epochs_to_target_runs(curves, targets, smooth).groupby(GROUP_KEYS):
        per_seed = [float(h + 1) if c else float(e) for e, h, c in zip(g["epochs"], g["horizon"], g["censored"])]
        mean, lo, hi = bootstrap_ci(per_seed)
        row = {"model": model, "reward": reward, "algorithm": alg, "target": float(g["target"].iloc[0]),
               "seeds": len(per_seed), "epochs_mean": mean, "ci_low": lo, "ci_high": hi,
               "censored": int(g["censored"].sum()), "per_seed": " ".join(f"{x:g}" for x in per_seed)}
        if g["forwards_horizon"].notna().all():
            # a run that never reached the target: its forwards plus one more epoch's, as for epochs
            fw = [fh * (h + 1) / h if c else float(f) for f, fh, h, c in
                  zip(g["forwards"], g["forwards_horizon"], g["horizon"], g["censored"])]
            fm, flo, fhi = bootstrap_ci(fw)
            row.update({"forwards_mean": fm, "forwards_ci_low": flo, "forwards_ci_high": fhi})
        rows.append(row)
    return pd.DataFrame(rows)


def cumulative_forwards(run: pd.DataFrame) -> np.ndarray | None:
    """A run's model forwards and backwards up to and including each epoch (its rows in
    epoch order), from the trainer's ``nfe_total``; None for logs without the count."""
    if "nfe_total" not in run or run["nfe_total"].isna().any():
        return None
    return run.sort_values("epoch")["nfe_total"].astype(float).cumsum().to_numpy()


def interpolate_at_reward(points: pd.DataFrame, reward_col: str, metric: str, level: float) -> float:
    """Linear interpolation of ``metric`` at reward ``level`` along one run's
    checkpoints in epoch order (first crossing); NaN if the run never reaches it."""
    p = points.sort_values("epoch")
    r = p[reward_col].to_numpy(dtype=float)
    m = p[metric].to_numpy(dtype=float)
    for i in range(len(r)):
        if r[i] >= level:
            if i == 0:  # already at the level at the first point
                return float(m[0])
            r0, r1, m0, m1 = r[i - 1], r[i], m[i - 1], m[i]
            if r1 == r0:
                return float(m1)
            w = (level - r0) / (r1 - r0)
            return float(m0 + w * (m1 - m0))
    return math.nan


def auto_levels(points: pd.DataFrame, reward_col: str, n: int = 3) -> list[float]:
    """Reward levels every run can be compared at: inside the range between the
    base model's reward and the lowest final reward of all runs."""
    if points.empty:
        return []
    base = points[points["epoch"] < 0][reward_col]
    lo = float(base.mean()) if len(base) else float(points[reward_col].min())
    finals = points[points["epoch"] >= 0].sort_values("epoch").groupby(RUN_KEYS)[reward_col].max()
    if finals.empty:
        return []
    hi = float(finals.min())
    if not hi > lo:
        return []
    return [float(x) for x in np.linspace(lo, hi, n + 2)[1:-1]]


def matched_reward_table(points: pd.DataFrame, reward_col: str, metrics: list[str], levels: list[float]) -> pd.DataFrame:
    """Each metric interpolated at each matched reward level, per algorithm (mean, CI over seeds)."""
    per_run = matched_reward_runs(points, reward_col, metrics, levels)
    rows = []
    for keys, _ in points[points["epoch"] >= 0].groupby(GROUP_KEYS):
        model, reward, alg = keys
        mine = per_run[(per_run["model"] == model) & (per_run["reward"] == reward) & (per_run["algorithm"] == alg)]
        for level in levels:
            row = {"model": model, "reward": reward, "algorithm": alg, "matched_reward": level}
            for metric in metrics:
                if metric not in points:
                    continue
                vals = mine[(mine["level"] == float(level)) & (mine["metric"] == metric)]["value"].tolist()
                mean, lo, hi = bootstrap_ci(vals)
                row.update({metric: mean, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi,
                            f"{metric}_seeds": int(np.isfinite(vals).sum())})
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------ per-run values
# The tables above summarise over seeds; the statistical tests in
# :mod:`evaluation.significance` need the value of every run, keyed by seed.

def epochs_to_target_runs(curves: pd.DataFrame, targets: dict, smooth: int = 1) -> pd.DataFrame:
    """One row per run of a reward with a target: the epochs it took to reach it.

    Columns: ``model, reward, algorithm, seed, target, epochs, horizon, censored``.
    ``epochs`` is ``inf`` for a run that never reached the target (``censored``);
    ``horizon`` is the number of epochs the run trained, so a censored run's
    epochs to target is known only to exceed it.  ``forwards`` is the network
    forwards and backwards spent up to that epoch (``nfe_total`` summed; ``inf`` when
    censored, NaN for logs without the count), ``forwards_horizon`` the run's total.
    """
    cols = [*RUN_KEYS, "target", "epochs", "horizon", "censored", "forwards", "forwards_horizon"]
    rows = []
    if curves.empty:
        return pd.DataFrame(columns=cols)
    for keys, s in curves.groupby(RUN_KEYS):
        if keys[1] not in targets:
            continue
        s = s.sort_values("epoch")
        tgt = float(targets[keys[1]])
        e = epochs_to_target(s["epoch"], s["reward_mean"], tgt, smooth)
        cum = cumulative_forwards(s)
        fw = fwh = math.nan
        if cum is not None:
            fwh = float(cum[-1])
            fw = float(cum[int(np.nonzero(s["epoch"].to_numpy() + 1 == e)[0][0])]) if np.isfinite(e) else math.inf
        rows.append({**dict(zip(RUN_KEYS, keys)), "target": tgt, "epochs": e,
                     "horizon": int(s["epoch"].max()) + 1, "censored": not np.isfinite(e),
                     "forwards": fw, "forwards_horizon": fwh})
    return pd.DataFrame(rows, columns=cols)


def matched_reward_runs(points: pd.DataFrame, reward_col: str, metrics: list[str], levels: list[float]) -> pd.DataFrame:
    """One row per (run, level, metric): the metric interpolated at the matched reward
    level along the run's checkpoints, the base model prepended, exactly as
    :func:`matched_reward_table` does before averaging.  NaN where the run never
    reaches the level.  Columns: ``model, reward, algorithm, seed, level, metric, value``."""
    cols = [*RUN_KEYS, "level", "metric", "value"]
    rows = []
    if points.empty:
        return pd.DataFrame(columns=cols)
    runs = points[points["epoch"] >= 0]
    base = points[points["epoch"] < 0]
    for keys, s in runs.groupby(RUN_KEYS):
        b = base[(base["model"] == keys[0]) & (base["reward"] == keys[1])]
        s2 = pd.concat([b.assign(seed=keys[3]), s]) if len(b) else s
        for level in levels:
            for metric in metrics:
                if metric not in s:
                    continue
                rows.append({**dict(zip(RUN_KEYS, keys)), "level": float(level), "metric": metric,
                             "value": interpolate_at_reward(s2, reward_col, metric, level)})
    return pd.DataFrame(rows, columns=cols)
