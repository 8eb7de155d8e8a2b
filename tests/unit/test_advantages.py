import pytest
import torch

from pcpo.advantages import PerPromptStatTracker, clip_advantages, group_advantages


def test_group_advantages_zero_mean_unit_std():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(24, generator=g) * 3 + 1
    gid = torch.arange(24) // 6
    adv = group_advantages(r, gid)
    for k in range(4):
        a = adv[gid == k].double()
        assert abs(float(a.mean())) < 1e-6
        assert float(a.std()) == pytest.approx(1.0, abs=1e-5)


def test_group_of_equal_rewards_gives_zeros():
    adv = group_advantages(torch.tensor([2.0, 2.0, 2.0, 1.0, 3.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert torch.equal(adv[:3], torch.zeros(3))
    assert torch.isfinite(adv).all()


def test_global_std_option():
    r = torch.tensor([0.0, 2.0, 10.0, 14.0])
    gid = torch.tensor([0, 0, 1, 1])
    adv = group_advantages(r, gid, global_std=True)
    std = r.double().std()
    torch.testing.assert_close(adv.double(), torch.tensor([-1.0, 1.0, -2.0, 2.0], dtype=torch.float64) / (std + 1e-8), rtol=1e-6, atol=1e-6)


def test_tracker_falls_back_to_batch_stats_below_min_count():
    tr = PerPromptStatTracker(buffer_size=8, min_count=4)
    prompts = ["a", "a", "b", "b"]
    r = torch.tensor([1.0, 3.0, 10.0, 20.0])
    adv = tr.update(prompts, r)
    batch = r.double()
    ref = (batch - batch.mean()) / (batch.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(adv.double(), ref, rtol=1e-6, atol=1e-6)
    # second batch: "a" reaches min_count and uses its own buffer
    adv2 = tr.update(["a", "a", "b"], torch.tensor([5.0, 7.0, 0.0]))
    hist = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    ref_a = (torch.tensor([5.0, 7.0], dtype=torch.float64) - hist.mean()) / (hist.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(adv2[:2].double(), ref_a, rtol=1e-6, atol=1e-6)
    b3 = torch.tensor([5.0, 7.0, 0.0], dtype=torch.float64)  # "b" has 3 < 4: batch stats
    assert float(adv2[2]) == pytest.approx(float((0.0 - b3.mean()) / (b3.std(unbiased=False) + 1e-6)), rel=1e-5)


def test_tracker_buffer_cap_and_state_roundtrip():
    tr = PerPromptStatTracker(buffer_size=3, min_count=1)
    tr.update(["p"] * 5, torch.arange(5.0))
    assert list(tr.buffers["p"]) == [2.0, 3.0, 4.0]
    tr2 = PerPromptStatTracker(buffer_size=3, min_count=1)
    tr2.load_state_dict(tr.state_dict())
    torch.testing.assert_close(tr.update(["p"], torch.tensor([1.0])), tr2.update(["p"], torch.tensor([1.0])))


def test_clip_advantages():
    assert clip_advantages(torch.tensor([-9.0, 0.5, 7.0]), 5.0).tolist() == [-5.0, 0.5, 5.0]
