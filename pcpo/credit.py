"""Per-timestep credit: native weights and PCPO's proportional ones.

Near the old policy the log-ratio of step t is
``-[w(t) <delta, z> + 0.5 w(t)^2 |delta|^2]`` with ``w(t) = C(t) / sigma_t``
(docs/method.md §2), so ``w(t)`` is the credit step t receives.  A
:class:`CreditPlan` says which grid to sample with and which weight each step
gets in the objective:

* native (any baseline): sample with the framework's grid, weight ``w(t)``;
* PCPO, DDIM: sample with the reshaped ``sigma~`` for which ``C~/sigma~ = w*``
  at every step, train with the constant ``w_bar = mean_t w(t)`` of the
  native grid (same total credit, equal shares);
* PCPO, flow: sample with the native grid, train step i with ``zeta * ds_i``
  (credit proportional to the time integrated); ``zeta`` is the setting
  ``pcpo.zeta`` (see :func:`resolve_zeta`).

The variants of the authors' lineage (``pcpo.variant``, jaylee2000/rsm
``sd15_zeroth_order``): ``uw-sigma`` (the above), ``uw-lambda`` (native sigma; the
policy is ``pred_ref + lambda_t (pred_theta - pred_ref)`` with ``lambda_t =
target_t / w(t)``, so its native-weight log-ratio gives every step the target
credit) and ``logrho`` (native credit, PPO clip on ``1 + log rho``).

:func:`plan_for_run` is the one place a run's plan is built from a resolved
config: ``pcpo train`` calls it with the loaded model's schedule, ``pcpo credit
--config`` with :func:`config_schedule` (the schedule from the model's scheduler
config, without weights), so both print the same credit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pcpo.config import ConfigError
from pcpo.models.base import ScheduleSpec
from pcpo.rollout.grid import SamplerGrid, ddim_grid, make_grid
from pcpo.rollout.steps import FLOW_STEP_FORMS

#: the constant reshaped-sampler weight of the paper's reference configs
DEFAULT_W_STAR = 4.5


def native_weights(grid: SamplerGrid) -> torch.Tensor:
    """w(t) = C(t) / sigma_t per step of ``grid`` (float64).

    A registered flow step form with ``zero_std_steps`` (CPS: its last step is deterministic at
    any noise level) gives those steps weight 0: they have no log-prob and are never trained."""
    w = grid.native_weight
    name = grid.sampler[len("flow-"):]
    if grid.family == "flow" and name in FLOW_STEP_FORMS and FLOW_STEP_FORMS.get(name).zero_std_steps:
        w = torch.where(grid.std > 0, w, torch.zeros_like(w))
    if not torch.isfinite(w).all():
        bad = [int(i) for i in torch.nonzero(~torch.isfinite(w)).flatten()]
        raise ValueError(
            f"steps {bad} of the {grid.sampler} grid have zero std, so their log-prob (and credit) is undefined; "
            "use eta > 0 / noise_level > 0, and for DDIM a scheduler with set_alpha_to_one=False, steps_offset=1"
        )
    return w


def ddim_pcpo_sigma(
    alpha_prod: torch.Tensor, alpha_prod_next: torch.Tensor, w_star: float, root: str = "paper"
) -> torch.Tensor:
    """Reshaped DDIM std sigma~_t for a constant weight ``w*`` (docs/method.md §3b).

    Both roots solve ``(c1 - w* sigma)^2 = 1 - a' - sigma^2`` with
    ``c1 = sqrt(1 - a) / sqrt(a / a')``:

    * ``root="paper"`` (default, the reference configs): the larger root
      ``(w* c1 + sqrt((1 + w*^2)(1 - a') - c1^2)) / (1 + w*^2)``; it stays close
      to the eta = 1 schedule (0.4467 vs 0.4545 at t = 981 on SD1.5) and satisfies
      ``(c1 + sqrt(1 - a' - sigma^2)) / sigma = w*``.  Under DDIM's own mean
      (direction term with a plus sign) its true sensitivity
      ``(c1 - sqrt(1 - a' - sigma^2)) / sigma`` stays close to the native weights;
      the equal credit then comes from training with the constant ``w_bar``
      in matching form, not from the sampler.
    * ``root="exact"``: the smaller root, for which the true ``C~ / sigma~ = w*``
      (much less sampling noise early in the trajectory).
    """
    c1 = (1 - alpha_prod).sqrt() / (alpha_prod / alpha_prod_next).sqrt()
    disc = (1 + w_star**2) * (1 - alpha_prod_next) - c1**2
    if (disc < 0).any():
        lo = ddim_min_w_star(alpha_prod, alpha_prod_next)
        raise ConfigError(f"pcpo.w_star = {w_star} is too small for this schedule: sigma~ has no real value unless "
                         f"w* >= {lo:.4f}; set pcpo.w_star to a larger number or to 'auto'")
    if root == "paper":
        return (w_star * c1 + disc.sqrt()) / (1 + w_star**2)
    if root == "exact":
        return (w_star * c1 - disc.sqrt()) / (1 + w_star**2)
    raise ConfigError(f"pcpo.sigma_root must be 'paper' or 'exact', got {root!r}")


def ddim_min_w_star(alpha_prod: torch.Tensor, alpha_prod_next: torch.Tensor) -> float:
    """Smallest w* for which sigma~ is real at every step: max_t sqrt(c1^2 / (1 - a') - 1)."""
    c1 = (1 - alpha_prod).sqrt() / (alpha_prod / alpha_prod_next).sqrt()
    return float(((c1**2 / (1 - alpha_prod_next)) - 1).clamp_min(0).sqrt().max())


#: the reference config's margin over the feasibility bound (SD1.5, 50 steps: 4.5 / 3.2748)
AUTO_W_STAR_MARGIN = 1.374


def resolve_w_star(w_star, alpha_prod: torch.Tensor, alpha_prod_next: torch.Tensor) -> float:
    """A number, or ``"auto"``: 4.5 where it keeps the reference margin over the
    feasibility bound, else the bound times that margin (coarse grids need more)."""
    if w_star == "auto":
        return max(DEFAULT_W_STAR, AUTO_W_STAR_MARGIN * ddim_min_w_star(alpha_prod, alpha_prod_next))
    try:
        return float(w_star)
    except (TypeError, ValueError):
        raise ConfigError(f"pcpo.w_star must be a number or 'auto', got {w_star!r}") from None


#: settings of ``pcpo.zeta`` besides a number
ZETA_MODES = ("auto", "authors", "grid_all", "grid_trained")
#: ``pcpo.variant``: the lineage's names (jaylee2000/rsm sd15_zeroth_order/configs/train/*.yaml `algorithm`)
VARIANTS = ("uw-sigma", "uw-lambda", "logrho")

#: the authors' own zeta, by (base framework, model kind): jaylee2000/rsm@e8be3df
#: sd35_zeroth_order/flow_grpo/sd3_train_shared.py:7 `ZETA = 4.3152134639895925`, used by
#: compute_pcpo_weight() (line 65-66) for Flow-GRPO on SD3.5-M (sd35_zeroth_order/config/sd3_matrix.py:120)
AUTHORS_ZETA = {("flow_grpo", "sd3"): 4.3152134639895925}
LINEAGE = "jaylee2000/rsm@e8be3df"


@dataclass
class CreditPlan:
    sample_grid: SamplerGrid  # the grid rollouts are drawn from
    native_grid: SamplerGrid  # the framework's own grid (same as sample_grid unless PCPO reshapes it)
    native: torch.Tensor  # (T,) native weights of the framework's own sampler
    train_weight: torch.Tensor  # (T,) weight of each step in the objective
    proportional: bool
    #: flow PCPO: the zeta of ``zeta * ds`` and where it came from (None on DDIM / native credit)
    zeta: float | None = None
    zeta_source: str = ""
    #: uw-lambda: (T,) lambda_t of the interpolated policy pred_ref + lambda_t (pred - pred_ref)
    mix: torch.Tensor | None = None
    variant: str = "uw-sigma"
    #: the steps the framework's selector can train (None: not given)
    trained_pool: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def grid_weight(self) -> torch.Tensor:
        """The sampling grid's own sensitivity C/std (w* everywhere for PCPO-DDIM)."""
        return native_weights(self.sample_grid)

    @property
    def ratio_scale(self) -> torch.Tensor:
        """Factor turning the sampling grid's log-ratio into the trained one (ratio form)."""
        return self.train_weight / self.grid_weight


def resolve_zeta(setting, native: torch.Tensor, pool: torch.Tensor | None, authors: float | None,
                 where: str = "") -> tuple[float, str]:
    """``pcpo.zeta`` -> (zeta, how it was obtained).

    * a number: itself;
    * ``authors``: the authors' constant where they have one (:data:`AUTHORS_ZETA`);
    * ``grid_all``: ``sum_i w(s_i)`` over every step of the sampling grid;
    * ``grid_trained``: the same over the steps the framework trains (``pool``);
    * ``auto``: ``authors`` where there is such a value, else ``grid_trained``.
    """
    if isinstance(setting, (int, float)) and not isinstance(setting, bool):
        if not float(setting) > 0:
            raise ConfigError(f"pcpo.zeta: must be > 0, got {setting}")
        return float(setting), "pcpo.zeta (number)"
    if setting == "auto":
        setting = "authors" if authors is not None else "grid_trained"
    if setting == "authors":
        if authors is None:
            have = ", ".join(f"{fw} on {kind}" for fw, kind in AUTHORS_ZETA)
            raise ConfigError(f"pcpo.zeta: the authors have no zeta for {where or 'this run'} (they have one for "
                              f"{have}); use a number, grid_all or grid_trained")
        return float(authors), f"authors ({LINEAGE} sd35_zeroth_order/flow_grpo/sd3_train_shared.py:7)"
    if setting == "grid_all":
        return float(native.sum()), f"grid_all (sum of w over all {native.numel()} steps)"
    if setting == "grid_trained":
        if pool is None:
            raise ValueError("pcpo.zeta: grid_trained needs the trained steps")
        return float(native[pool].sum()), f"grid_trained (sum of w over the {pool.numel()} trained steps)"
    raise ConfigError(f"pcpo.zeta: must be a number or one of {', '.join(ZETA_MODES)}, got {setting!r}")


def trained_pool(rule: str, T: int, fraction: float) -> torch.Tensor:
    """The steps a selection rule can train (sorted): the union of its choice over 256 samples
    drawn with a fixed seed (e.g. the first T - 1 for DanceGRPO, the first int(0.99 T) for Flow-GRPO)."""
    from pcpo.trained_steps import select_steps

    return torch.unique(select_steps(rule, T, fraction, 256, torch.Generator().manual_seed(0)))


def plan_credit(
    spec: ScheduleSpec,
    sampler: str,
    steps: int,
    *,
    eta: float = 1.0,
    noise_level: float = 0.7,
    shift: float | None = None,
    proportional: bool = False,
    w_star: float | str = DEFAULT_W_STAR,
    sigma_root: str = "paper",
    zeta="grid_all",
    trained: torch.Tensor | None = None,
    authors_zeta: float | None = None,
    variant: str = "uw-sigma",
    w_bar: float | None = None,
) -> CreditPlan:
    """The credit plan of one sampler.  ``trained``: the trainable steps (for ``zeta:
    grid_trained``); ``variant``: ``uw-sigma`` or ``uw-lambda`` (``logrho`` is native credit:
    pass ``proportional=False``); ``w_bar``: the DDIM target weight (default: this grid's own
    native mean; the authors' ``const_weight`` is one constant, the training grid's mean, also
    on their evaluation grid)."""
    native_grid = make_grid(spec, sampler, steps, eta=eta, noise_level=noise_level, shift=shift)
    native = native_weights(native_grid)
    pool = trained
    if not proportional:
        return CreditPlan(native_grid, native_grid, native, native.clone(), False, variant=variant, trained_pool=pool)
    if variant not in ("uw-sigma", "uw-lambda"):
        raise ConfigError(f"pcpo.variant: proportional credit is uw-sigma or uw-lambda, got {variant!r}")
    zeta_v, zsrc = None, ""
    if sampler == "ddim":
        # every step gets the native mean w_bar (same total credit, equal shares)
        target = torch.full_like(native, float(native.mean()) if w_bar is None else float(w_bar))
    else:
        zeta_v, zsrc = resolve_zeta(zeta, native, pool, authors_zeta)
        # zeta * ds_i of the sampling grid (sum ds = s_0 = 1), on whichever steps are trained:
        # sd3_train_shared.py compute_pcpo_weight(delta_t) = ZETA * delta_t
        target = zeta_v * (native_grid.timesteps - native_grid.next_timesteps)
        target = torch.where(native > 0, target, torch.zeros_like(target))  # steps without a log-prob get no credit
    if variant == "uw-lambda":
        # native sigma; the interpolated policy's native log-ratio carries w(t) lambda_t = target_t
        # (ddim_step.py:163-171 `lambda_t = const_weight * std_dev_t / (c1_t - c2_t)`)
        return CreditPlan(native_grid, native_grid, native, native.clone(), True, zeta_v, zsrc,
                          mix=target / native, variant=variant, trained_pool=pool)
    if sampler == "ddim":
        w_star = resolve_w_star(w_star, native_grid.alpha_prod, native_grid.alpha_prod_next)
        # the reshaped sigma~ times eta, as ddim_step.py:144-150 `_get_std(...) * eta`
        sigma = ddim_pcpo_sigma(native_grid.alpha_prod, native_grid.alpha_prod_next, w_star, sigma_root) * float(eta)
        grid = ddim_grid(spec, steps, sigma=sigma)
        grid.info.update({"pcpo_w_star": float(w_star), "pcpo_sigma_root": sigma_root, "eta": float(eta)})
        return CreditPlan(grid, native_grid, native, target, True, variant=variant, trained_pool=pool)
    return CreditPlan(native_grid, native_grid, native, target, True, zeta_v, zsrc, variant=variant, trained_pool=pool)


# ---------------------------------------------------------------------------
# A run's plan, from its resolved config (pcpo train and pcpo credit --config)
# ---------------------------------------------------------------------------

def apply_variant(fw, variant: str):
    """``pcpo.variant`` on a ``pcpo-X`` framework: ``uw-sigma`` and ``uw-lambda`` keep the
    log-hinge in matching form; ``logrho`` is PPO clip on ``1 + log rho`` in ratio form with
    native credit (train_grpo.py:1069-1078).  Other frameworks are returned unchanged."""
    import dataclasses

    if variant not in VARIANTS:
        raise ConfigError(f"pcpo.variant: must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if not fw.name.startswith("pcpo-") or variant == "uw-sigma":
        return fw
    if variant == "logrho":
        return dataclasses.replace(fw, objective="ppo_clip_logrho", objective_form="ratio", proportional=False,
                                   description=fw.description + " (variant logrho: PPO clip on 1 + log rho)")
    if not fw.proportional:
        raise ConfigError(f"pcpo.variant: uw-lambda makes the credit proportional; {fw.name} keeps native credit "
                          "(run the pcpo-X algorithm, not pcpo-base-X)")
    if fw.noise_schedule != "constant":
        raise ConfigError(f"pcpo.variant: uw-lambda needs every step stochastic at its own level; "
                          f"{fw.name} uses the noise schedule {fw.noise_schedule!r}")
    return dataclasses.replace(fw, description=fw.description + " (variant uw-lambda: interpolated policy)")


def plan_for_run(cfg, fw, settings, spec: ScheduleSpec, model_kind: str):
    """``(framework with cfg.pcpo.variant applied, CreditPlan)`` of a run: the one function both
    ``pcpo train`` (spec: the loaded model's schedule) and ``pcpo credit --config`` (spec:
    :func:`config_schedule`) call.  ``settings``: the trainer's RunSettings (sampler, eta,
    noise level, trained steps)."""
    fw = apply_variant(fw, cfg.pcpo.variant)
    T = int(cfg.sampling.steps)
    pool = trained_pool(settings.step_selection, T, settings.timestep_fraction)
    base = fw.base or fw.name
    plan = plan_credit(spec, settings.sampler, T, eta=settings.eta, noise_level=settings.noise_level,
                       proportional=fw.proportional, w_star=cfg.pcpo.w_star, sigma_root=cfg.pcpo.sigma_root,
                       zeta=cfg.pcpo.zeta, trained=pool, authors_zeta=AUTHORS_ZETA.get((base, model_kind)),
                       variant=cfg.pcpo.variant if fw.proportional else
                       (cfg.pcpo.variant if fw.name.startswith("pcpo-") and cfg.pcpo.variant == "logrho" else "uw-sigma"))
    if plan.zeta is None and fw.proportional and settings.sampler != "ddim":
        raise AssertionError("flow PCPO plan without zeta")
    return fw, plan


def plan_summary(plan: CreditPlan) -> str:
    """One line: what the run trains with (printed by pcpo credit and logged by pcpo train)."""
    g = plan.sample_grid
    parts = [f"{g.sampler}, {g.num_steps} steps", "proportional" if plan.proportional else "native",
             f"variant {plan.variant}" if plan.proportional or plan.variant != "uw-sigma" else ""]
    if plan.zeta is not None:
        parts.append(f"zeta {plan.zeta:.10g} [{plan.zeta_source}]")
    if plan.proportional and g.sampler == "ddim":
        parts.append(f"w_bar {float(plan.native.mean()):.10g}")
        if plan.mix is None:
            parts.append(f"w* {g.info.get('pcpo_w_star')}, root {g.info.get('pcpo_sigma_root')}, sigma~ x eta "
                         f"{g.info.get('eta')}")
    if plan.trained_pool is not None:
        parts.append(f"trained steps {plan.trained_pool.numel()} of {g.num_steps}; trained credit "
                     f"{float(plan.train_weight[plan.trained_pool].sum() if plan.mix is None else (plan.native * plan.mix)[plan.trained_pool].sum()):.6g}"
                     f" vs native {float(plan.native[plan.trained_pool].sum()):.6g}")
    return "; ".join(p for p in parts if p)


def mix_lambda(plan: CreditPlan, t: torch.Tensor) -> torch.Tensor:
    """uw-lambda: the (N,) float64 lambda_t of ``plan`` at the model times ``t`` (one per row),
    looked up by the nearest time of the plan's sampling grid."""
    times = plan.sample_grid.timesteps.to(torch.float64)
    i = (t.detach().to("cpu", torch.float64).reshape(-1, 1) - times.reshape(1, -1)).abs().argmin(dim=1)
    return plan.mix.to(torch.float64)[i]


def mix_predictions(pred: torch.Tensor, ref: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``ref + lambda (pred - ref)`` per row (jaylee2000/rsm@e8be3df sd15_zeroth_order/diffusion/
    ddim_step.py:171 `model_output_mine = model_output_ref + lambda_t * (model_output - model_output_ref)`),
    in ``pred``'s dtype; ``lam``: (N,)."""
    ref = ref.to(pred.dtype)
    lt = lam.to(device=pred.device, dtype=torch.float32 if pred.dtype != torch.float64 else torch.float64)
    return (ref + lt.reshape(-1, *([1] * (pred.dim() - 1))) * (pred - ref)).to(pred.dtype)


def policy_mix(predict, reference, plan: CreditPlan, bypass=None):
    """uw-lambda's policy: a ``predict_guided``-like function returning
    ``reference + lambda_t (predict - reference)`` with lambda_t of ``plan`` (:func:`mix_lambda`).

    ``predict(x, t, cond, uncond, scale, ...)``: the fine-tuned prediction (with gradient);
    ``reference(x, t, cond, uncond, scale)``: the base model's (run without gradient);
    ``bypass()``: when true, ``predict`` is returned unmixed (the trainer's reference pass, which
    itself goes through the wrapped function).  ``pcpo train`` (:func:`install_policy_mix`) and
    ``pcpo sample`` of a uw-lambda checkpoint (plan on the evaluation grid,
    :func:`evaluation_mix_plan`) both call this."""
    if plan.mix is None:
        raise ValueError("policy_mix: the plan has no lambda_t (not a uw-lambda plan)")

    def mixed(x, t, cond, uncond=None, scale=1.0, *a, **kw):
        out = predict(x, t, cond, uncond, scale, *a, **kw)
        if bypass is not None and bypass():
            return out
        with torch.no_grad():
            ref = reference(x, t, cond, uncond, scale)
        return mix_predictions(out, ref, mix_lambda(plan, t))

    return mixed


def install_policy_mix(trainer) -> None:
    """uw-lambda: make the trainer's policy ``pred_ref + lambda_t (pred_theta - pred_ref)``.

    Wraps ``trainer.model.predict_guided`` (:func:`policy_mix`) so that the rollout and the
    training forward both see the interpolated prediction (the rollout stores it, the training
    recomputes it), with the reference prediction from the trainer's KL-reference path
    (``_ref_prediction``: adapters disabled, or the frozen copy).  Inside that path (phase
    ``reference``) the wrapper passes through."""
    plan = trainer.plan
    if plan.mix is None:
        return
    if trainer.ref_model is None and not trainer.lora:
        import copy

        trainer.ref_model = copy.deepcopy(trainer.acc.unwrap_model(trainer.model.denoiser)).requires_grad_(False)
    trainer.model.predict_guided = policy_mix(
        trainer.model.predict_guided, lambda x, t, cond, uncond, scale: trainer._ref_prediction(x, t, cond, uncond),
        plan, bypass=lambda: trainer._phase == "reference")


def evaluation_mix_plan(cfg, algorithm: str, spec: ScheduleSpec, sampler: str, steps: int, eta: float,
                        noise_level: float) -> CreditPlan | None:
    """The uw-lambda plan of a run (``cfg``, ``algorithm``) on an evaluation grid, or None when
    the run does not interpolate its policy.

    The authors evaluate a uw-lambda run with the interpolated policy on their evaluation grid
    (jaylee2000/rsm@e8be3df sd15_zeroth_order/train_grpo.py:192, 226-244 `pipeline_with_logprob(...,
    unet_ref=unet_ref, const_weight=args.const_weight, algorithm=args.algorithm,
    eta=args.sample_eta, num_inference_steps=eval_num_steps, eval=True)`; the reference pass
    reverse_pipeline.py:150-167; ddim_step.py:163-171 `lambda_t = const_weight * std_dev_t /
    (c1_t - c2_t)` with that grid's std): lambda_t = w_bar sigma_t / C_t (DDIM) or zeta ds / w(s)
    (flow) on ``(sampler, steps, eta, noise_level)``, with the run's constant (its training
    plan's ``w_bar``, or its ``zeta``).  A deterministic grid (eta 0) makes lambda_t 0, the base
    model: that is refused, not sampled."""
    from pcpo.trainer import RunSettings, resolve_framework

    fw = resolve_framework(cfg, algorithm, spec.family)
    st = RunSettings.build(cfg, fw, spec.family, 1.0)
    fw, train = plan_for_run(cfg, fw, st, spec, cfg.model.kind)
    if train.mix is None:
        return None
    grid = make_grid(spec, sampler, steps, eta=eta, noise_level=noise_level)
    if not bool((grid.std > 0).any()):
        raise ConfigError(f"sampling a uw-lambda run ({algorithm}) deterministically: its policy "
                          f"w_bar sigma_t / C_t (pred - ref) + ref is the base model at sigma 0 (ddim_step.py:159-167); "
                          "sample it with eta > 0 / noise_level > 0 (--eta, --noise-level), as the authors evaluate at "
                          "their sampling eta")
    return plan_credit(spec, sampler, steps, eta=eta, noise_level=noise_level, proportional=True,
                       zeta=train.zeta if train.zeta is not None else "grid_all", variant="uw-lambda",
                       w_bar=float(train.native.mean()) if sampler == "ddim" else None)


#: documented scheduler configs of the hub models the paper configs use (``scheduler/scheduler_config.json``
#: of each repository), used when ``model.path`` is not a local folder holding its own:
#: SD1.x (runwayml/stable-diffusion-v1-5, CompVis/stable-diffusion-v1-4): scaled-linear betas
#: 0.00085 -> 0.012 over 1000 steps, steps_offset 1, set_alpha_to_one false;
#: SD3.5 (stabilityai/stable-diffusion-3.5-medium): FlowMatchEulerDiscreteScheduler, shift 3.0;
#: FLUX.1 (black-forest-labs/FLUX.1-dev): dynamic shifting, base_shift 0.5, max_shift 1.15,
#: base_image_seq_len 256, max_image_seq_len 4096 (shift 3.0 unused).
DEFAULT_SCHEDULERS = {
    "sd1": {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
            "set_alpha_to_one": False, "clip_sample": False},
    "sd3": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
    "flux": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
             "base_image_seq_len": 256, "max_image_seq_len": 4096},
}
#: default resolution (px) of each kind when model.options.resolution is unset (the transformer's
#: sample_size x the VAE factor 8: 1024 for FLUX.1-dev and SD3.5-M)
DEFAULT_RESOLUTION = {"sd3": 1024, "flux": 1024}


def config_schedule(cfg) -> tuple[ScheduleSpec, str]:
    """The model's ScheduleSpec from the config and its scheduler config alone (no weights):
    ``(spec, where the scheduler config came from)``.  sd1/sd3/flux read
    ``<model.path>/scheduler/scheduler_config.json`` when model.path is a local folder, else the
    documented defaults of :data:`DEFAULT_SCHEDULERS`; the grid logic is the adapters' own
    (``spec_from_scheduler``, ``flow_shift``, the SD3 pipeline span).  Tiny models are loaded
    (they are small)."""
    import json
    from pathlib import Path

    kind, opts = cfg.model.kind, dict(cfg.model.options)
    if kind not in DEFAULT_SCHEDULERS:
        from pcpo.models import load_model

        return load_model(kind, cfg.model.path, **opts).schedule(), f"{kind} model at {cfg.model.path}"
    local = Path(cfg.model.path) / "scheduler" / "scheduler_config.json"
    if local.is_file():
        conf, src = json.loads(local.read_text()), str(local)
    else:
        conf, src = dict(DEFAULT_SCHEDULERS[kind]), f"documented {kind} scheduler defaults (pcpo.credit.DEFAULT_SCHEDULERS)"
    import diffusers

    from pcpo.models.base import spec_from_scheduler

    conf.pop("_diffusers_version", None)
    if kind == "sd1":
        conf.pop("_class_name", None)
        conf = {k: v for k, v in conf.items() if k not in ("skip_prk_steps",)}
        return spec_from_scheduler(diffusers.DDIMScheduler.from_config(conf)), src
    conf.pop("_class_name", None)
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(conf)
    from pcpo.models.flux import flow_shift

    res = int(opts.get("resolution") or DEFAULT_RESOLUTION[kind])
    latent = res // 8
    seq = (latent // 2) ** 2  # 2x2 patches (FLUX packing, SD3 patch_size 2)
    shift, _ = flow_shift(sched, seq, opts.get("shift"))
    grid = opts.get("time_grid", "pipeline") if kind == "sd3" else "uniform"
    if grid == "pipeline":
        span = (float(sched.sigma_max), float(sched.sigma_min))
    elif grid == "uniform":
        span = (1.0, 0.0)
    else:
        raise ConfigError(f"model.options.time_grid: must be 'pipeline' or 'uniform', got {grid!r}")
    return ScheduleSpec(family="flow", shift=float(shift), num_train_timesteps=int(sched.config.num_train_timesteps),
                        flow_spacing=grid, flow_span=span), src


def sd15_schedule() -> ScheduleSpec:
    """SD1.5's own DDIM schedule, built locally: scaled-linear betas 0.00085 -> 0.012
    over 1000 steps, steps_offset=1, set_alpha_to_one=False (final alpha = alphas_cumprod[0])."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return ScheduleSpec(family="ddim", alphas_cumprod=ac, final_alpha_cumprod=float(ac[0]),
                        num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")


def credit_table(plan: CreditPlan) -> dict:
    """JSON-able per-step description of a plan, in sampling order."""
    g = plan.sample_grid
    native = plan.native
    pc = plan.train_weight
    out = {
        "sampler": g.sampler,
        "steps": g.num_steps,
        "timesteps": [float(t) for t in g.timesteps],
        "sigma_native": [float(s) for s in plan.native_grid.std],
        "sigma_sampling": [float(s) for s in g.std],
        "native": [float(w) for w in native],
        "pcpo": [float(w) for w in pc],
        "ratio": [float(p / n) for p, n in zip(pc, native)],
        "native_sum": float(native.sum()),
        "pcpo_sum": float(pc.sum()),
        "native_mean": float(native.mean()),
        "grid_weight": [float(w) for w in plan.grid_weight],
        "proportional": plan.proportional,
        "variant": plan.variant,
        "zeta": plan.zeta,
        "zeta_source": plan.zeta_source,
        "mix": None if plan.mix is None else [float(x) for x in plan.mix],
        "trained_steps": None if plan.trained_pool is None else [int(i) for i in plan.trained_pool],
        "summary": plan_summary(plan),
    }
    return out
