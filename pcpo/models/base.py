"""The model-adapter contract.

An adapter is the only place in the project that knows how a particular
text-to-image model is loaded, how prompts become conditioning tensors, what
the network predicts (noise or velocity), whether images live in a VAE latent
space, and which modules LoRA should target.  Everything else (rollout,
trainer, evaluation) talks to models through this interface.

Conditioning is a plain ``dict[str, Tensor]`` whose tensors are all batched on
dim 0 ("Cond").  That one convention covers SD1.x (``encoder_hidden_states``),
SD3 (``encoder_hidden_states`` + ``pooled_projections``) and FLUX
(``encoder_hidden_states`` + ``pooled_projections`` + ids), and lets the
trainer index, concatenate and store conditioning without knowing its keys.

Time convention of :meth:`ModelAdapter.predict`:

* ``family == "ddim"`` (epsilon models): ``t`` holds integer training
  timesteps in ``[0, num_train_timesteps)``.
* ``family == "flow"`` (velocity models): ``t`` holds flow times
  ``s`` in ``[0, 1]`` (1 = pure noise, 0 = data); the adapter maps them to the
  network's own units (FLUX wants ``s``, SD3 wants ``1000 * s`` ...).

A velocity model predicts ``v`` with ``x_s = (1 - s) x_0 + s * noise`` and
``v = noise - x_0``, so ``x_0 = x_s - s * v`` (the convention of FLUX/SD3 and
of docs/method.md §1b).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch

Cond = dict[str, torch.Tensor]


def cond_index(cond: Cond, idx) -> Cond:
    """Select rows of every tensor of a conditioning dict."""
    return {k: v[idx] for k, v in cond.items()}


def cond_cat(conds: list[Cond]) -> Cond:
    """Concatenate conditioning dicts along the batch dimension."""
    keys = conds[0].keys()
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in keys}


def cond_to(cond: Cond, device=None, dtype=None) -> Cond:
    out = {}
    for k, v in cond.items():
        if dtype is not None and v.is_floating_point():
            out[k] = v.to(device=device, dtype=dtype)
        else:
            out[k] = v.to(device=device)
    return out


@dataclass
class ScheduleSpec:
    """What the rollout needs to build its time grid, per model family.

    ``alphas_cumprod`` / ``final_alpha_cumprod`` / ``steps_offset`` describe a
    DDIM (epsilon) model's training schedule; ``shift`` the flow model's
    time-grid shift ``s <- k s / (1 + (k - 1) s)``; ``flow_spacing`` and
    ``flow_span`` how its unshifted grid is spaced (see
    :func:`pcpo.rollout.grid.flow_times`).
    """

    family: str  # "ddim" | "flow"
    alphas_cumprod: torch.Tensor | None = None
    final_alpha_cumprod: float | None = None
    num_train_timesteps: int = 1000
    steps_offset: int = 1
    timestep_spacing: str = "leading"
    shift: float = 1.0
    flow_spacing: str = "uniform"
    flow_span: tuple[float, float] = (1.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)


class ModelAdapter(abc.ABC):
    """Interface every model family implements (tiny world, SD1.x, FLUX, SD3)."""

    #: "epsilon" or "velocity"
    prediction_type: str
    #: "ddim" (epsilon models, DDIM-SDE sampler) or "flow" (velocity models, flow SDE)
    family: str
    #: module-name patterns for peft's ``LoraConfig(target_modules=...)``
    lora_target_modules: list[str]
    #: default classifier-free guidance scale for this model
    default_guidance_scale: float = 1.0
    #: class names of the denoiser's blocks that become one FSDP unit each (``train.sharding: fsdp``);
    #: the UNet blocks of diffusers' UNet2DConditionModel by default
    fsdp_block_classes: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "UNetMidBlock2DCrossAttn",
                                           "UNetMidBlock2D", "UpBlock2D", "CrossAttnUpBlock2D")

    # -- modules -------------------------------------------------------
    @property
    @abc.abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The trainable network (UNet or transformer)."""

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @abc.abstractmethod
    def to(self, device=None, dtype=None) -> "ModelAdapter":
        """Move every module (the denoiser may keep its own dtype for training)."""

    # -- text ------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Cond:
        """Conditioning for a batch of prompts (no grad)."""

    def null_cond(self, batch_size: int) -> Cond:
        """Conditioning of the empty prompt, for classifier-free guidance."""
        return self.encode_prompts([""] * batch_size)

    # -- the network ----------------------------------------------------
    @abc.abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's state x_t, without the batch dimension."""

    @abc.abstractmethod
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Raw network output (epsilon or velocity) for states ``x`` at times ``t``."""

    def predict_guided(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Cond,
        uncond: Cond | None,
        guidance_scale: float,
        cfg_grad: str = "both",
    ) -> torch.Tensor:
        """Classifier-free guided prediction; one batched forward pass.

        ``guidance_scale <= 1`` or ``uncond is None`` skips the unconditional
        branch.  ``cfg_grad="cond_only"`` detaches the unconditional prediction,
        so gradients flow through the conditional branch alone (Flow-GRPO's
        ``noise_pred_uncond.detach()``); the value is the same either way.
        Models with distilled guidance (FLUX) override this.
        """
        if uncond is None or guidance_scale == 1.0:
            return self.predict(x, t, cond)
        if cfg_grad not in ("both", "cond_only"):
            raise ValueError(f"cfg_grad must be 'both' or 'cond_only', got {cfg_grad!r}")
        both = cond_cat([uncond, cond])
        out = self.predict(torch.cat([x, x]), torch.cat([t, t]), both)
        out_u, out_c = out.chunk(2)
        if cfg_grad == "cond_only":
            out_u = out_u.detach()
        return out_u + guidance_scale * (out_c - out_u)

    # -- images ---------------------------------------------------------
    @abc.abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Final states -> images, float in [0, 1], shape (B, C, H, W)."""

    # -- schedule -------------------------------------------------------
    @abc.abstractmethod
    def schedule(self) -> ScheduleSpec:
        """The model's noise schedule description (see ScheduleSpec)."""

    # -- persistence ----------------------------------------------------
    @abc.abstractmethod
    def save_pretrained(self, path: str) -> None:
        """Write the full model in diffusers' folder layout."""

    def describe(self) -> dict[str, Any]:
        """Small JSON-able description for logs and manifests."""
        return {
            "class": type(self).__name__,
            "prediction_type": self.prediction_type,
            "family": self.family,
        }


def spec_from_scheduler(scheduler) -> ScheduleSpec:
    """ScheduleSpec from a diffusers scheduler instance (DDIM/DDPM family or flow matching)."""
    cfg = scheduler.config
    if hasattr(scheduler, "alphas_cumprod"):
        ac = scheduler.alphas_cumprod.to(torch.float64)
        set_one = bool(cfg.get("set_alpha_to_one", False))
        final = 1.0 if set_one else float(ac[0])
        return ScheduleSpec(
            family="ddim", alphas_cumprod=ac, final_alpha_cumprod=final,
            num_train_timesteps=int(cfg.num_train_timesteps), steps_offset=int(cfg.get("steps_offset", 0)),
            timestep_spacing=str(cfg.get("timestep_spacing", "leading")),
        )
    return ScheduleSpec(family="flow", shift=float(cfg.get("shift", 1.0)),
                        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)))
