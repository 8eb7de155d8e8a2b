"""DGPO, Direct Group Preference Optimization (Luo, Hu & Tang, ICLR 2026), ported from
Luo-Yihong/DGPO at commit 01ceb4b (``scripts/train_sd3_dgpo.py``), in its default mode
(rollout with CFG, training without) with ``config/dgpo.py: pickscore_sd3_4gpu``:

* **Rollouts** with the ODE (``sample.noise_level = 0``) and CFG 4.5; only the end point
  ``x0`` of each trajectory is used.
* **Training states**: ``M = 4`` step indices drawn without replacement from the first
  ``trunc_steps + 1 = 7`` of the 10 (``random.sample``), the same for every sample; at step
  ``j``, ``x_t = (1 - s_j) x0 + s_j eps`` with one ``eps`` shared by the images of a group
  (``use_shared_noise``), and the flow-matching target ``eps - x0``.
* **Loss** (``compute_group_dgpo_loss_allreduce``): with ``dsm = mean (target - v_theta)^2``
  (conditional prediction only) and ``ref_dsm`` the same for the adapter-free model,
  each group's weight is ``sigma(sum_i A_i beta_dpo (dsm_i - ref_dsm_i) / G)`` (no gradient)
  and the loss is ``mean(w A dsm)``: the gradient of the group-level DPO loss
  ``-log sigma(beta_dpo / G sum_i A_i (ref_dsm_i - dsm_i))``.  ``dsm`` is detached where the
  "ratio" ``exp(old_dsm - dsm)`` leaves ``1 +- clip_range`` on the advantage's side, with
  ``old_dsm`` from a slow copy of the weights (``ema_ref``, soft-updated with decay
  ``min(0.3, 0.001 * step)``; it also samples the rollouts after 200 optimizer steps).
  Plus ``beta * mean (v_theta - v_ref)^2`` (beta 1e-3).
* Advantages, EMA of the weights, LoRA and optimiser as Flow-GRPO, whose code DGPO builds on.

On the contracts: the ``ode`` noise schedule; the ``dgpo_reference`` rollout hook (the slow
copy: it samples after the switch, forward-noises the stored states with group-shared noise,
stores its own predictions there as ``ctx.old_pred``, drops the unconditional input so that
training and reference predictions are conditional, and follows the weights after each
epoch); the ``dgpo`` step selection; the ``dgpo`` objective, registered ``likelihood=False``,
which reads the reference model's prediction (``ctx.ref_pred()``, a lazy forward shared with
the KL term) and the rows' groups (``ctx.group_ids``); and ``micro_batches: groups``, which
keeps every group whole in one micro-batch as the reference's sampler does.  The loss is a
function of flow-matching errors, not of the sampler's step likelihood, so PCPO is not
defined on it and ``pcpo-dgpo`` is refused with that reason.

Deliberate (named in the card): the Euler ODE of the flow grid instead of the reference's
DPM-Solver++ (the loss sees only the end point and the grid's times); the slow copy's
predictions made once per epoch after the rollout and its update once per epoch (the
reference's configs take one optimizer step per epoch, where both are the same); the group
size in the loss counted from the batch's groups (whole by construction) rather than read
from the config.
"""
from __future__ import annotations

import torch

from pcpo.algorithms import Framework, Ref, register_framework
from pcpo.objectives import StepContext, register_objective
from pcpo.rollout_hooks import RolloutHook, register_rollout_hook
from pcpo.trained_steps import register_step_selector

REPO = "Luo-Yihong/DGPO@01ceb4b"
TRAIN = f"{REPO} scripts/train_sd3_dgpo.py, main()"
LOSS = f"{REPO} scripts/train_sd3_dgpo.py, compute_group_dgpo_loss_allreduce()"
NOISE = f"{REPO} scripts/train_sd3_dgpo.py, generate_shared_noise_for_groups()"
STEPS = f"{REPO} scripts/train_sd3_dgpo.py, generate_shared_sampled_timesteps()"
PREDV = f"{REPO} scripts/train_sd3_dgpo.py, predict_v()"
SAMPLER = f"{REPO} scripts/train_sd3_dgpo.py, DistributedKRepeatSampler.__iter__()"
CFG = f"{REPO} config/dgpo.py, pickscore_sd3_4gpu()"
COMP = f"{REPO} config/dgpo.py, compressibility()"
BASE = f"{REPO} config/base.py, get_config()"
TRACK = f"{REPO} flow_grpo/stat_tracking.py, PerPromptStatTracker.update()"
EMA = f"{REPO} flow_grpo/ema.py, EMAModuleWrapper"

#: ``config.num_train_timesteps = 4`` in every DGPO config: the steps trained per epoch
TRAINED_STEPS = 4


def pool_size(T: int, fraction: float) -> int:
    """The steps the trained ones are drawn from: the first ``int(T * fraction)`` (``trunc_steps + 1``)."""
    return max(1, int(T * fraction + 1e-9))


def _count(T: int, fraction: float) -> int:
    return min(TRAINED_STEPS, pool_size(T, fraction))


@register_step_selector("dgpo", _count)
def select_shared(T: int, fraction: float, B: int, generator: torch.Generator) -> torch.Tensor:
    """``random.sample(range(trunc_steps + 1), M)``: M distinct steps in random order, the same for
    every sample (the reference broadcasts them to every process; here each process draws its own,
    and a group never spans two processes)."""
    steps = torch.randperm(pool_size(T, fraction), generator=generator)[:_count(T, fraction)]
    return steps.unsqueeze(0).expand(B, -1).clone()


def flow_matching_error(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(target - v).square().reshape(B, -1).mean(dim=1)``."""
    return (target - v).square().reshape(v.shape[0], -1).mean(dim=1)


def group_weights(per_sample: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``sigmoid`` of each group's sum of ``per_sample``, given back per row."""
    gids, inverse = torch.unique(group_ids.to(per_sample.device), return_inverse=True)
    sums = torch.zeros(len(gids), dtype=per_sample.dtype, device=per_sample.device)
    sums.scatter_add_(0, inverse, per_sample)
    return torch.sigmoid(sums)[inverse]


@register_objective("dgpo", likelihood=False)
def dgpo_loss(ctx: StepContext):
    """DGPO's clipped group preference loss on one micro-batch of whole groups at one step."""
    o = {"beta_dpo": 10.0, "adv_clip_max": 5.0, "clip_dsm": True, **ctx.options}
    if ctx.group_ids is None:
        raise ValueError("the dgpo objective needs the rows' group ids (StepContext.group_ids)")
    # float32 at least, as the reference's `(target_v - model_v)` with a float32 target under bf16 autocast
    dt = torch.float64 if ctx.pred.dtype == torch.float64 else torch.float32
    v = ctx.pred.to(dt)
    x, x0 = ctx.sample.to(v.device, dt), ctx.final_sample.to(v.device, dt)
    s = ctx.grid.timesteps[ctx.idx.cpu()].to(device=v.device, dtype=dt)
    target = (x - x0) / s.view(-1, *([1] * (x.dim() - 1)))  # eps - x0, from x_t = (1 - s) x0 + s eps
    amax = float(o["adv_clip_max"])
    adv = ctx.advantages.to(v.dtype).clamp(-amax, amax)
    dsm = flow_matching_error(v, target)
    with torch.no_grad():
        old_dsm = flow_matching_error(ctx.old_pred.to(v.device, v.dtype), target)
        ratio = torch.exp(-dsm + old_dsm)
        c = float(ctx.clip_range)
        should_clip = torch.where(adv > 0, ratio > 1.0 + c, ratio < 1.0 - c)
        ref_dsm = flow_matching_error(ctx.ref_pred().to(v.device, v.dtype), target)
    if o["clip_dsm"]:
        dsm = torch.where(should_clip, dsm.detach(), dsm)
    else:
        should_clip = torch.zeros_like(should_clip)
    gids = ctx.group_ids.to(v.device)
    _, inverse, counts = torch.unique(gids, return_inverse=True, return_counts=True)
    G = counts[inverse].to(v.dtype)
    w = group_weights(adv * float(o["beta_dpo"]) * (dsm.detach() - ref_dsm) / G, gids)
    return w.detach() * adv * dsm, should_clip


def slow_copy_decay(step: int, uprate: float = 0.001, uphold: float = 0.3) -> float:
    """``ema_ref_decay = min(0.3, 0.001 * global_step)`` at the optimizer step with ``step`` steps before it."""
    return min(uphold, uprate * max(step, 0))


@register_rollout_hook("dgpo_reference")
class DGPOReference(RolloutHook):
    """DGPO's ``ema_ref``: a slow copy of the trainable weights that samples the rollouts once
    ``global_step > switch_ema_ref``, predicts at the forward-noised training states (the
    ``old_v`` of its clip), and follows the weights after every epoch."""

    def __init__(self, trainer, shared_noise: bool = True, switch_ema_ref: int = 200, uprate: float = 0.001,
                 uphold: float = 0.3):
        super().__init__(trainer, shared_noise=shared_noise, switch_ema_ref=switch_ema_ref, uprate=uprate,
                         uphold=uphold)
        if trainer.model.family != "flow":
            raise ValueError("algorithm dgpo: the forward process x_t = (1 - s) x0 + s eps needs a flow model")
        if trainer.sharded:
            raise ValueError("algorithm dgpo: the slow copy is a full copy of the trainable weights; run it with "
                             "train.sharding: none (LoRA weights replicate cheaply)")
        t = trainer.cfg.train
        if trainer.fw.micro_batches == "groups" and t.train_batch_size % t.group_size:
            from pcpo.config import ConfigError

            raise ConfigError(f"train.train_batch_size: {t.train_batch_size} is not a multiple of train.group_size "
                              f"({t.group_size}); DGPO's loss compares whole groups, so each micro-batch holds whole "
                              "groups")
        self.old = [p.detach().clone() for p in trainer.params]
        self._live: list[torch.Tensor] | None = None

    @torch.no_grad()
    def _load(self, trainer, values) -> None:
        for p, v in zip(trainer.params, values):
            p.copy_(v)

    def _swap_in(self, trainer) -> None:
        self._live = [p.detach().clone() for p in trainer.params]
        self._load(trainer, self.old)

    def _swap_out(self, trainer) -> None:
        if self._live is not None:
            self._load(trainer, self._live)
            self._live = None

    def before_rollout(self, trainer, epoch: int) -> None:
        if trainer.global_step > int(self.options["switch_ema_ref"]):
            self._swap_in(trainer)  # `ema_ref.copy_ema_to(...)` around the sampling loop

    @torch.no_grad()
    def after_rollout(self, trainer, traj, epoch: int):
        try:
            if self._live is None:
                self._swap_in(trainer)
            x0 = traj.states[:, -1]
            B, T = traj.batch_size, traj.num_steps
            n = pool_size(T, trainer.st.timestep_fraction)
            s = trainer.epoch_grid.timesteps.float()
            if self.options["shared_noise"]:  # one noise per group and step, as generate_shared_noise_for_groups
                _, inverse = torch.unique(traj.group_ids, return_inverse=True)
                eps = torch.randn((int(inverse.max()) + 1, n, *x0.shape[1:]), generator=trainer.gen_train)[inverse]
            else:
                eps = torch.randn((B, n, *x0.shape[1:]), generator=trainer.gen_train)
            sb = s[:n].view(1, n, *([1] * (x0.dim() - 1)))
            states = traj.states.clone()
            states[:, :n] = (1 - sb) * x0.unsqueeze(1) + sb * eps
            preds = torch.zeros_like(traj.preds)
            dev, model = trainer.acc.device, trainer.model
            bs = trainer.cfg.sampling.batch_size
            for lo in range(0, B, bs):
                sl = slice(lo, min(lo + bs, B))
                c = {k: v[sl].to(dev) for k, v in traj.cond.items()}
                for i in range(n):
                    tt = trainer.epoch_grid.model_time(torch.full((sl.stop - sl.start,), i, dtype=torch.long)).to(dev)
                    # `predict_v(..., cfg=False)`: the conditional prediction alone
                    preds[sl, i] = model.predict_guided(states[sl, i].to(dev, model.dtype), tt, c, None, 1.0).float().cpu()
            traj.states, traj.preds = states, preds
            traj.log_probs = torch.zeros_like(traj.log_probs)
            traj.uncond = None  # training and reference forwards without CFG (predict_v with cfg=False)
        finally:
            self._swap_out(trainer)
        return traj

    @torch.no_grad()
    def after_update(self, trainer, epoch: int) -> None:
        o = self.options
        d = slow_copy_decay(trainer.global_step - 1, o["uprate"], o["uphold"])
        for e, p in zip(self.old, trainer.params):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)

    def state_dict(self) -> dict:
        return {"old": [e.cpu() for e in self.old]}

    def load_state_dict(self, state: dict) -> None:
        self.old = [e.to(device=p.device, dtype=p.dtype) for e, p in zip(state["old"], self.old)]


HOOK = {"shared_noise": True, "switch_ema_ref": 200, "uprate": 0.001, "uphold": 0.3}

REFERENCES = {
    "sampler": Ref("DPM-Solver++ multistep, flow_shift 3, noise 0",
                   TRAIN + ": `pipeline.scheduler = DPMSolverMultistepScheduler.from_config(...)` (Sana's flow "
                   "scheduler config, `flow_shift = 3`); " + COMP + ": `config.use_dpm = True`, `sample.noise_level = 0`",
                   note="the Euler ODE of the flow grid: the loss sees only the end point and the grid's times",
                   deliberate=True),
    "eta": Ref(None, "no DDIM sampler in DGPO"),
    "noise_level": Ref(0.0, CFG + ": `config.sample.noise_level = 0`",
                       note="unused under the ode schedule; a positive level keeps the grid's credit plan defined",
                       deliberate=True),
    "noise_schedule": Ref("ode", CFG + ": `sample.noise_level = 0`: every step deterministic"),
    "advantage": Ref("per_prompt", TRAIN + ": `advantages = stat_tracker.update(prompts, gathered_rewards['avg'])`; "
                     "`per_prompt_stat_tracking = True`"),
    "advantage_options": Ref(
        {"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False, "global_std": True, "history": False},
        CFG + ": `config.sample.global_std = True`; " + TRACK + ": `np.std(rewards, axis=0, keepdims=True) + 1e-4`; "
        "`stat_tracker.clear()` every epoch"),
    "adv_clip": Ref(5.0, BASE + ": `train.adv_clip_max = 5`; " + TRAIN + ": `torch.clamp(sample['advantages'][:, j], "
                    "-config.train.adv_clip_max, config.train.adv_clip_max)`"),
    "objective": Ref("dgpo", LOSS + ": `delta_diff = dsm_loss.detach() - ref_dsm_loss.detach()`; `per_sample_term = "
                     "advantages * beta_dpo * delta_diff / group_size`; `group_weights = torch.sigmoid(global_group_sums)`;"
                     " `loss = (local_weights.detach() * advantages * dsm_loss).mean()`; " + TRAIN + ": `ratio = "
                     "torch.exp(-dsm_loss + old_dsm_loss)`, `dsm_loss = torch.where(should_clip, dsm_loss.detach(), "
                     "dsm_loss)`"),
    "objective_form": Ref(None, "no step log-ratio: the field is unused by the dgpo objective"),
    "objective_options": Ref({"beta_dpo": 10.0, "adv_clip_max": 5.0, "clip_dsm": True},
                             CFG + ": `config.train.beta_dpo = 10`; " + COMP + ": `config.clip_dsm = True`; " + BASE
                             + ": `train.adv_clip_max = 5`",
                             note="the group size G of the loss is counted from the batch's (whole) groups; the "
                             "reference divides by config.sample.num_image_per_prompt, the same number"),
    "rollout_hook": Ref("dgpo_reference", TRAIN + ": `ema_ref = EMAModuleWrapper(..., decay=0.3, "
                        "update_step_interval=1)`; `old_v = predict_v(...)` under `ema_ref.copy_ema_to`; `xt = (1 - "
                        "sigmas_t) * x0 + sigmas_t * noise_diffuse`; `if global_step > config.switch_ema_ref: "
                        "ema_ref.copy_ema_to(...)` around the sampling loop",
                        note="the slow copy predicts once per epoch, after the rollout, and is updated once per epoch "
                        "(the reference: at training time and after every optimizer step; its configs take one "
                        "optimizer step per epoch, where the two agree)", deliberate=True),
    "rollout_hook_options": Ref(
        HOOK, COMP + ": `config.use_shared_noise = True`, `config.switch_ema_ref = 200`; " + TRAIN + ": `ema_ref_decay"
        " = min(0.3, 0.001 * global_step)`; " + NOISE + ": one noise per group, broadcast"),
    "clip_range": Ref(5e-2, COMP + ": `config.clip_range = 5e-2` (pickscore_sd3_4gpu keeps it)",
                      note="the README's recipe table suggests 1e-3 to 1e-2; the config's value is ported"),
    "timestep_fraction": Ref(0.7, COMP + ": `config.trunc_steps = 6`; " + TRAIN + ": `train_timesteps = [step_index "
                             "for step_index in range(config.trunc_steps + 1)]`: the first 7 of 10 steps",
                             note="the fraction here is (trunc_steps + 1) / T"),
    "step_selection": Ref("dgpo", STEPS + ": `sampled = random.sample(train_timesteps, M)` with `M = "
                          "config.num_train_timesteps = 4` (" + COMP + "), broadcast; the same for every sample",
                          note="each process draws its own (a group never spans two processes here)"),
    "micro_batches": Ref("groups", SAMPLER + ": `repeated_indices[start:end]` (unshuffled: each sampling batch holds "
                         "whole groups) and training batches are the sampling batches; " + LOSS + " sums "
                         "`per_sample_term` over each group"),
    "cfg_grad": Ref("both", PREDV + ": `cfg = False` for `model_v`: the conditional prediction, no CFG branch in "
                    "training (the rollout hook drops the unconditional input after sampling)"),
    "prompt_draw": Ref("per_group", SAMPLER + ": each of m prompts repeated k = `num_image_per_prompt` (24) times"),
    "share_initial_noise": Ref(False, CFG + ": `config.sample.same_latent = False`"),
    "kl_beta": Ref(1e-3, CFG + ": `config.train.beta = 0.001`"),
    "kl_form": Ref("prediction", TRAIN + ": `kl_loss = 1 * (model_v - ref_old_v).square().reshape(x0.shape[0],-1)"
                   ".mean(dim=1)` against `transformer.module.disable_adapter()` without CFG (`kl_cfg = 1.0`, "
                   + BASE + ")"),
    "ema_decay": Ref(0.9, TRAIN + ": `EMAModuleWrapper(transformer_trainable_parameters, decay=0.9, "
                     "update_step_interval=8)`; CFG `config.train.ema = True`"),
    "ema_warmup": Ref(True, EMA + ".get_current_decay(): `min((1 + optimization_step) / (10 + optimization_step), "
                      "self.decay)`"),
    "ema_every": Ref(8, TRAIN + ": `update_step_interval=8`"),
    "ema_unit": Ref("batch", TRAIN + ": `if config.train.ema: ema.step(transformer_trainable_parameters, global_step)` "
                    "after each training batch's timestep loop"),
    "proportional": Ref(False, "no per-step credit: the loss is not a policy gradient on the sampler's steps"),
    "defaults": Ref({"max_grad_norm": 1.0, "guidance_scale": 4.5},
                    BASE + ": `train.max_grad_norm = 1.0`; " + CFG + ": `config.sample.guidance_scale = 4.5`"),
}

register_framework(Framework(
    name="dgpo",
    description="DGPO: deterministic CFG rollouts, group-level DPO on flow-matching errors at forward-noised "
                "states (group-shared noise), clipped against a slow copy (likelihood-free)",
    samplers={"flow": "flow-grpo"},
    noise_level=0.7,
    noise_schedule="ode",
    advantage="per_prompt",
    advantage_options={"buffer_size": None, "min_count": 1, "eps": 1e-4, "unbiased": False,
                       "global_std": True, "history": False},
    adv_clip=5.0,
    objective="dgpo",
    objective_options={"beta_dpo": 10.0, "adv_clip_max": 5.0, "clip_dsm": True},
    rollout_hook="dgpo_reference",
    rollout_hook_options=dict(HOOK),
    clip_range=5e-2,
    timestep_fraction=0.7,
    step_selection="dgpo",
    micro_batches="groups",
    cfg_grad="both",
    prompt_draw="per_group",
    share_initial_noise=False,
    kl_beta=1e-3,
    kl_form="prediction",
    ema_decay=0.9,
    ema_warmup=True,
    ema_every=8,
    ema_unit="batch",
    defaults={"max_grad_norm": 1.0, "guidance_scale": 4.5},
    references=REFERENCES,
))
