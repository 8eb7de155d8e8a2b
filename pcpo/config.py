"""Typed, validated training configuration.

A YAML experiment file may hold more than the trainer reads (the workflow's
matrix, pretraining settings ...); the trainer reads the sections below and
rejects anything it does not know inside them, naming the field:

    model:     {kind, path, dtype}
    reward:    {name, options}
    prompts:   {source, options}
    sampling:  {steps, guidance_scale, eta, noise_level, batch_size}
    train:     {epochs, prompts_per_epoch, group_size, train_batch_size, ..., tensorboard,
                wandb: {enabled, project, entity, group, tags, mode, dir}}
    lora:      {enabled, rank, alpha}
    pcpo:      {w_star, sigma_root, zeta, variant}

An ``algorithms:`` mapping may override framework fields per algorithm name,
e.g. ``algorithms: {dancegrpo: {timestep_fraction: 0.5}}``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and the fix."""


@dataclass
class ModelConfig:
    kind: str = "tiny-eps"
    path: str = "results/tiny/base/eps"
    dtype: str = "float32"  # float32 | bfloat16 | float16 (log-probs are always float32)
    gradient_checkpointing: bool = False
    options: dict = field(default_factory=dict)


@dataclass
class RewardConfig:
    name: str = "digit_alignment"
    options: dict = field(default_factory=dict)


@dataclass
class PromptConfig:
    source: str = "tiny"  # tiny | file | list
    options: dict = field(default_factory=dict)


@dataclass
class SamplingConfig:
    steps: int = 20
    guidance_scale: float | None = None  # None: the model's default
    eta: float | None = None  # None: the framework's
    noise_level: float | None = None  # None: the framework's
    batch_size: int = 32  # rollout micro-batch
    reduction: str = "mean"


@dataclass
class LoraConfig:
    enabled: bool = True
    rank: int = 4
    alpha: float = 4.0


@dataclass
class EmaConfig:
    """EMA of the trained weights; every ``None`` falls back to the framework's
    (``Framework.ema_decay``/``ema_warmup``/``ema_every``: Flow-GRPO's EMA is on by default)."""

    enabled: bool | None = None
    decay: float | None = None
    warmup: bool | None = None
    update_every: int | None = None
    unit: str | None = None  # batch | epoch


@dataclass
class PcpoConfig:
    w_star: float | str = "auto"  # a number, or auto: 4.5 where feasible (see pcpo.credit.resolve_w_star)
    sigma_root: str = "paper"
    #: flow credit zeta * ds: a number, authors, grid_all, grid_trained, or auto (the authors' value where
    #: they have one, else grid_trained; see pcpo.credit.resolve_zeta)
    zeta: float | str = "auto"
    #: the authors' lineage variant: uw-sigma (PCPO), uw-lambda (interpolated policy), logrho (see pcpo.credit)
    variant: str = "uw-sigma"

    def __post_init__(self):
        modes = ("auto", "authors", "grid_all", "grid_trained")
        if isinstance(self.zeta, str) and self.zeta not in modes:
            raise ConfigError(f"pcpo.zeta: must be a number or one of {', '.join(modes)}, got {self.zeta!r}")
        if not isinstance(self.zeta, str) and not float(self.zeta) > 0:
            raise ConfigError(f"pcpo.zeta: must be > 0, got {self.zeta}")
        if self.variant not in ("uw-sigma", "uw-lambda", "logrho"):
            raise ConfigError(f"pcpo.variant: must be uw-sigma, uw-lambda or logrho, got {self.variant!r}")


@dataclass
class WandbConfig:
    """The optional Weights & Biases logger (pcpo.tracking); ``wandb`` is imported only when enabled."""

    enabled: bool = False
    project: str = "pcpo-bench"
    entity: str | None = None  # None: the logged-in user's default
    group: str | None = None  # None: the experiment name
    tags: list = field(default_factory=list)
    #: online | offline (upload later with `wandb sync`); None: wandb's own choice ($WANDB_MODE, else online)
    mode: str | None = None
    dir: str | None = None  # where wandb writes; None: $WANDB_DIR, else the run folder


@dataclass
class TrainConfig:
    epochs: int = 10
    prompts_per_epoch: int = 8  # groups per epoch
    group_size: int = 4  # images per prompt (G)
    train_batch_size: int = 8  # samples per micro-batch in the update phase
    gradient_accumulation: int = 1  # micro-batches per optimizer step
    inner_epochs: int = 1  # K passes over one epoch's rollouts
    timestep_fraction: float | None = None  # None: the framework's
    lr: float = 3e-4
    weight_decay: float = 1e-4
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None  # None: the framework's
    clip_range: float | None = None
    adv_clip: float | None = None
    kl_beta: float | None = None
    kl_reference: str = "auto"  # auto (LoRA disabled, else frozen copy) | copy
    checkpoint_every: int = 2
    logratio_tolerance: float = 1e-4
    #: where the old log-probs come from: the rollout's, or a no-grad pass of the training forward in
    #: the training layout before the first update; auto recomputes unless float32 on a CPU
    old_logprobs: str = "auto"  # rollout | recompute | auto
    #: how the denoiser is spread over processes: "none" (each holds it whole; DDP when N > 1) or
    #: "fsdp" (torch's fully_shard, one unit per block; a full fine-tune, as DanceGRPO's FSDP script)
    sharding: str = "none"
    #: TensorBoard event files in <run>/tensorboard: every metrics.csv column each epoch, samples at checkpoints
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    device: str = "auto"  # auto | cpu | cuda
    deterministic_kernels: bool = True  # CUDA: no TF32, deterministic cuDNN (see Trainer._setup)


@dataclass
class TrainingConfig:
    experiment: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    pcpo: PcpoConfig = field(default_factory=PcpoConfig)
    algorithms: dict = field(default_factory=dict)


#: top-level keys of an experiment file that belong to other tools
FOREIGN_SECTIONS = {"pretrain", "matrix", "evaluation", "report", "workflow", "slurm", "base_models", "paper",
                    "results", "pcpo_command", "reward_options", "resources"}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(tp):
                return None
        for a in args:
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}"
                          f"{' or null' if type(None) in typing.get_args(tp) else ''}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, list):
            return value
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            if not where and key in FOREIGN_SECTIONS:
                continue
            raise ConfigError(f"{path}: unknown field; known fields{' of ' + where if where else ''}: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def load_config(path: str | Path | None, overrides: dict | None = None) -> TrainingConfig:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: no such file {str(p)!r}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config: {yaml_error_line(p, e)}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"--config: {p} must hold a mapping at the top level")
    if overrides:
        data = deep_merge(data, overrides)
    cfg = from_dict(TrainingConfig, data)
    validate(cfg)
    return cfg


def yaml_error_line(path: str | Path, err: "yaml.YAMLError") -> str:
    """One line for a YAML syntax error: the file, line and column, what is wrong, the fix."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    ctx = getattr(err, "context", None)
    return (f"{where}: not valid YAML ({what}{'; ' + ctx if ctx else ''}); fix the syntax there "
            "(indentation, a missing ':' or closing bracket)")


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


SHARDING_MODES = ("none", "fsdp")


def train_processes(raw: dict) -> int:
    """The training processes an experiment file asks for (``resources.train``: nodes x gpus; 1 when unset)."""
    from pcpo.launch import world_size

    return world_size(raw.get("resources"))


def recomputes_old_logprobs(mode: str, dtype: str, device_type: str) -> bool:
    """``train.old_logprobs``: whether the old log-probs are recomputed with the training forward;
    ``auto`` does so unless the model is float32 on a CPU."""
    return mode == "recompute" or (mode == "auto" and (dtype != "float32" or device_type == "cuda"))


def validate(cfg: TrainingConfig) -> None:
    """Range and batch-arithmetic checks (types were checked while loading)."""
    t, s = cfg.train, cfg.sampling

    def positive(name: str, v):
        if v is not None and not v > 0:
            raise ConfigError(f"{name}: must be > 0, got {v}")

    for name in ("epochs", "prompts_per_epoch", "group_size", "train_batch_size", "gradient_accumulation",
                 "inner_epochs", "checkpoint_every"):
        positive(f"train.{name}", getattr(t, name))
    positive("train.lr", t.lr)
    positive("sampling.steps", s.steps)
    positive("sampling.batch_size", s.batch_size)
    if t.timestep_fraction is not None and not 0 < t.timestep_fraction <= 1:
        raise ConfigError(f"train.timestep_fraction: must be in (0, 1], got {t.timestep_fraction}")
    if s.reduction not in ("mean", "sum"):
        raise ConfigError(f"sampling.reduction: must be 'mean' or 'sum', got {s.reduction!r}")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype: must be float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    if t.sharding not in SHARDING_MODES:
        raise ConfigError(f"train.sharding: must be 'none' or 'fsdp', got {t.sharding!r}")
    if t.sharding == "fsdp" and cfg.lora.enabled:
        raise ConfigError("train.sharding: fsdp shards a full fine-tune; set lora.enabled: false, or keep "
                          "train.sharding: none for LoRA (its weights are small enough to replicate)")
    if t.old_logprobs not in ("rollout", "recompute", "auto"):
        raise ConfigError(f"train.old_logprobs: must be 'rollout', 'recompute' or 'auto', got {t.old_logprobs!r}")
    if t.kl_reference not in ("auto", "copy"):
        raise ConfigError(f"train.kl_reference: must be 'auto' or 'copy', got {t.kl_reference!r}")
    if cfg.pcpo.sigma_root not in ("paper", "exact"):
        raise ConfigError(f"pcpo.sigma_root: must be 'paper' or 'exact', got {cfg.pcpo.sigma_root!r}")
    if len(t.adam_betas) != 2:
        raise ConfigError(f"train.adam_betas: expected two numbers, got {t.adam_betas!r}")
    samples = t.prompts_per_epoch * t.group_size
    per_step = t.train_batch_size * t.gradient_accumulation
    if samples % per_step != 0:
        raise ConfigError(
            f"train.train_batch_size: {t.prompts_per_epoch} prompts x {t.group_size} images = {samples} samples per "
            f"epoch is not a multiple of train_batch_size x gradient_accumulation = {per_step}; "
            "change train.train_batch_size, train.gradient_accumulation or train.prompts_per_epoch"
        )
    if cfg.lora.enabled:
        positive("lora.rank", cfg.lora.rank)
    if cfg.ema.decay is not None and not 0 < cfg.ema.decay < 1:
        raise ConfigError(f"ema.decay: must be in (0, 1), got {cfg.ema.decay}")
    positive("ema.update_every", cfg.ema.update_every)
    if t.wandb.mode not in (None, "online", "offline"):
        raise ConfigError(f"train.wandb.mode: must be 'online' or 'offline' (or null: wandb's default), got {t.wandb.mode!r}")
    if cfg.ema.unit not in (None, "batch", "step", "epoch"):
        raise ConfigError(f"ema.unit: must be 'batch', 'step' or 'epoch', got {cfg.ema.unit!r}")


def batch_arithmetic(cfg: TrainingConfig, world: int, sampler_steps: int, trained_steps: int) -> dict:
    """What one epoch runs on ``world`` processes, or a ConfigError naming the field.

    Every number is what the trainer executes: samples are split evenly over the
    processes in whole groups, each process runs ``micro_batches_per_process``
    micro-batches of ``train_batch_size`` and steps the optimizer after every
    ``gradient_accumulation`` of them, with no partial accumulation at the end.
    """
    t = cfg.train
    samples = t.prompts_per_epoch * t.group_size
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if t.prompts_per_epoch % world:
        raise ConfigError(f"train.prompts_per_epoch: {t.prompts_per_epoch} groups cannot be split evenly over "
                          f"{world} processes (each process must see whole groups); use a multiple of {world}")
    per_proc = samples // world
    if per_proc % t.train_batch_size:
        raise ConfigError(f"train.train_batch_size: {per_proc} samples per process ({samples} over {world}) are not a "
                          f"multiple of train_batch_size = {t.train_batch_size}; change train.train_batch_size or "
                          "train.prompts_per_epoch")
    micro = per_proc // t.train_batch_size
    if micro % t.gradient_accumulation:
        raise ConfigError(f"train.gradient_accumulation: {micro} micro-batches per process per inner epoch are not a "
                          f"multiple of gradient_accumulation = {t.gradient_accumulation}, so the last optimizer step "
                          "would see a partial accumulation; change train.gradient_accumulation or train.train_batch_size")
    steps_inner = micro // t.gradient_accumulation
    return {
        "samples_per_epoch": samples, "groups": t.prompts_per_epoch, "group_size": t.group_size,
        "processes": world, "samples_per_process": per_proc,
        "sampler_steps": sampler_steps, "trained_steps_per_sample": trained_steps,
        "micro_batch": t.train_batch_size, "gradient_accumulation": t.gradient_accumulation,
        "micro_batches_per_process": micro,
        "samples_per_optimizer_step": t.train_batch_size * t.gradient_accumulation * world,
        "optimizer_steps_per_epoch": steps_inner * t.inner_epochs, "inner_epochs": t.inner_epochs,
        "forward_backward_sample_steps_per_epoch": samples * trained_steps * t.inner_epochs,
    }


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
