"""Coefficients-Preserving Sampling (CPS; Wang & Yu 2025, arXiv 2509.05952) on Flow-GRPO,
ported from IamCreateAI/FlowCPS at commit 814c359 (``flow_grpo/diffusers_patch/
sd3_sde_with_logprob.py``, ``sde_step_with_logprob()``), the same code as the
``sde_type == 'cps'`` branch of yifan123/flow_grpo at 54809b5.

A sampler change only.  With ``s`` the flow time (1 = noise), ``s'`` the next one,
``x0^ = x - s v`` and ``eps^ = x + (1 - s) v``, one step is

    x' = (1 - s') x0^ + sqrt(s'^2 - std^2) eps^ + std z,    std = s' sin(a pi / 2)

so the coefficients of x0 and of the (unit-variance) noise in x' are ``1 - s'`` and
``sqrt((s'^2 - std^2) + std^2) = s'``: exactly the deterministic schedule's, whatever the
noise level ``a`` (the Flow-GRPO SDE adds more noise than the schedule removes).  The last
step (``s' = 0``) is deterministic at any level.

The step's log-probability is the reference's, "remove all constants":
``-mean_d (x' - mean)^2`` (no 1 / (2 std^2)), so the PPO ratio and its clip act on
``exp(-mean_d[(x' - mu_new)^2 - (x' - mu_old)^2])``, as there.  PCPO's variants use the
matching form, the exact Gaussian log-ratio of the step with their own credit.

Everything else is Flow-GRPO's (``baselines/flow_grpo.py``); the KL to the reference model
divides by the CPS step std itself (train_sd3.py's ``std_dev_t`` is ``s' sin(a pi / 2)``
here), i.e. ``kl_form: gaussian``.  The sampler registers through
``pcpo.rollout.steps.register_step`` (sampler ``flow-cps``).
"""
import dataclasses
import math

import torch

from baselines import flow_grpo
from pcpo.algorithms import FRAMEWORKS, Ref, register_framework
from pcpo.rollout.steps import reduce_dims, register_step

REPO = "IamCreateAI/FlowCPS@814c359"
STEP = f"{REPO} flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_step_with_logprob()"
TRAIN = f"{REPO} scripts/train_sd3.py, main()"
FG = "yifan123/flow_grpo@54809b5 flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, sde_step_with_logprob(), " \
     "`sde_type == 'cps'`"


def cps_std(s_next: torch.Tensor, level) -> torch.Tensor:
    """``std_dev_t = sigma_prev * sin(noise_level * pi / 2)``."""
    return s_next * torch.sin(torch.as_tensor(level, dtype=s_next.dtype, device=s_next.device) * (math.pi / 2))


def cps_coef_and_std(s, s_next, level, s_max=None):
    """(C, std, std): ``mean = x (1 - s' + c) - v ((1 - s') s - c (1 - s))``, ``c = sqrt(s'^2 - std^2)``."""
    std = cps_std(s_next, level)
    c = (s_next**2 - std**2).clamp_min(0).sqrt()
    return (1 - s_next) * s - c * (1 - s), std, std


def cps_mean(v, x, s, s_next, level, s_max=None):
    """The reference's order of operations (all broadcast against x)."""
    std = cps_std(s_next, level)
    pred_original_sample = x - s * v
    noise_estimate = x + v * (1 - s)
    return pred_original_sample * (1 - s_next) + noise_estimate * (s_next**2 - std**2).clamp_min(0).sqrt()


def cps_log_prob(prev_sample, mean, std, reduction="mean"):
    """``log_prob = -((prev_sample.detach() - prev_sample_mean) ** 2)``, reduced over image dims."""
    return reduce_dims(-((prev_sample - mean) ** 2), reduction)


register_step("cps", cps_coef_and_std, cps_mean, log_prob=cps_log_prob, zero_std_steps=True)

base = FRAMEWORKS.get("flow_grpo")
REFERENCES = {
    **{k: Ref(v.value, "as Flow-GRPO: " + v.source, v.note, v.deliberate) for k, v in flow_grpo.REFERENCES.items()},
    "sampler": Ref("flow-cps", STEP + ": `std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)`; "
                   "`prev_sample_mean = pred_original_sample * (1 - sigma_prev) + noise_estimate * "
                   "torch.sqrt(sigma_prev**2 - std_dev_t**2)`; log-prob `-((prev_sample.detach() - "
                   "prev_sample_mean) ** 2)` (" + FG + ")"),
    "noise_level": Ref(0.7, TRAIN + " compute_log_prob(): `noise_level=config.sample.noise_level`; flow_grpo "
                       "config/base.py `sample.noise_level = 0.7`"),
    "proportional": Ref(False, STEP + ": native credit; the log-ratio is the difference of the reference's "
                        "constant-free log-probs"),
    "kl_form": Ref("gaussian", TRAIN + ": `kl_loss = ((prev_sample_mean - prev_sample_mean_ref) ** 2).mean(...) / "
                   "(2 * std_dev_t ** 2)` with the CPS step's `std_dev_t = sigma_prev * sin(...)`, the step std"),
}

register_framework(dataclasses.replace(
    base,
    name="cps",
    description="CPS: Flow-GRPO with Coefficients-Preserving Sampling (x0 and noise coefficients of the "
                "deterministic schedule at every step) and the reference's constant-free log-prob",
    samplers={"flow": "flow-cps"},
    kl_form="gaussian",
    references=REFERENCES,
    config_references={},
))
