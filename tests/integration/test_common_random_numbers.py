"""Common random numbers: two algorithms trained with the same seed see the same prompts,
initial noise and per-step noise in every epoch, whatever their earlier epochs consumed
(DanceGRPO shares one initial noise per group, DiffusionNFT's hook draws training noise,
MixGRPO runs ODE steps), so paired comparisons over seeds compare like with like."""
import pytest
import torch

from tests.integration.test_trainer import make_config

# every test here trains or samples with the tiny models (a trainer, a CLI subprocess or a rollout):
# seconds to minutes each on 2 cores, so they run in the full suite, not in the fast tier
pytestmark = pytest.mark.slow

ALGOS = ["flow_grpo", "dancegrpo", "pcpo-dancegrpo", "mixgrpo", "diffusion_nft"]


def _seen(tmp_path, tiny_models, algorithm, monkeypatch, seed=3, epochs=3):
    import pcpo.trainer as trainer_mod
    from pcpo.config import load_config

    from pcpo.rollout import rollout as real

    seen = []

    def spy(model, prompts, grid, g, gen, meta, gids, **kw):
        traj = real(model, prompts, grid, g, gen, meta, gids, **kw)
        seen.append({"prompts": list(prompts), "x0": traj.states[:, 0].clone(), "z": traj.noise.clone(),
                     "share": kw.get("share_initial_noise", False), "gids": gids.clone()})
        return traj

    monkeypatch.setattr(trainer_mod, "rollout", spy)
    cfg = load_config(make_config(tmp_path, tiny_models["flow"], "flow", epochs=epochs, prompts_per_epoch=2,
                                  group_size=2),
                      {"algorithms": {"mixgrpo": {"noise_schedule_options": {"window_size": 1, "shift_interval": 1}}}})
    trainer_mod.Trainer(cfg, algorithm, seed, tmp_path / algorithm, progress=False).run()
    return seen


def test_every_algorithm_sees_the_same_prompts_and_noise_in_every_epoch(tmp_path, tiny_models, monkeypatch):
    seen = {a: _seen(tmp_path, tiny_models, a, monkeypatch) for a in ALGOS}
    ref = seen["flow_grpo"]
    for a in ALGOS[1:]:
        for e, (mine, theirs) in enumerate(zip(seen[a], ref)):
            assert mine["prompts"] == theirs["prompts"], (a, e)
            # DiffusionNFT's hook replaces the stored per-step noise; what it rolled out with is the same
            if a != "diffusion_nft":
                torch.testing.assert_close(mine["z"], theirs["z"], rtol=0, atol=0)
            if mine["share"]:
                # a group starts from the noise its first member has in the other algorithms
                first = torch.tensor([int((mine["gids"] == g).nonzero()[0]) for g in mine["gids"].tolist()])
                torch.testing.assert_close(mine["x0"], theirs["x0"][first], rtol=0, atol=0)
                assert not torch.equal(mine["x0"], theirs["x0"])
            else:
                torch.testing.assert_close(mine["x0"], theirs["x0"], rtol=0, atol=0)
    # and the epochs differ from each other (the streams are per epoch, not one constant draw)
    assert not torch.equal(ref[0]["x0"], ref[1]["x0"])


def test_another_seed_sees_other_prompts_and_noise(tmp_path, tiny_models, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _seen(tmp_path / "a", tiny_models, "flow_grpo", monkeypatch, seed=3, epochs=1)
    b = _seen(tmp_path / "b", tiny_models, "flow_grpo", monkeypatch, seed=4, epochs=1)
    assert not torch.equal(a[0]["x0"], b[0]["x0"])
