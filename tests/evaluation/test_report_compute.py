"""Matched compute and credit in the report: forwards to target from the trainer's
forward counts, reward against forwards, and an objective's own step weights laid
beside PCPO's credit."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from evaluation.collapse import epochs_to_target_runs, epochs_to_target_table


def curves(per_epoch: dict, reach: dict, epochs: int = 6) -> pd.DataFrame:
    """Algorithms with a fixed ``nfe_total`` per epoch, reaching reward 1 at a 0-based epoch."""
    rows = []
    for alg, nfe in per_epoch.items():
        for seed in (0, 1):
            for e in range(epochs):
                hit = reach[alg] is not None and e >= reach[alg]
                rows.append({"model": "m", "reward": "r", "algorithm": alg, "seed": seed, "epoch": e,
                             "reward_mean": 1.0 if hit else 0.0, "clipfrac": 0.0, "nfe_total": nfe})
    return pd.DataFrame(rows)


def test_forwards_to_target_sums_the_forward_counts_to_the_hit_epoch():
    c = curves({"cheap": 100, "dear": 300, "never": 50}, {"cheap": 3, "dear": 1, "never": None})
    runs = epochs_to_target_runs(c, {"r": 0.5}).set_index(["algorithm", "seed"])
    assert runs.loc[("cheap", 0), "epochs"] == 4 and runs.loc[("cheap", 0), "forwards"] == 400
    assert runs.loc[("dear", 1), "epochs"] == 2 and runs.loc[("dear", 1), "forwards"] == 600
    assert math.isinf(runs.loc[("never", 0), "forwards"]) and runs.loc[("never", 0), "forwards_horizon"] == 300
    t = epochs_to_target_table(c, {"r": 0.5}).set_index("algorithm")
    # fewer epochs is not fewer forwards: the two axes rank these runs differently
    assert t.loc["dear", "epochs_mean"] < t.loc["cheap", "epochs_mean"]
    assert t.loc["dear", "forwards_mean"] > t.loc["cheap", "forwards_mean"]
    # censored: the forwards of the run plus one more epoch's, as epochs count H + 1
    assert t.loc["never", "forwards_mean"] == pytest.approx(350) and t.loc["never", "epochs_mean"] == 7


def test_logs_without_forward_counts_give_no_forwards_column():
    c = curves({"a": 1}, {"a": 2}).drop(columns=["nfe_total"])
    t = epochs_to_target_table(c, {"r": 0.5})
    assert "forwards_mean" not in t and t["epochs_mean"].iloc[0] == 3


def test_reward_against_forwards_plot(tmp_path):
    from evaluation.report import plot_curves_vs_forwards

    c = curves({"a": 100, "pcpo-a": 120}, {"a": 2, "pcpo-a": 1})
    p = plot_curves_vs_forwards(c, "reward_mean", "reward", tmp_path / "f.png", "t")
    assert p is not None and p.stat().st_size > 1000
    assert plot_curves_vs_forwards(c.drop(columns=["nfe_total"]), "reward_mean", "r", tmp_path / "g.png", "t") is None


def test_credit_table_lays_an_objective_weight_beside_pcpo(tmp_path):
    from evaluation.report import credit_table, plot_credit_weights

    native = [4.0, 2.0, 1.0, 1.0]
    runs = {"tempflow_grpo": {"objective_weight": [2.0, 1.0, 0.5, 0.5], "objective_pool": [0, 1, 2]},
            "pcpo-flow_grpo": {}, "flow_grpo": {}}
    for alg, extra in runs.items():
        d = tmp_path / "runs" / "flow" / "r" / alg / "seed0"
        d.mkdir(parents=True)
        credit = {"native": native, "train_weight": [1.0, 1.0, 1.0, 1.0], "grid_weight": native,
                  "sigma": [0.1] * 4, "timesteps": [1.0, 0.75, 0.5, 0.25], **extra}
        (d / "config.json").write_text(json.dumps({"algorithm": alg, "credit": credit}))
    t = credit_table(tmp_path)
    tf = t[t["algorithm"] == "tempflow_grpo"].sort_values("step")
    assert list(tf["credit"].unique()) == ["objective"]
    np.testing.assert_allclose(tf["weight"].to_numpy()[:3], [8.0, 2.0, 0.5])
    assert math.isnan(tf["weight"].iloc[3])  # not a trained step
    np.testing.assert_allclose(tf["share"].to_numpy()[:3], np.array([8.0, 2.0, 0.5]) / 10.5)
    pc = t[t["algorithm"] == "pcpo-flow_grpo"]
    assert (pc["credit"] == "pcpo").all() and pc["share"].sum() == pytest.approx(1.0)
    assert (t[t["algorithm"] == "flow_grpo"]["credit"] == "native").all()
    assert plot_credit_weights(tmp_path, tmp_path / "c.png") is not None
