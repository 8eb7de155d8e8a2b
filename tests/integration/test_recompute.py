"""Recomputed old log-probs (train.old_logprobs): a rollout whose forward rounds
differently from the training forward (simulated: a deterministic bf16-sized
perturbation of the rollout's predictions only) trips the first-step gate without
recompute; with recompute the first-step |log ratio| is exactly 0 and the update
equals one computed from the exact old values of the same trajectories."""
import copy

import pytest
import torch

import pcpo.trainer as trainer_mod
from tests.helpers import adam_step_atol, reordered_sum_tol
from tests.integration.test_trainer import make_config

# every test here trains or samples with the tiny models (a trainer, a CLI subprocess or a rollout):
# seconds to minutes each on 2 cores, so they run in the full suite, not in the fast tier
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

BF16_EPS = 2.0**-8  # bf16's relative rounding step


def _perturbed_rollout(monkeypatch):
    """Make the trainer's rollout see predictions off by a bf16 rounding step (sign by element)."""
    real = trainer_mod.rollout

    def fake(adapter, *args, **kwargs):
        def predict(x, t, c, u, g):
            p = adapter.predict_guided(x, t, c, u, g)
            sign = torch.where(torch.arange(p.numel()).reshape(p.shape) % 2 == 0, 1.0, -1.0).to(p)
            return p * (1 + BF16_EPS * sign)

        return real(adapter, *args, predict_fn=predict, **kwargs)

    monkeypatch.setattr(trainer_mod, "rollout", fake)


@pytest.mark.parametrize("algorithm,family", [("ddpo", "eps"), ("pcpo-dancegrpo", "flow")])
def test_gate_fires_without_recompute_and_is_zero_with_it(tmp_path, tiny_models, monkeypatch, algorithm, family):
    from pcpo.config import load_config
    from pcpo.trainer import Trainer, TrainingError

    _perturbed_rollout(monkeypatch)
    # a tight gate: the random tiny models' predictions are small, so the mismatch is too
    cfg = load_config(make_config(tmp_path, tiny_models[family], family, epochs=1, old_logprobs="rollout",
                                  logratio_tolerance=1e-8))
    with pytest.raises(TrainingError, match="rollout and the training forward pass disagree.*old_logprobs: recompute"):
        Trainer(cfg, algorithm, 0, tmp_path / "a", progress=False).run()
    cfg = load_config(make_config(tmp_path, tiny_models[family], family, epochs=1, old_logprobs="recompute",
                                  logratio_tolerance=1e-8))
    tr = Trainer(cfg, algorithm, 0, tmp_path / "b", progress=False)
    assert "old log-probs: recomputed in the training layout" in tr.describe()
    row, audit = tr.epoch(0)
    assert row["logratio_first_max"] == 0.0  # exactly: the same forward, the same layout
    # the rollout's own mismatch is measured before it is replaced, and lands in the logs
    assert row["rollout_mismatch_max"] > 1e-8 and row["rollout_mismatch_mean"] > 0
    assert max(a["rollout_mismatch_max"] for a in audit) == pytest.approx(row["rollout_mismatch_max"])


def _exact_old(tr, traj):
    """Old log-probs, predictions and noise of the unperturbed model, one step at a time over
    the whole batch (a layout unlike the trainer's)."""
    ex = copy.copy(traj)
    lp, pr, z = traj.log_probs.clone(), traj.preds.clone(), traj.noise.clone()
    m = tr.model
    m.denoiser.train()
    with torch.no_grad():
        for i in range(traj.num_steps):
            idx = torch.full((traj.batch_size,), i)
            p = m.predict_guided(traj.states[:, i], tr.grid.model_time(idx), traj.cond, traj.uncond,
                                 tr.st.guidance_scale)
            out = tr.grid.step(idx, p, traj.states[:, i], prev_sample=traj.states[:, i + 1])
            lp[:, i], pr[:, i], z[:, i] = out.log_prob, p, out.noise
    ex.log_probs, ex.preds, ex.noise = lp, pr, z
    return ex


@pytest.mark.parametrize("algorithm,family", [("ddpo", "eps"), ("pcpo-ddpo", "eps"), ("flow_grpo", "flow")])
def test_recompute_gives_the_update_of_the_exact_old_policy(tmp_path, tiny_models, monkeypatch, algorithm, family):
    from pcpo.config import load_config
    from pcpo.rollout import rollout
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models[family], family, epochs=1, old_logprobs="recompute"))
    a = Trainer(cfg, algorithm, 0, tmp_path / "a", progress=False)
    cfg_b = load_config(make_config(tmp_path, tiny_models[family], family, epochs=1, old_logprobs="rollout"))
    b = Trainer(cfg_b, algorithm, 0, tmp_path / "b", progress=False)
    prompts, meta, gids = a.sample_prompts()
    m = a.model

    def predict(x, t, c, u, g):
        p = m.predict_guided(x, t, c, u, g)
        return p * (1 + BF16_EPS)

    m.denoiser.eval()
    traj = rollout(m, prompts, a.grid, a.st.guidance_scale, torch.Generator().manual_seed(5), meta, gids,
                   predict_fn=predict)
    traj.rewards = torch.linspace(0, 1, traj.batch_size)
    traj.advantages = a.advantages(traj)
    exact = _exact_old(b, traj)
    assert (exact.log_probs - traj.log_probs).abs().max() > 1e-4  # the perturbation matters
    sa = a.update(traj, 0)["scalars"]
    sb = b.update(exact, 0)["scalars"]
    assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-5, abs=1e-9)
    assert sa["logratio_first_max"] == 0.0 and sb["logratio_first_max"] < 1e-5
    # b's old values come from another batch layout, so its ratios are 1 only up to rounding
    # (delta = its first-step |log rho|): each gradient term is scaled by at most 1 + delta, and
    # the terms are summed in another order.  Before the step: the gradient norm within that.
    # After it: the weights within a tenth of an Adam step, since Adam can turn a rounding-level
    # difference of a near-zero gradient into a fraction of lr (tests.helpers.adam_step_atol).
    delta = sb["logratio_first_max"]
    terms = traj.batch_size * traj.num_steps * traj.states.shape[-2:].numel()  # samples x steps x positions
    assert sa["grad_norm"] == pytest.approx(sb["grad_norm"], rel=2 * delta + reordered_sum_tol(terms), abs=0)
    for pa, pb in zip(a.params, b.params):
        torch.testing.assert_close(pa, pb, rtol=0, atol=adam_step_atol(sa["lr"], sa["optimizer_steps"]))
    # every trained step's old log-prob is now the exact one (Flow-GRPO never trains the last step)
    cols = slice(0, a.trained_steps()) if a.st.step_selection == "first" else slice(None)
    torch.testing.assert_close(traj.log_probs[:, cols], exact.log_probs[:, cols], rtol=0, atol=1e-5)


def test_auto_recomputes_only_off_float32_cpu(tmp_path, tiny_models):
    from pcpo.config import ConfigError, load_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=1))
    assert cfg.train.old_logprobs == "auto" and not Trainer(cfg, "ddpo", 0, tmp_path / "a", progress=False).recompute
    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=1), {"model": {"dtype": "bfloat16"}})
    assert Trainer(cfg, "ddpo", 0, tmp_path / "b", progress=False).recompute
    with pytest.raises(ConfigError, match="train.old_logprobs"):
        load_config(make_config(tmp_path, tiny_models["eps"], "eps", old_logprobs="sometimes"))


def test_bf16_full_fine_tune_scores_at_the_denoisers_dtype(tmp_path, tiny_models):
    """A bf16 full fine-tune keeps its trainable weights in float32; the recompute and the update must run
    the denoiser at that dtype, as the rollout does (dancegrpo_sd14_hpsv21 failed here with a bf16 input
    to float32 weights), and then agree with the rollout exactly."""
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    cfg = load_config(make_config(tmp_path, tiny_models["eps"], "eps", epochs=1),
                      {"model": {"dtype": "bfloat16"}, "lora": {"enabled": False}})
    tr = Trainer(cfg, "ddpo", 0, tmp_path / "a", progress=False)
    assert tr.recompute and not tr.lora and tr.model.dtype == torch.float32
    row, _ = tr.epoch(0)
    assert row["logratio_first_max"] == 0.0 and torch.isfinite(torch.tensor(row["loss"]))
