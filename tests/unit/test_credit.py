"""Credit weights: the CLI's numbers, PCPO's invariants, and the reshaped DDIM sigma."""
import json
import subprocess
import sys

import pytest
import torch

from pcpo.credit import ddim_pcpo_sigma, plan_credit, sd15_schedule
from pcpo.models.base import ScheduleSpec


def run_cli(*args):
    out = subprocess.run([sys.executable, "-m", "pcpo.cli", "credit", *args], capture_output=True, text=True, check=True)
    return out.stdout


def test_cli_ddim_sd15_json():
    t = json.loads(run_cli("--sampler", "ddim", "--scheduler", "sd15", "--steps", "50", "--eta", "1.0", "--json"))
    for key in ("timesteps", "native", "pcpo", "native_sum", "pcpo_sum"):
        assert key in t
    native = torch.tensor(t["native"], dtype=torch.float64)
    assert len(native) == 50 and t["timesteps"][0] == 981 and t["timesteps"][-1] == 1
    assert float(native.mean()) == pytest.approx(0.5169, abs=1e-3)
    assert int(native.argmax()) == 48  # the next-to-last step carries the most credit
    assert len(set(round(p, 12) for p in t["pcpo"])) == 1  # every PCPO weight equal
    assert t["pcpo_sum"] == pytest.approx(t["native_sum"], rel=1e-12)
    assert t["sigma_sampling"][0] == pytest.approx(0.4467, abs=1e-4)
    assert t["sigma_native"][0] == pytest.approx(0.4545, abs=1e-4)


def test_cli_table_and_plot(tmp_path):
    png = tmp_path / "fig2.png"
    text = run_cli("--sampler", "flow-dance", "--steps", "16", "--noise-level", "0.3", "--shift", "3", "--plot", str(png))
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].split()[:2] == ["step", "timestep"] and len(lines) == 1 + 16
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = run_cli("--sampler", "flow-grpo", "--steps", "10", "--noise-level", "0.7")
    assert len([ln for ln in text.splitlines() if ln and ln[0] == " "]) == 10


@pytest.mark.parametrize("root", ["paper", "exact"])
def test_reshaped_sigma_identity(root):
    """The reshaped sigma~ gives every step the constant w* (docs/method.md §3b).

    ``exact``: the true mean-sensitivity C~ = c1 - sqrt(1 - a' - s^2) over s equals w*.
    ``paper``: docs/method.md's closed form (its larger root, 0.4467 at t = 981)
    satisfies (c1 + sqrt(1 - a' - s^2)) / s = w*, the same relation with the
    direction term's sign flipped; its true sensitivity stays near the native one.
    """
    spec = sd15_schedule()
    w_star = 4.5
    plan = plan_credit(spec, "ddim", 50, eta=1.0, proportional=True, w_star=w_star, sigma_root=root)
    g = plan.sample_grid
    c1 = (1 - g.alpha_prod).sqrt() / (g.alpha_prod / g.alpha_prod_next).sqrt()
    rest = (1 - g.alpha_prod_next - g.std**2).sqrt()
    if root == "exact":
        torch.testing.assert_close(g.native_weight, torch.full((50,), w_star, dtype=torch.float64), rtol=1e-10, atol=0)
    else:
        torch.testing.assert_close((c1 + rest) / g.std, torch.full((50,), w_star, dtype=torch.float64), rtol=1e-10, atol=0)
        assert float(g.std[0]) == pytest.approx(0.4467, abs=1e-4)
        # the paper root's true sensitivity tracks the native weights within 12%
        assert ((g.native_weight / plan.native - 1).abs() < 0.12).all()
    # training weight: the native mean everywhere = w* / 8.706
    assert torch.allclose(plan.train_weight, plan.native.mean().expand(50))
    assert w_star / float(plan.native.mean()) == pytest.approx(8.706, abs=1e-3)


def test_w_star_too_small_is_a_clear_error():
    spec = sd15_schedule()
    plan = plan_credit(spec, "ddim", 50)
    with pytest.raises(ValueError, match="w_star"):
        ddim_pcpo_sigma(plan.native_grid.alpha_prod, plan.native_grid.alpha_prod_next, 0.01)


@pytest.mark.parametrize("sampler,level", [("flow-dance", 0.3), ("flow-grpo", 0.7)])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [10, 16])
def test_flow_pcpo_weights_proportional_to_ds(sampler, level, shift, steps):
    plan = plan_credit(ScheduleSpec("flow", shift=shift), sampler, steps, noise_level=level, proportional=True)
    g = plan.sample_grid
    ds = g.timesteps - g.next_timesteps
    assert float(ds.sum()) == pytest.approx(1.0, abs=1e-12)
    ratio = plan.train_weight / ds
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-12, atol=0)
    assert float(plan.train_weight.sum()) == pytest.approx(float(plan.native.sum()), rel=1e-12)
    # the sampler is unchanged for flow models
    assert torch.equal(g.std, plan.native_grid.std)


def test_flow_native_weight_formula():
    """w(s) = sqrt(ds)/eta * (1 + (1 - s) eta^2 / (2 s)) for the DanceGRPO form (docs/method.md §2)."""
    plan = plan_credit(ScheduleSpec("flow", shift=3.0), "flow-dance", 16, noise_level=0.3)
    g = plan.sample_grid
    s, ds = g.timesteps, g.timesteps - g.next_timesteps
    ref = ds.sqrt() / 0.3 * (1 + (1 - s) * 0.09 / (2 * s))
    torch.testing.assert_close(plan.native, ref, rtol=1e-12, atol=0)


def test_native_baseline_plan_is_identity():
    plan = plan_credit(sd15_schedule(), "ddim", 20, eta=1.0)
    assert torch.equal(plan.train_weight, plan.native)
    torch.testing.assert_close(plan.ratio_scale, torch.ones(20, dtype=torch.float64))


def test_cli_config_prints_what_train_uses():
    """`pcpo credit --config` as a process: the SD3.5-M Flow-GRPO run's credit (the authors' zeta on the
    pipeline grid), not the uniform grid of `--sampler`."""
    from tests.helpers import ROOT

    text = run_cli("--config", str(ROOT / "config/paper/flowgrpo_sd35m_pickscore.yaml"))
    head = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert "pcpo-flow_grpo" in head[0] and "zeta 4.315213464" in head[1] and "9 of 10" in head[1]
    rows = [ln.split() for ln in text.splitlines() if ln and ln[0] == " "]
    assert len(rows) == 10 and float(rows[-1][1]) == pytest.approx(0.0089, abs=1e-4)  # the pipeline's short last step
