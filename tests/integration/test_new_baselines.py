"""The extension points and the baselines that use them: MixGRPO (a noise schedule and
the `stochastic` step selection), GRPO-Guard and TempFlow-GRPO (objectives that read the
step context), each checked against an independent formula or the reference's numbers,
and each trained on the tiny world."""
import math

import pytest
import torch

from tests.integration.test_trainer import make_config, read_rows


def test_an_ode_step_is_the_euler_step_and_level_one_is_the_grid_itself():
    from pcpo.rollout.grid import flow_grid

    g = flow_grid(6, 0.7, form="grpo", shift=3.0)
    torch.manual_seed(0)
    x, v = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    idx = torch.tensor([0, 2, 5])
    ode = g.scaled(torch.zeros(6)).step(idx, v, x, noise=torch.randn_like(x))
    ds = (g.timesteps - g.next_timesteps)[idx].reshape(-1, 1, 1, 1).float()
    torch.testing.assert_close(ode.prev_sample, x - ds * v)  # x' = x + dt v with dt = -ds
    z = torch.randn_like(x)
    same, own = g.scaled(torch.ones(6)).step(idx, v, x, noise=z), g.step(idx, v, x, noise=z)
    torch.testing.assert_close(same.prev_sample, own.prev_sample)
    torch.testing.assert_close(same.log_prob, own.log_prob)


def test_mixgrpo_window_slides_as_the_reference():
    from baselines.mixgrpo import window_start
    from pcpo.noise_schedules import schedule_levels

    # progressive, stride 1 every 25 iterations, from 0; 25 steps: starts 0..19 (window inside [0, 23)), then 0
    starts = [window_start(e, 25) for e in range(0, 25 * 22, 25)]
    assert starts == list(range(20)) + [0, 1]
    lv = schedule_levels("mixgrpo_window", 10, 50, {"window_size": 4, "shift_interval": 25})
    assert lv.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="window_size"):
        window_start(0, 5, window_size=4)


def test_grpo_guard_ratio_is_the_noise_times_the_mean_shift():
    """RatioNorm's s (log rho + |dmu|^2 / (2 s^2)) equals mean_d z (mu_theta - mu_old) when
    x' = mu_old + s z: the identity the paper's Eq. 8 rests on, from two Gaussian log-densities."""
    from baselines.grpo_guard import guard_log_ratio
    from pcpo.rollout.steps import gaussian_log_prob

    torch.manual_seed(1)
    mu_old, mu_new = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    s = torch.rand(5, dtype=torch.float64) + 0.1
    z = torch.randn_like(mu_old)
    x_next = mu_old + s.reshape(-1, 1, 1, 1) * z
    lr = gaussian_log_prob(x_next, mu_new, s, "mean") - gaussian_log_prob(x_next, mu_old, s, "mean")
    torch.testing.assert_close(guard_log_ratio(lr, mu_new, mu_old, s), (z * (mu_new - mu_old)).flatten(1).mean(1))


def test_tempflow_weight_is_the_reference_constant_on_sd35_grid():
    """train_sd3_pr.py multiplies by 2.25 * s_t: 1/mean of the nine trained s_t of SD3.5-M's
    10-step Flow-GRPO grid (shift 3, a = 0.7) is 2.25."""
    from baselines.tempflow_grpo import noise_weights
    from pcpo.rollout.grid import flow_grid

    g = flow_grid(10, 0.7, form="grpo", shift=3.0, spacing="pipeline", span=(1.0, 1e-3))
    w = noise_weights(g.std, torch.arange(9))
    assert float(w[0] / g.std[0]) == pytest.approx(2.25, abs=0.005)
    assert float(w[:9].mean()) == pytest.approx(1.0)


def test_pcpo_refuses_a_likelihood_free_objective_and_a_graded_schedule():
    import dataclasses

    from pcpo.algorithms import FRAMEWORKS, NotTransformable, get_algorithm, register_framework
    from pcpo.noise_schedules import register_noise_schedule
    from pcpo.objectives import register_objective

    @register_objective("test_mse_only", likelihood=False)
    def _mse(ctx):
        return ctx.out.mean.flatten(1).pow(2).mean(1), torch.zeros_like(ctx.log_ratio, dtype=torch.bool)

    register_noise_schedule("test_half", count=lambda T, **_: T, binary=False)(lambda T, epoch: torch.full((T,), 0.5))
    base = FRAMEWORKS.get("flow_grpo")
    try:
        register_framework(dataclasses.replace(base, name="test_nolik", objective="test_mse_only"))
        register_framework(dataclasses.replace(base, name="test_graded", noise_schedule="test_half"))
        with pytest.raises(NotTransformable, match="does not use per-step log-likelihood ratios"):
            get_algorithm("pcpo-test_nolik")
        with pytest.raises(NotTransformable, match="changes step noise levels"):
            get_algorithm("pcpo-test_graded")
        assert get_algorithm("test_nolik").objective == "test_mse_only"
        with pytest.raises(ValueError, match="objective 'nope' is not registered"):
            dataclasses.replace(base, name="x", objective="nope")
    finally:
        for n in ("test_nolik", "test_graded"):
            FRAMEWORKS._items.pop(n, None)


@pytest.mark.slow  # trains on the tiny world
@pytest.mark.parametrize("algorithm", ["mixgrpo", "pcpo-mixgrpo", "grpo_guard", "tempflow_grpo"])
def test_new_baselines_train_on_the_tiny_world(tmp_path, tiny_models, algorithm):
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["flow"], "flow", epochs=3),
                      {"sampling": {"steps": 6},
                       "algorithms": {"mixgrpo": {"noise_schedule_options": {"window_size": 2, "shift_interval": 1}}}})
    tr = Trainer(cfg, algorithm, seed=0, out_dir=tmp_path / "run", progress=False)
    tr.run()
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 3
    B, T = 4, 6
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["grad_norm"]) > 0, r
        assert float(r["logratio_first_max"]) < 1e-4
        # matched compute: every guided forward counted, CFG twice (guidance 2.0 in make_config)
        assert int(r["nfe_rollout"]) == B * T * 2
        assert int(r["nfe_train"]) == B * tr.trained_steps() * 2 == int(r["nfe_backward"])
        assert int(r["nfe_total"]) == sum(int(r[f"nfe_{k}"]) for k in
                                          ("rollout", "hook", "recompute", "train", "reference", "backward"))
    if "mixgrpo" in algorithm:
        assert tr.trained_steps() == 2 and all(r["stochastic_steps"] == "2" for r in rows)
        # the window moved every epoch: 0-1, 1-2, 2-3
        assert tr.stochastic.nonzero().reshape(-1).tolist() == [2, 3]
        audit = read_rows(tmp_path / "run" / "credit_audit.csv")
        trained = {(int(a["epoch"]), int(a["step"])) for a in audit if float(a["count"]) > 0}
        assert trained == {(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)}
    if algorithm == "tempflow_grpo":
        assert int(rows[0]["nfe_reference"]) == B * tr.trained_steps() * 2  # its KL term's reference forwards
        # the report's credit plot reads the objective's own step factor from config.json
        import json

        from baselines.tempflow_grpo import noise_weights

        credit = json.loads((tmp_path / "run" / "config.json").read_text())["credit"]
        K = tr.trained_steps()
        assert credit["objective_pool"] == list(range(K))  # Flow-GRPO trains the first int(0.99 T) steps
        torch.testing.assert_close(torch.tensor(credit["objective_weight"], dtype=torch.float64),
                                   noise_weights(tr.grid.std, torch.arange(K)))
