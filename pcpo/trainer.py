"""The one training loop, algorithm-agnostic.

Per epoch: pick prompts -> roll out G images per prompt (CFG, shared initial
noise where the framework wants it) -> rewards -> advantages -> K inner epochs
over shuffled samples x (a fraction of) timesteps, gradients accumulated over
samples x timesteps, grad-norm clipping, AdamW -> log -> checkpoint.

The algorithm only enters through its :class:`~pcpo.algorithms.Framework`
(sampler, advantages, objective, trained steps) and the :class:`CreditPlan`
(per-step weights, and for PCPO-DDIM the reshaped sampler).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import logging
import os
import signal
import time
from pathlib import Path

import torch

from pcpo import checkpoint as ck
from pcpo import sharding, tracking
from pcpo.advantages import ADVANTAGES, clip_advantages
from pcpo.algorithms import Framework, get_algorithm, micro_batch_rows
from pcpo.config import (ConfigError, TrainingConfig, WandbConfig, batch_arithmetic, config_to_dict,
                         recomputes_old_logprobs)
from pcpo.credit import install_policy_mix, plan_for_run, plan_summary
from pcpo.noise_schedules import schedule_levels, stochastic_count
from pcpo.objectives import OBJECTIVES, Objective, StepContext, approx_kl, outside_clip_range, step_kl
from pcpo.prompts import get_prompts
from pcpo.rollout import Trajectory, rollout
from pcpo.rollout_hooks import make_hook
from pcpo.trained_steps import select_steps, trained_step_count
from pcpo.utils import atomic_write_json, atomic_write_text, disk_full

log = logging.getLogger("pcpo.train")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on (disagreeing rollout, non-finite loss ...)."""


class RunStopped(Exception):
    """The run was stopped by a signal (SIGTERM from Slurm or a person, SIGINT); the message says
    the epoch it stopped in and the checkpoint a rerun resumes from.  ``code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.code = 128 + int(signum)


class _Signalled(BaseException):
    def __init__(self, signum: int):
        self.signum = signum


#: model kind -> family for the adapters shipped here, to check an algorithm before loading a model
STATIC_FAMILIES = {"tiny-eps": "ddim", "tiny-flow": "flow", "sd1": "ddim", "flux": "flow", "sd3": "flow"}

#: config fields that may change between a run and its resume (where files are, how much to log, how
#: long to run, the rollout micro-batch); every other field of config.json must match the checkpoint's
RESUMABLE_CHANGES = {"train.epochs", "train.checkpoint_every", "train.tensorboard", "train.device",
                     "train.deterministic_kernels", "train.logratio_tolerance", "train.sharding",
                     "sampling.batch_size", "model.gradient_checkpointing"} | {
                     f"train.wandb.{f.name}" for f in dataclasses.fields(WandbConfig)}


def identity_config(cfg: TrainingConfig) -> dict:
    """The flattened config fields a checkpoint must agree on to be resumed (see RESUMABLE_CHANGES;
    paths are left out too: a folder may be moved or named relatively)."""
    flat: dict = {}

    def walk(d, prefix):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            elif key not in RESUMABLE_CHANGES and not (k == "path" or k.endswith("_path")):
                flat[key] = v

    walk(json.loads(json.dumps(config_to_dict(cfg), default=str)), "")
    return flat


def resolve_framework(cfg: TrainingConfig, name: str, family: str | None = None) -> Framework:
    """The framework ``name`` as this config runs it: its ``per_family`` values for
    ``family`` (when given), then the config's ``algorithms:`` overrides."""
    fw = get_algorithm(name)
    if family is not None:
        fw = fw.for_family(family)
    fields = {f.name for f in dataclasses.fields(Framework)} - {"name", "base", "description", "references",
                                                                "config_references"}
    for key in ([fw.base] if fw.base else []) + [name]:
        over = cfg.algorithms.get(key) or {}
        if not isinstance(over, dict):
            raise ConfigError(f"algorithms.{key}: expected a mapping of framework fields")
        bad = sorted(set(over) - fields)
        if bad:
            raise ConfigError(f"algorithms.{key}.{bad[0]}: unknown framework field; known: {', '.join(sorted(fields))}")
        fw = dataclasses.replace(fw, **over)
    return fw


@dataclasses.dataclass
class RunSettings:
    """Everything the loop needs, after merging framework defaults and config."""

    sampler: str
    eta: float
    noise_level: float
    timestep_fraction: float
    step_selection: str
    clip_range: float
    adv_clip: float | None
    kl_beta: float
    kl_form: str
    cfg_grad: str
    max_grad_norm: float | None
    guidance_scale: float
    ema_decay: float | None  # None: no EMA
    ema_warmup: bool
    ema_every: int
    ema_unit: str

    @classmethod
    def build(cls, cfg: TrainingConfig, fw: Framework, family: str, default_guidance: float) -> "RunSettings":
        t, s = cfg.train, cfg.sampling

        def pick(v, d):
            return d if v is None else v

        e = cfg.ema
        ema_on = pick(e.enabled, fw.ema_decay is not None)
        ema_decay = pick(e.decay, fw.ema_decay if fw.ema_decay is not None else 0.9) if ema_on else None
        return cls(
            sampler=fw.sampler_for(family),
            eta=pick(s.eta, fw.eta),
            noise_level=pick(s.noise_level, fw.noise_level),
            timestep_fraction=pick(t.timestep_fraction, fw.timestep_fraction),
            step_selection=fw.step_selection,
            clip_range=pick(t.clip_range, fw.clip_range),
            adv_clip=pick(t.adv_clip, fw.adv_clip),
            kl_beta=pick(t.kl_beta, fw.kl_beta),
            kl_form=fw.kl_form,
            cfg_grad=fw.cfg_grad,
            max_grad_norm=pick(t.max_grad_norm, fw.defaults.get("max_grad_norm")),
            # a framework may fix its own guidance (DiffusionNFT samples CFG-free); a config still wins
            guidance_scale=pick(s.guidance_scale, fw.defaults.get("guidance_scale", default_guidance)),
            ema_decay=ema_decay,
            ema_warmup=bool(pick(e.warmup, fw.ema_warmup)),
            ema_every=int(pick(e.update_every, fw.ema_every)),
            ema_unit=pick(e.unit, fw.ema_unit),
        )


class Trainer:
    def __init__(self, cfg: TrainingConfig, algorithm: str, seed: int, out_dir: str | Path, progress: bool = True):
        self.cfg = cfg
        self.name = algorithm
        self.seed = int(seed)
        self.out = Path(out_dir)
        self.progress = progress
        self.fw = resolve_framework(cfg, algorithm)
        try:
            self._setup()
        except BaseException:
            self._unlock()  # a refused or failed setup leaves the folder free (and the lock file empty)
            raise

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        dev = cfg.train.device
        cpu = dev == "cpu" or (dev == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(cpu=cpu)
        if self.acc.device.type == "cuda" and cfg.train.deterministic_kernels:
            # The first-inner-step check compares the rollout's forward with the training
            # forward; TF32 and autotuned cuDNN kernels make them differ (measured on an
            # H200: |log ratio| 1e-4 on the fp32 tiny world). Ask for exact, repeatable kernels.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        batch_arithmetic(cfg, self.world, cfg.sampling.steps, 1)  # fail on the split before loading anything
        tracking.check_available(cfg)  # a switched-on logger's package is missing: fail now, in one line
        # one writer per run folder, decided before any model loads or anything is written
        self._lock_out()
        self.prompts = self._load_prompts()
        family = STATIC_FAMILIES.get(cfg.model.kind)
        self._refuse_zero_advantage(resolve_framework(cfg, self.name, family) if family else self.fw)
        self.reward_fn = self._build_reward()
        if getattr(self.reward_fn, "constant", False):  # a reward may declare that it cannot tell samples apart
            raise ConfigError(f"reward.name: the reward {cfg.reward.name!r} (with these reward.options) gives every "
                              "sample the same value, so every advantage would be 0 and nothing would be learned; "
                              "choose a reward that depends on the image")
        self._probe_reward()
        torch.manual_seed(self.seed)  # LoRA init

        self.model = ck.load_base_model(cfg.model.kind, cfg.model.path, **cfg.model.options)
        self.fw = resolve_framework(cfg, self.name, self.model.family)
        self._refuse_zero_advantage(self.fw)
        mdtype = DTYPES[cfg.model.dtype]
        with _quiet_empty_fp32_warning():
            self.model.to(self.acc.device, None if mdtype == torch.float32 else mdtype)
        den = self.model.denoiser
        den.requires_grad_(False)
        self.lora = cfg.lora.enabled
        if self.lora:
            ck.add_lora(den, cfg.lora.rank, cfg.lora.alpha, self.model.lora_target_modules)
        else:
            den.requires_grad_(True)
        for p in den.parameters():  # trainable weights in float32 even for a bf16 model
            if p.requires_grad:
                p.data = p.data.float()
        if cfg.model.gradient_checkpointing and hasattr(den, "enable_gradient_checkpointing"):
            den.enable_gradient_checkpointing()
        self.params = [p for p in den.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("lora: no trainable parameters (check the model adapter's lora_target_modules)")

        self.st = RunSettings.build(cfg, self.fw, self.model.family, self.model.default_guidance_scale)
        self.recompute = recomputes_old_logprobs(cfg.train.old_logprobs, cfg.model.dtype, self.acc.device.type)
        # a likelihood-free objective (DiffusionNFT) has no old log-probs to recompute, and its stored
        # predictions may come from another policy than the one trained (its sampling policy)
        self.likelihood = OBJECTIVES.get(self.fw.objective, "objective").likelihood
        if not self.likelihood:
            self.recompute = False
        if self.st.kl_beta > 0 and self.st.kl_form == "flow_grpo" and self.model.family != "flow":
            raise ConfigError(f"algorithms.{self.name}.kl_form: 'flow_grpo' divides by the flow SDE's sigma~(s) and "
                              "needs a flow model; use kl_form: gaussian on a DDIM model")
        self.ref_model = None
        if self.st.kl_beta > 0 and (not self.lora or cfg.train.kl_reference == "copy"):
            self.ref_model = copy.deepcopy(den).requires_grad_(False)

        t = cfg.train
        # FSDP (train.sharding: fsdp) over N > 1 processes: the denoiser is sharded in place and the
        # optimizer holds this rank's shards; one process has nothing to shard and runs unsharded
        self.sharded = t.sharding == "fsdp" and self.world > 1
        if self.sharded:
            units = sharding.shard(den, self.model.fsdp_block_classes, self.acc.device)
            log.info("FSDP: denoiser sharded over %d processes in %d block units + the root", self.world, len(units))
            self.params = [p for p in den.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                                     weight_decay=t.weight_decay)
        if not self.sharded:
            den, self.opt = self.acc.prepare(den, self.opt)
        self.model.denoiser = den

        # the credit plan and pcpo.variant from the resolved config: the one function `pcpo credit --config`
        # calls too (pcpo.credit.plan_for_run); uw-lambda makes the policy pred_ref + lambda_t (pred - pred_ref)
        self.fw, self.plan = plan_for_run(cfg, self.fw, self.st, self.model.schedule(), cfg.model.kind)
        install_policy_mix(self)
        if self.acc.is_main_process:
            log.info("credit: %s", plan_summary(self.plan))
        self.grid = self.plan.sample_grid
        self.epoch_grid = self.grid  # this epoch's grid: the framework's noise schedule applied
        self.stochastic = torch.ones(self.grid.num_steps, dtype=torch.bool)
        self.forwards = {}  # network function evaluations of the current epoch, by phase
        self._phase = "rollout"
        self._count_forwards()
        self.ema_updates = 0
        self.global_step = 0  # optimizer steps since the start of the run
        self.ema = [p.detach().clone() for p in self.params] if self.st.ema_decay is not None else None
        self.objective = Objective(self.fw.objective, self.fw.objective_form, self.st.clip_range)
        # the framework's advantage estimator (pcpo.advantages registry); its state, if any, is checkpointed
        self.tracker = ADVANTAGES.get(self.fw.advantage, "advantage")(**self.fw.advantage_options)
        base = self.seed * 1_000_003 + 17
        # common random numbers: the prompt and rollout-noise streams are re-seeded from (seed, epoch)
        # at every epoch (see _epoch_streams), so every algorithm run with the same seed and batch
        # shape sees the same prompts and noise in every epoch, whatever earlier epochs consumed
        self.gen_prompt, self.gen_rollout = self._epoch_streams(0)
        self.gen_train = torch.Generator().manual_seed(base + 1000 + self.rank)
        self.rows: list[dict] = []
        self.audit: list[dict] = []
        self.start_epoch = 0
        self.loggers: tracking.RunLoggers | None = None  # TensorBoard / wandb, opened by _run
        # the framework's rollout hook, built last: it may copy the trainable weights (pcpo.rollout_hooks)
        self.hook = make_hook(self.fw.rollout_hook, self, self.fw.rollout_hook_options)

    # ------------------------------------------------------------ pre-checks
    def _lock_out(self) -> None:
        """Rank 0 takes ``<out>/.lock`` (exclusive ``flock``, held until the run ends or the process
        dies); every rank learns the outcome, so a second job fails on all its processes at once."""
        from pcpo import runlock

        err = None
        self.lock = None
        if self.acc.is_main_process:
            try:
                self.lock = runlock.lock_run_folder(self.out)
                removed = ck.clean_stale_temp(self.out)
                if removed:
                    log.info("removed %d half-written checkpoint folder(s) of an earlier, stopped writer: %s",
                             len(removed), ", ".join(d.name for d in removed))
            except (runlock.RunLockedError, runlock.OutputNotWritableError) as e:
                err = e
            except OSError as e:
                err = runlock.not_writable(self.out, e)
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            msg = broadcast_object_list([str(err) if err is not None else None], from_process=0)[0]
            if msg is not None and err is None:
                err = runlock.RunLockedError(msg)
        if err is not None:
            raise err

    def _unlock(self) -> None:
        if getattr(self, "lock", None) is not None:
            from pcpo import runlock

            runlock.release(self.lock)
            self.lock = None

    def _load_prompts(self) -> list:
        cfg = self.cfg
        try:
            prompts = get_prompts(cfg.prompts.source, cfg.prompts.options)
        except UnicodeDecodeError as e:
            path = (cfg.prompts.options or {}).get("path", "the prompt file")
            raise ConfigError(f"prompts.options.path: {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                              f"offset {e.start}); give a text file with one prompt per line") from None
        if not prompts:
            raise ConfigError("prompts: the prompt source returned no prompts")
        return prompts

    def _refuse_zero_advantage(self, fw: Framework) -> None:
        """A run whose advantages are all zero by construction trains nothing while looking like a
        result: refuse it here, before any model loads (the estimator declares the rule)."""
        from pcpo.advantages import BatchShape, zero_advantage_reason

        t = self.cfg.train
        shape = BatchShape(algorithm=self.name, group_size=t.group_size, groups=t.prompts_per_epoch,
                           prompt_draw=fw.prompt_draw, epochs=t.epochs,
                           distinct_prompts=len({p for p, _ in self.prompts}))
        why = zero_advantage_reason(fw.advantage, fw.advantage_options, shape)
        if why:
            raise ConfigError(why)

    def _build_reward(self):
        import inspect

        from pcpo.rewards import REWARDS, get_reward, reward_names

        name, options = self.cfg.reward.name, dict(self.cfg.reward.options or {})
        reward_names()  # the built-in rewards registered
        if name in REWARDS:
            factory = REWARDS.get(name)
            try:
                sig = inspect.signature(factory)
            except (TypeError, ValueError):
                sig = None
            if sig is not None:
                try:
                    sig.bind(**options)
                except TypeError:
                    takes = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
                    bad = [k for k in options if k not in takes] or sorted(options)
                    raise ConfigError(
                        f"reward.options.{bad[0]}: the reward {name!r} takes no option {bad[0]!r}; it accepts "
                        f"{', '.join(takes) if takes else 'no options'}") from None
        return get_reward(name, **options)

    def _probe_reward(self) -> None:
        """Check, before the first rollout, that the reward can read every training prompt, so a
        prompt it cannot score fails now in one line instead of after a full rollout.  A reward
        function states what it needs with a ``check_prompts(prompts, metadata)`` attribute that
        raises ValueError; the tiny world's digit_alignment needs a digit in each prompt."""
        check = getattr(self.reward_fn, "check_prompts", None)
        if check is None and self.cfg.reward.name == "digit_alignment":
            from pcpo.rewards.tiny import prompted_digits

            def check(prompts, metadata):
                prompted_digits(prompts, metadata, "digit_alignment")
        if check is None:
            return
        seen: dict = {}
        for p, m in self.prompts:
            seen.setdefault(p, m)
        try:
            check(list(seen), [dict(m) for m in seen.values()])
        except (ValueError, KeyError) as e:
            msg = e.args[0] if e.args else str(e)
            raise ConfigError(f"prompts: the reward {self.cfg.reward.name!r} cannot score these prompts ({msg}); "
                              "use prompts it understands (prompts.source/options) or another reward.name") from None

    def _epoch_streams(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        """The prompt and rollout-noise generators of ``epoch``: a function of (seed, epoch) only,
        the same on every process (each draws the global batch's noise and keeps its rows)."""
        base = self.seed * 1_000_003 + 17
        return (torch.Generator().manual_seed(base + 7_919 * (2 * epoch + 1)),
                torch.Generator().manual_seed(base + 7_919 * (2 * epoch + 2)))

    # -------------------------------------------------------------- arithmetic
    def batch_arithmetic(self) -> dict:
        return batch_arithmetic(self.cfg, self.world, self.grid.num_steps, self.trained_steps())

    def trained_steps(self) -> int:
        T = self.grid.num_steps
        n = stochastic_count(self.fw.noise_schedule, T, self.fw.noise_schedule_options)
        return trained_step_count(self.st.step_selection, T, self.st.timestep_fraction, n)

    # ---------------------------------------------------------- matched compute
    def _count_forwards(self) -> None:
        """Count every network function evaluation through the adapter's guided prediction:
        rows of the batch, twice with classifier-free guidance (two branches), by the phase
        the trainer is in (rollout, hook, recompute, train, reference).  Rollout hooks that
        predict through ``trainer.model`` are counted too."""
        inner = self.model.predict_guided

        def counted(x, t, cond, uncond=None, scale=1.0, *a, **kw):
            n = int(x.shape[0]) * (2 if uncond is not None and float(scale) != 1.0 else 1)
            self.forwards[self._phase] = self.forwards.get(self._phase, 0) + n
            return inner(x, t, cond, uncond, scale, *a, **kw)

        self.model.predict_guided = counted

    def _forward_row(self) -> dict:
        """This epoch's forwards over every process: ``nfe_<phase>``, the backward passes (one per
        training forward) and ``nfe_total`` (forwards + backwards)."""
        phases = ("rollout", "hook", "recompute", "train", "reference")
        v = torch.tensor([float(self.forwards.get(p, 0)) for p in phases], dtype=torch.float64)
        if self.world > 1:
            v = self.acc.reduce(v.to(self.acc.device), reduction="sum").cpu()
        row = {f"nfe_{p}": int(x) for p, x in zip(phases, v.tolist())}
        row["nfe_backward"] = row["nfe_train"]
        row["nfe_total"] = int(v.sum()) + row["nfe_backward"]
        return row

    def describe(self) -> str:
        a = self.batch_arithmetic()
        return (f"{self.name} on {self.cfg.model.kind} ({self.st.sampler}, credit "
                f"{'proportional' if self.fw.proportional else 'native'}, {self.fw.objective}/{self.fw.objective_form}); "
                f"batch: {a['groups']} prompts x {a['group_size']} images = {a['samples_per_epoch']} samples/epoch"
                f"{' over ' + str(a['processes']) + ' processes (' + str(a['samples_per_process']) + ' each)' if a['processes'] > 1 else ''}"
                f"{', denoiser sharded (FSDP)' if self.sharded else ''}; "
                f"{a['sampler_steps']} sampler steps, {a['trained_steps_per_sample']} trained per sample "
                f"({self.st.step_selection}); micro-batch {a['micro_batch']} x accumulation "
                f"{a['gradient_accumulation']}{' x ' + str(a['processes']) + ' processes' if a['processes'] > 1 else ''}"
                f" = {a['samples_per_optimizer_step']} samples per optimizer step -> "
                f"{a['optimizer_steps_per_epoch']} optimizer steps/epoch ({a['inner_epochs']} inner epochs); "
                f"{a['forward_backward_sample_steps_per_epoch']} sample-step forward/backward passes per epoch; "
                f"old log-probs: {'recomputed in the training layout' if self.recompute else 'from the rollout'} "
                f"(train.old_logprobs: {self.cfg.train.old_logprobs})")

    # ------------------------------------------------------------------ resume
    def _state(self, epoch: int, rank_rng: list | None = None) -> dict:
        return {
            "epoch": epoch,
            "optimizer": self.opt.state_dict(),
            "gen_prompt": self.gen_prompt.get_state(), "gen_rollout": self.gen_rollout.get_state(),
            "gen_train": self.gen_train.get_state(), "torch_rng": torch.get_rng_state(),
            # per process: [(gen_train, torch_rng)] by rank (the entries above are rank 0's)
            "rank_rng": rank_rng,
            "tracker": self.tracker.state_dict() if hasattr(self.tracker, "state_dict") else None,
            "ema": [e.cpu() for e in self.ema] if self.ema is not None else None, "ema_updates": self.ema_updates,
            "global_step": self.global_step,
            "hook": self.hook.state_dict() if self.hook is not None else None,
            # the logs up to this epoch travel with the checkpoint: a workflow manager may delete
            # an interrupted job's metrics.csv before rerunning it
            "rows": list(self.rows), "audit": list(self.audit),
        }

    def _meta(self, epoch: int) -> dict:
        return {
            "algorithm": self.name, "seed": self.seed, "epoch": epoch, "experiment": self.cfg.experiment,
            "model": {"kind": self.cfg.model.kind, "path": self.cfg.model.path, "options": self.cfg.model.options},
            "lora": dataclasses.asdict(self.cfg.lora), "ema": self.ema is not None,
            # the framework evaluates its EMA weights (Flow-GRPO): `pcpo sample` picks them by default
            "ema_eval": self.ema is not None,
            "sampler": self.st.sampler, "sampling_steps": self.cfg.sampling.steps,
            "guidance_scale": self.st.guidance_scale, "eta": self.st.eta, "noise_level": self.st.noise_level,
            "framework": self.fw.summary(),
            # what a resume must agree on (Trainer.try_resume)
            "identity": {"config": identity_config(self.cfg)},
        }

    def gather_sharded(self) -> dict | None:
        """With FSDP, the whole weights, optimizer state and EMA on rank 0 for ``save`` (a
        collective: every rank calls it at a checkpoint); None when nothing is sharded."""
        if not self.sharded:
            return None
        den = self.model.denoiser
        names = [n for n, p in den.named_parameters() if p.requires_grad]
        return {"trainable": sharding.full_model_state(den),
                "optimizer": sharding.full_optimizer_state(den, self.opt),
                "ema": dict(zip(names, [sharding.full_tensor(e) for e in self.ema])) if self.ema is not None else None}

    def save(self, epoch: int, rank_rng: list | None = None, gathered: dict | None = None) -> Path:
        den = self.acc.unwrap_model(self.model.denoiser)
        state = self._state(epoch, rank_rng)
        ema = None
        if gathered is not None:
            trainable = gathered["trainable"]
            state["optimizer"] = gathered["optimizer"]
            if gathered["ema"] is not None:
                ema = {k: gathered["ema"].get(k, v) for k, v in trainable.items()}
        else:
            trainable = ck.trainable_state(den, self.lora)
            if self.ema is not None:
                names = [n for n, p in den.named_parameters() if p.requires_grad]
                full = dict(zip(names, self.ema))
                ema = {k: full.get(k, v) for k, v in trainable.items()} if not self.lora else self._ema_lora(den)
        state["sharding"] = "fsdp" if self.sharded else "none"
        path = ck.write_checkpoint(self.out, epoch, self._meta(epoch), trainable, state, ema)
        self.last_checkpoint = path
        log.info("checkpoint written: %s", path)
        return path

    def _ema_lora(self, den) -> dict:
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                p.copy_(e)
        sd = {k: v.clone() for k, v in ck.trainable_state(den, True).items()}
        with torch.no_grad():
            for p, b in zip(self.params, backup):
                p.copy_(b)
        return sd

    def _check_identity(self, meta: dict, ckpt: Path) -> None:
        """A checkpoint of another run (algorithm, seed or config) is never resumed: refuse, naming it."""
        if meta["algorithm"] != self.name or meta["seed"] != self.seed:
            raise ConfigError(f"--out: {self.out} holds a run of {meta['algorithm']} seed {meta['seed']}; "
                              "use another output folder")
        theirs = (meta.get("identity") or {}).get("config")
        if theirs is None:  # written before checkpoints recorded their config
            return
        mine = identity_config(self.cfg)
        for key in sorted(set(theirs) | set(mine)):
            if theirs.get(key, "(unset)") != mine.get(key, "(unset)"):
                raise ConfigError(f"{key}: {ckpt} was written with {theirs.get(key, '(unset)')!r}, this run has "
                                  f"{mine.get(key, '(unset)')!r}; resume with the run's own config or use another "
                                  "--out")

    def try_resume(self) -> bool:
        """Resume from the newest checkpoint that verifies (pcpo.checkpoint.verify_checkpoint), trying
        them newest first; an unreadable one is logged and skipped (kept on disk)."""
        den = self.acc.unwrap_model(self.model.denoiser)
        shapes = None if self.sharded else {k: tuple(v.shape) for k, v in ck.trainable_state(den, self.lora).items()}
        cands = ck.resume_candidates(self.out)
        if (self.out / "checkpoints").is_dir() and not (self.out / "checkpoints" / "latest").is_file() and cands:
            log.warning("%s is missing; looking for the newest usable checkpoint among %d folder(s)",
                        self.out / "checkpoints" / "latest", len(cands))
        for last in cands:
            try:
                meta, st, trainable, _ = ck.verify_checkpoint(last, shapes)
            except ck.CheckpointInvalid as e:
                log.warning("skipping checkpoint %s: %s; it is kept, and an earlier one is tried", last.name, e)
                continue
            self._check_identity(meta, last)
            self._restore(last, st, trainable)
            return True
        if cands:
            log.warning("no usable checkpoint in %s (%d tried, all unreadable): starting from epoch 0",
                        self.out / "checkpoints", len(cands))
        return False

    def _restore(self, last: Path, st: dict, trainable: dict) -> None:
        den = self.acc.unwrap_model(self.model.denoiser)
        written = st.get("sharding", "none")
        if written != ("fsdp" if self.sharded else "none"):
            raise ConfigError(f"--out: {last} was written with train.sharding: {written} over "
                              f"{len(st.get('rank_rng') or [0])} processes; resume it the same way")
        if self.sharded:
            sharding.load_full_model_state(den, trainable)
            sharding.load_full_optimizer_state(den, self.opt, st["optimizer"])
        else:
            ck.apply_trainable(den, trainable, self.lora)
            self.opt.load_state_dict(st["optimizer"])
        self.gen_prompt.set_state(st["gen_prompt"])
        self.gen_rollout.set_state(st["gen_rollout"])
        rank_rng = st.get("rank_rng")
        if rank_rng is None:  # a checkpoint from before per-process streams were saved
            g, r = st["gen_train"], st["torch_rng"]
        elif len(rank_rng) != self.world:
            raise ConfigError(f"--out: {last} was written by {len(rank_rng)} processes; resume it with as many "
                              f"(this run has {self.world})")
        else:
            g, r = rank_rng[self.rank]
        self.gen_train.set_state(g)
        torch.set_rng_state(r)
        if hasattr(self.tracker, "load_state_dict") and st["tracker"]:
            self.tracker.load_state_dict(st["tracker"])
        if self.ema is not None and st["ema"] is not None:
            self.ema = [sharding.like(e, p) for e, p in zip(st["ema"], self.params)]
            self.ema_updates = int(st.get("ema_updates", 0))
        self.global_step = int(st.get("global_step", 0))
        if self.hook is not None and st.get("hook") is not None:
            self.hook.load_state_dict(st["hook"])
        self.start_epoch = st["epoch"] + 1
        self.rows = [r for r in st["rows"] if int(r["epoch"]) <= st["epoch"]]
        self.audit = [r for r in st["audit"] if int(r["epoch"]) <= st["epoch"]]
        self.last_checkpoint = last
        log.info("resuming from %s (next epoch %d)", last, self.start_epoch)

    # -------------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train to ``train.epochs``, resuming from the newest usable checkpoint.  SIGTERM/SIGINT stop
        it with a log line saying where a rerun resumes (:class:`RunStopped`); a full disk raises
        :class:`pcpo.checkpoint.DiskFullError` naming the file.  The run folder's lock is released
        at the end."""
        import threading

        self.last_checkpoint = getattr(self, "last_checkpoint", None)
        self._epoch_now = None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            def stop(signum, frame):
                raise _Signalled(signum)

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, stop)
        try:
            return self._run()
        except _Signalled as e:
            name = signal.Signals(e.signum).name
            for sig in previous:  # a second signal while cleaning up: the default action
                signal.signal(sig, signal.SIG_DFL)
            last = self.last_checkpoint or ck.latest_checkpoint(self.out)
            where = (f"rerun the same command to resume from {last} (epoch {int(last.name.split('_')[-1])})"
                     if last is not None else "no checkpoint was written yet: a rerun starts at epoch 0")
            at = f"in epoch {self._epoch_now}" if self._epoch_now is not None else "before the first epoch"
            msg = f"stopped by {name} {at}; {where}"
            log.warning(msg)
            raise RunStopped(msg, e.signum) from None
        except ck.DiskFullError:
            raise
        except (OSError, RuntimeError) as e:
            if not disk_full(e):
                raise
            path = getattr(e, "filename", None) or self.out
            raise ck.DiskFullError(path, self.last_checkpoint or ck.latest_checkpoint(self.out)) from None
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            if self.loggers is not None:  # closed already after a finished run; else the run failed
                self.loggers.close(failed=True)
            self._unlock()

    def _summary(self) -> dict:
        zero = sum(1 for r in self.rows if int(r.get("zero_grad", 0) or 0))
        return {"epochs": self.cfg.train.epochs, "zero_grad_epochs": zero}

    def _finish(self) -> None:
        """DONE with the run summary; a run that never had a gradient says so loudly."""
        summary = self._summary()
        atomic_write_text(self.out / "DONE", json.dumps(summary) + "\n")
        n, z = len(self.rows), summary["zero_grad_epochs"]
        if n and z == n:
            log.warning("every one of the %d epochs had a zero gradient (all advantages 0 or a flat objective): this "
                        "run did not train, its checkpoints are the base model; see adv_abs_mean and grad_norm in %s",
                        n, self.out / "metrics.csv")
        elif z:
            log.info("%d of %d epochs had a zero gradient (column zero_grad of metrics.csv)", z, n)

    def _run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if self.acc.is_main_process:
            atomic_write_json(self.out / "config.json", {
                "algorithm": self.name, "seed": self.seed, "config": config_to_dict(self.cfg),
                "framework": self.fw.summary(), "settings": dataclasses.asdict(self.st),
                "batch_arithmetic": self.batch_arithmetic(),
                "credit": {"native": self.plan.native.tolist(), "train_weight": self.plan.train_weight.tolist(),
                           "grid_weight": self.plan.grid_weight.tolist(), "sigma": self.grid.std.tolist(),
                           "timesteps": self.grid.timesteps.tolist(), **self._objective_weight()},
            })
        print(self.describe(), flush=True)
        fault = os.environ.get("PCPO_FAULT_AFTER_EPOCH")
        epochs = self.cfg.train.epochs
        if self.start_epoch >= epochs:
            # the workflow manager may have deleted the logs of an interrupted job whose last
            # checkpoint was already the final one: rewrite them from the checkpoint's rows
            log.info("run already complete (%d epochs); rewriting its logs", epochs)
            if self.acc.is_main_process and self.rows:
                self._write_logs(self.rows[-1])
                self._finish()
            return self.out
        # the run's TensorBoard / wandb loggers (pcpo.tracking; only the main process writes)
        self.loggers = tracking.RunLoggers(self.cfg, self.out, self.name, self.seed, self.start_epoch,
                                           {"algorithm": self.name, "seed": self.seed, **config_to_dict(self.cfg)},
                                           main_process=self.acc.is_main_process)
        from tqdm.auto import tqdm

        bar = tqdm(range(self.start_epoch, epochs), desc=f"{self.name} s{self.seed}", initial=self.start_epoch,
                   total=epochs, disable=not self.progress or not self.acc.is_main_process)
        for epoch in bar:
            self._epoch_now = epoch
            row, audit = self.epoch(epoch)
            self.rows.append(row)
            self.audit.extend(audit)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", clip=f"{row['clipfrac']:.2f}")
            ckpt = (epoch + 1) % self.cfg.train.checkpoint_every == 0 or epoch == epochs - 1
            # every process's own random streams travel with the checkpoint (a collective: all ranks call it)
            rank_rng = self._gather_rank_rng() if ckpt else None
            gathered = self.gather_sharded() if ckpt else None
            if self.acc.is_main_process:
                self._write_logs(row)
                self.loggers.log_epoch(row, images=ckpt)
                if ckpt:
                    self.save(epoch, rank_rng, gathered)
            if ckpt and self.world > 1:
                self.acc.wait_for_everyone()
            if fault is not None and int(fault) == epoch:
                sig = getattr(signal, os.environ.get("PCPO_FAULT_SIGNAL", "SIGKILL"))
                log.warning("PCPO_FAULT_AFTER_EPOCH=%s: sending this process %s to simulate a crash or a stop",
                            fault, sig.name)
                os.kill(os.getpid(), sig)
        self._epoch_now = None
        self.loggers.close()
        if self.acc.is_main_process:
            self._finish()
        return self.out

    def _objective_weight(self) -> dict:
        """An objective's own per-step loss factor (TempFlow-GRPO's s_t / mean s) over the steps its
        selector trains, for the report's credit plot; empty for objectives without one."""
        fn = OBJECTIVES.get(self.fw.objective).step_weight
        if fn is None:
            return {}
        T = self.grid.num_steps
        pool = torch.unique(select_steps(self.st.step_selection, T, self.st.timestep_fraction, 64,
                                         torch.Generator().manual_seed(0),
                                         stochastic=self.stochastic if self.likelihood else None))
        return {"objective_weight": torch.as_tensor(fn(self.grid, pool), dtype=torch.float64).tolist(),
                "objective_pool": pool.tolist()}

    def _write_logs(self, row: dict) -> None:
        _write_csv(self.out / "metrics.csv", self.rows)
        _write_csv(self.out / "credit_audit.csv", self.audit)

    # ------------------------------------------------------------------ epoch
    def sample_prompts(self) -> tuple[list[str], list[dict], torch.Tensor]:
        t = self.cfg.train
        per_rank = t.prompts_per_epoch // self.world
        prompts, meta, gids = [], [], []
        if self.fw.prompt_draw == "per_sample":
            # DDPO: every sample draws its own prompt; a "group" is one sample
            n = t.prompts_per_epoch * t.group_size
            idx = torch.randint(len(self.prompts), (n,), generator=self.gen_prompt)
            lo = self.rank * per_rank * t.group_size
            for k, i in enumerate(idx[lo:lo + per_rank * t.group_size].tolist()):
                p, m = self.prompts[i]
                prompts.append(p)
                meta.append(dict(m))
                gids.append(lo + k)
            return prompts, meta, torch.tensor(gids)
        idx = torch.randint(len(self.prompts), (t.prompts_per_epoch,), generator=self.gen_prompt)
        mine = idx[self.rank * per_rank:(self.rank + 1) * per_rank]
        for gi, i in enumerate(mine.tolist()):
            p, m = self.prompts[i]
            for _ in range(t.group_size):
                prompts.append(p)
                meta.append(dict(m))
                gids.append(self.rank * per_rank + gi)
        return prompts, meta, torch.tensor(gids)

    def advantages(self, traj: Trajectory) -> torch.Tensor:
        rewards = traj.rewards
        prompts = traj.prompts
        gids = traj.group_ids
        if self.world > 1:
            from accelerate.utils import gather_object

            rewards = self.acc.gather(rewards.to(self.acc.device)).cpu()
            gids = self.acc.gather(gids.to(self.acc.device)).cpu()
            prompts = gather_object(prompts)
        adv = torch.as_tensor(self.tracker(prompts, rewards, gids), dtype=torch.float32).reshape(-1)
        if adv.numel() != rewards.numel():
            raise TrainingError(f"advantage estimator {self.fw.advantage!r} returned {adv.numel()} values "
                                f"for {rewards.numel()} rewards")
        adv = clip_advantages(adv, self.st.adv_clip)
        if self.world > 1:
            n = traj.batch_size
            adv = adv[self.rank * n:(self.rank + 1) * n]
        return adv

    def epoch(self, epoch: int) -> tuple[dict, list[dict]]:
        t0 = time.perf_counter()
        self.gen_prompt, self.gen_rollout = self._epoch_streams(epoch)
        prompts, meta, gids = self.sample_prompts()
        self.model.denoiser.eval()
        dist = {}
        if self.world > 1:
            n = len(prompts)
            groups = self.cfg.train.prompts_per_epoch * (self.cfg.train.group_size
                                                         if self.fw.prompt_draw == "per_sample" else 1)
            dist = {"noise_rows": (self.rank * n, n * self.world), "groups_total": groups}
        T = self.grid.num_steps
        levels = schedule_levels(self.fw.noise_schedule, T, epoch, self.fw.noise_schedule_options)
        self.stochastic = levels > 0
        self.epoch_grid = self.grid if bool((levels == 1).all()) else self.grid.scaled(levels)
        self.forwards = {}
        self._phase = "rollout"
        if self.hook is not None:
            self.hook.before_rollout(self, epoch)
        traj = rollout(self.model, prompts, self.epoch_grid, self.st.guidance_scale, self.gen_rollout, meta, gids,
                       share_initial_noise=self.fw.share_initial_noise, batch_size=self.cfg.sampling.batch_size,
                       reduction=self.cfg.sampling.reduction, **dist)
        if self.hook is not None:
            self._phase = "hook"
            traj = self.hook.after_rollout(self, traj, epoch)
        t1 = time.perf_counter()
        try:
            rewards, info = self.reward_fn(traj.images, traj.prompts, traj.metadata)
        except (ValueError, KeyError) as e:
            raise TrainingError(f"epoch {epoch}: the reward {self.cfg.reward.name!r} failed on this epoch's samples "
                                f"({e.args[0] if e.args else e}); check reward.name and the prompts") from None
        traj.rewards = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1).cpu()
        all_rewards = self.acc.gather(traj.rewards.to(self.acc.device)).cpu() if self.world > 1 else traj.rewards
        t2 = time.perf_counter()
        if self.loggers is not None:
            self.loggers.stash(traj)  # a few samples for the checkpoint's image grid
        traj.advantages = self.advantages(traj)
        all_adv = self.acc.gather(traj.advantages.to(self.acc.device)).cpu() if self.world > 1 else traj.advantages
        stats = self.update(traj, epoch)
        if self.hook is not None:
            self.hook.after_update(self, epoch)
        t3 = time.perf_counter()
        row = {
            "epoch": epoch, "samples": int(all_rewards.numel()),
            "reward_mean": float(all_rewards.mean()), "reward_std": float(all_rewards.std(unbiased=False)),
            "reward_min": float(all_rewards.min()), "reward_max": float(all_rewards.max()),
            "adv_abs_mean": float(all_adv.abs().mean()),
            **stats["scalars"], **self._forward_row(),
            "stochastic_steps": int(self.stochastic.sum()),
            # 1: no optimizer step of this epoch had a gradient (all advantages 0, or a flat objective)
            "zero_grad": int(stats["scalars"]["grad_norm"] == 0.0),
            "time_rollout": t1 - t0, "time_reward": t2 - t1, "time_train": t3 - t2, "time_epoch": t3 - t0,
        }
        for k, v in (info or {}).items():
            if isinstance(v, (int, float)):
                row[f"reward_info_{k}"] = float(v)
            elif isinstance(v, torch.Tensor) and v.numel() == traj.batch_size:
                row[f"reward_info_{k}"] = float(v.float().mean())
        audit = []
        for i in range(self.grid.num_steps):
            audit.append({"epoch": epoch, "step": i, "timestep": float(self.grid.timesteps[i]),
                          "native_weight": float(self.plan.native[i]), "train_weight": float(self.plan.train_weight[i]),
                          "clipfrac": stats["clip_by_step"][i], "clipfrac_inactive": stats["inactive_by_step"][i],
                          "grad_share": stats["grad_share"][i],
                          "rollout_mismatch_mean": stats["mismatch_mean_by_step"][i],
                          "rollout_mismatch_max": stats["mismatch_max_by_step"][i],
                          "count": stats["count_by_step"][i]})
        return row, audit

    # ------------------------------------------------------------------ update
    def _ref_prediction(self, x, tt, cond, uncond):
        phase, self._phase = self._phase, "reference"
        try:
            return self._ref_prediction_inner(x, tt, cond, uncond)
        finally:
            self._phase = phase

    def _ref_prediction_fn(self, x, tt, cond, uncond):
        """The reference prediction at (x, tt), made on the first call (no gradient) and then reused,
        so an objective that reads it (StepContext.ref_pred) and the KL term share one forward."""
        cache = []

        def fn():
            if not cache:
                with torch.no_grad():
                    cache.append(self._ref_prediction(x, tt, cond, uncond))
            return cache[0]
        return fn

    def _old_mean_fn(self, traj: Trajectory, rows, idx, x, x_next):
        """The rollout policy's step mean at (x, x_next), from its stored prediction (lazy)."""
        def fn():
            with torch.no_grad():
                return self.epoch_grid.step(idx, traj.preds[rows, idx].to(x.device), x, prev_sample=x_next).mean
        return fn

    def _ref_prediction_inner(self, x, tt, cond, uncond):
        if self.ref_model is not None:
            live = self.model.denoiser
            self.model.denoiser = self.ref_model
            try:
                return self.model.predict_guided(x, tt, cond, uncond, self.st.guidance_scale)
            finally:
                self.model.denoiser = live
        den = self.acc.unwrap_model(self.model.denoiser)
        den.disable_adapters()
        try:
            return self.model.predict_guided(x, tt, cond, uncond, self.st.guidance_scale)
        finally:
            den.enable_adapters()

    def _score(self, traj: Trajectory, rows: torch.Tensor, idx: torch.Tensor, cond, uncond):
        """The training forward of rows ``rows`` at their steps ``idx``: the guided prediction,
        the step re-scored at the stored next state, and the objective's log-ratio against the
        stored old values.  The update and the recompute pass both score through here, so the
        recomputed old values come from exactly the training computation."""
        dev, red = self.acc.device, self.cfg.sampling.reduction
        x = traj.states[rows, idx].to(dev)
        x_next = traj.states[rows, idx + 1].to(dev)
        grid = self.epoch_grid
        tt = grid.model_time(idx).to(dev)
        # the denoiser's own dtype, as the rollout's (sampler.py: adapter.dtype): model.dtype for LoRA (frozen
        # base weights), float32 for a full fine-tune, whose trainable weights are kept in float32 above
        pred = self.model.predict_guided(x.to(self.model.dtype), tt, cond, uncond, self.st.guidance_scale,
                                         cfg_grad=self.st.cfg_grad)
        out = grid.step(idx, pred, x, prev_sample=x_next, reduction=red)
        lr_ = self.objective.log_ratio(
            step_weight=self.plan.train_weight.float()[idx].to(dev), grid_weight=self.plan.grid_weight.float()[idx].to(dev),
            new_log_prob=out.log_prob, old_log_prob=traj.log_probs[rows, idx].to(dev),
            delta=pred.float() - traj.preds[rows, idx].to(dev), noise=traj.noise[rows, idx].to(dev), reduction=red)
        return x, x_next, tt, pred, out, lr_

    def _gather_rank_rng(self) -> list:
        state = (self.gen_train.get_state(), torch.get_rng_state())
        if self.world == 1:
            return [state]
        from accelerate.utils import gather_object

        return gather_object([state])

    @torch.no_grad()
    def _recompute_old(self, traj: Trajectory, layouts: list, epoch: int):
        """``train.old_logprobs: recompute``: before the epoch's first update, score every
        trained (sample, step) with the training forward in exactly the training layout (the
        same micro-batches, the same per-row steps, train mode) and make those the old
        log-probs, predictions and standardised noise.  Rounding differences between the
        rollout's batches and the training's (bf16, other kernels) then no longer reach the
        ratio.  Returns the rollout-vs-recomputed |log rho| per step (sum, max, count),
        measured with the objective's own log-ratio before the values are replaced."""
        dev = self.acc.device
        B, T = traj.batch_size, traj.num_steps
        done = torch.zeros(B, T, dtype=torch.bool)
        s_abs = torch.zeros(T, dtype=torch.float64)
        s_max = torch.zeros(T, dtype=torch.float64)
        s_n = torch.zeros(T)
        new_lp, new_pred, new_z = traj.log_probs.clone(), traj.preds.clone(), traj.noise.clone()
        for micro, tsel in layouts:
            for rows in micro:
                cond = {k: v[rows].to(dev) for k, v in traj.cond.items()}
                uncond = {k: v[rows].to(dev) for k, v in traj.uncond.items()} if traj.uncond is not None else None
                for j in range(tsel.shape[1]):
                    idx = tsel[rows, j]
                    fresh = ~done[rows, idx]
                    # sharded, every rank runs every forward: a skipped one would stall the others' all-gathers
                    if not fresh.any() and not self.sharded:
                        continue
                    _, _, _, pred, out, lr_ = self._score(traj, rows, idx, cond, uncond)
                    r, i, a = rows[fresh], idx[fresh], lr_.abs().double().cpu()[fresh]
                    s_abs.index_add_(0, i, a)
                    s_n.index_add_(0, i, torch.ones(len(r)))
                    s_max.scatter_reduce_(0, i, a, reduce="amax")
                    new_lp[r, i] = out.log_prob.float().cpu()[fresh]
                    new_pred[r, i] = pred.float().cpu()[fresh]
                    new_z[r, i] = out.noise.float().cpu()[fresh]
                    done[r, i] = True
        traj.log_probs, traj.preds, traj.noise = new_lp, new_pred, new_z
        return s_abs, s_max, s_n

    @torch.no_grad()
    def _ema_step(self) -> None:
        """One EMA step, with ``s`` the optimizer steps taken so far: called after every
        training micro-batch (``ema_unit: batch``, Flow-GRPO's ``ema.step(params, global_step)``
        in ``flow_grpo/ema.py``), after every optimizer step (``step``, DiffusionNFT's) or once
        per epoch (``epoch``, DanceGRPO's ``FSDP_EMA.update``).
        It updates when ``(s + 1) % ema_every == 0``: ``e <- d e + (1 - d) p`` with ``d`` the
        decay, or ``min((1 + s) / (10 + s), decay)`` with warm-up."""
        s = self.global_step
        if (s + 1) % self.st.ema_every:
            return
        d = self.st.ema_decay
        if self.st.ema_warmup:
            d = min((1 + s) / (10 + s), d)
        for e, p in zip(self.ema, self.params):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        self.ema_updates += 1

    def update(self, traj: Trajectory, epoch: int) -> dict:
        cfg = self.cfg.train
        dev = self.acc.device
        mdtype = DTYPES[self.cfg.model.dtype]
        B, T = traj.batch_size, traj.num_steps
        K = self.trained_steps()
        accum = cfg.gradient_accumulation
        scale = 1.0 / (K * accum)
        den = self.model.denoiser
        den.train()
        clip_n = torch.zeros(T)
        out_n = torch.zeros(T)
        cnt = torch.zeros(T)
        gshare = torch.zeros(T, dtype=torch.float64)
        losses, kls, akls, gnorms = [], [], [], []
        first_max = 0.0
        opt_steps = 0
        layouts = []  # (micro-batches, per-row steps) of every inner epoch, drawn before any update
        for _ in range(cfg.inner_epochs):
            micro = micro_batch_rows(self.fw.micro_batches, traj.group_ids, cfg.train_batch_size, self.gen_train)
            # a likelihood-free objective trains deterministic steps too (they need no log-probability)
            tsel = select_steps(self.st.step_selection, T, self.st.timestep_fraction, B, self.gen_train,
                                stochastic=self.stochastic if self.likelihood else None)
            layouts.append((micro, tsel))
        # the steps trained this epoch, for objectives that normalise per-step weights over them
        pool = torch.unique(torch.cat([ts.reshape(-1) for _, ts in layouts]))
        t_re = time.perf_counter()
        self._phase = "recompute"
        mism = self._recompute_old(traj, layouts, epoch) if self.recompute else None
        self._phase = "train"
        t_re = time.perf_counter() - t_re
        first_abs = torch.zeros(T, dtype=torch.float64)  # rollout-vs-training |log rho| before the first update
        first_max_t = torch.zeros(T, dtype=torch.float64)
        first_n = torch.zeros(T)
        for inner, (micro, tsel) in enumerate(layouts):
            for mi, rows in enumerate(micro):
                cond = {k: v[rows].to(dev) for k, v in traj.cond.items()}
                uncond = {k: v[rows].to(dev) for k, v in traj.uncond.items()} if traj.uncond is not None else None
                adv = traj.advantages[rows].to(dev)
                sync = (mi + 1) % accum == 0  # batch_arithmetic rules out a partial accumulation
                ctx = contextlib.nullcontext() if sync else self.acc.no_sync(den)
                with ctx:
                    for j in range(K):
                        idx = tsel[rows, j]
                        x, x_next, tt, pred, out, lr_ = self._score(traj, rows, idx, cond, uncond)
                        pred.retain_grad()
                        if inner == 0 and opt_steps == 0 and self.likelihood:
                            a = lr_.detach().abs()
                            m = float(a.max())
                            first_max = max(first_max, m)
                            if mism is None:  # the metric is the gate's own log-ratio
                                ac = a.double().cpu()
                                first_abs.index_add_(0, idx, ac)
                                first_n.index_add_(0, idx, torch.ones(len(rows)))
                                first_max_t.scatter_reduce_(0, idx, ac, reduce="amax")
                            if m > cfg.logratio_tolerance:
                                src = ("the recomputed old log-probs (train.old_logprobs: recompute) and the training "
                                       "forward disagree: non-deterministic kernels" if self.recompute else
                                       "the rollout and the training forward pass disagree (model in a different mode, "
                                       "non-deterministic layers, a wrong stored state, or low-precision rounding: "
                                       "set train.old_logprobs: recompute)")
                                raise TrainingError(
                                    f"epoch {epoch}: |log ratio| = {m:.3e} at the first inner step (tolerance "
                                    f"{cfg.logratio_tolerance:g}): {src}")
                        ref_fn = self._ref_prediction_fn(x.to(mdtype), tt, cond, uncond)
                        ctx = StepContext(lr_, adv, self.st.clip_range, idx=idx, out=out, grid=self.epoch_grid,
                                          options=self.fw.objective_options, trained_pool=pool,
                                          old_mean_fn=self._old_mean_fn(traj, rows, idx, x, x_next),
                                          pred=pred, old_pred=traj.preds[rows, idx].to(dev), sample=x,
                                          final_sample=traj.states[rows, -1].to(dev),
                                          group_ids=traj.group_ids[rows], ref_pred_fn=ref_fn)
                        per, inactive = self.objective.loss(lr_, adv, ctx)
                        loss = per.mean()
                        if self.st.kl_beta > 0:
                            with torch.no_grad():
                                ref_pred = ref_fn()
                                ref_mean = self.epoch_grid.step(idx, ref_pred, x, prev_sample=x_next).mean
                            kl = step_kl(out.mean, ref_mean, out.std, self.epoch_grid.sde_sigma[idx].to(dev),
                                         self.st.kl_form, self.cfg.sampling.reduction,
                                         pred=pred, ref_pred=ref_pred).mean()
                            loss = loss + self.st.kl_beta * kl
                            kls.append(float(kl.detach()))
                        if not torch.isfinite(loss):
                            last = ck.latest_checkpoint(self.out)
                            raise TrainingError(f"epoch {epoch}: non-finite loss ({float(loss.detach())}); the last good "
                                                f"checkpoint is {last or 'none (no checkpoint yet)'}")
                        self.acc.backward(loss * scale)
                        with torch.no_grad():
                            gnorm = pred.grad.float().flatten(1).norm(dim=1).double().cpu() if pred.grad is not None \
                                else torch.zeros(len(rows), dtype=torch.float64)
                            gshare.index_add_(0, idx, gnorm)
                            outside = outside_clip_range(lr_, self.st.clip_range)
                            clip_n.index_add_(0, idx, inactive.float().cpu())
                            out_n.index_add_(0, idx, outside.float().cpu())
                            cnt.index_add_(0, idx, torch.ones(len(rows)))
                        losses.append(float(loss.detach()))
                        akls.append(float(approx_kl(lr_)))
                if sync:
                    if self.st.max_grad_norm:
                        clip = sharding.clip_grad_norm if self.sharded else self.acc.clip_grad_norm_
                        gn = clip(self.params, self.st.max_grad_norm)
                    else:
                        gn = sharding.grad_norm(self.params)
                    gnorms.append(float(gn))
                    self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                    opt_steps += 1
                    self.global_step += 1
                    if self.ema is not None and self.st.ema_unit == "step":
                        self._ema_step()
                if self.ema is not None and self.st.ema_unit == "batch":
                    self._ema_step()
        if self.ema is not None and self.st.ema_unit == "epoch":
            self._ema_step()
        total = float(gshare.sum()) or 1.0
        scalars = {
            "loss": _mean(losses),
            # |rho - 1| > xi, two-sided: the references' `clipfrac`
            "clipfrac": float(out_n.sum() / cnt.sum().clamp_min(1)),
            # the objective's gradient is zero (clip or hinge flat): the paper's clip fraction
            "clipfrac_inactive": float(clip_n.sum() / cnt.sum().clamp_min(1)),
            "approx_kl": _mean(akls), "kl": _mean(kls) if kls else 0.0, "grad_norm": _mean(gnorms),
            "logratio_first_max": first_max, "optimizer_steps": opt_steps, "lr": self.opt.param_groups[0]["lr"],
        }
        if mism is not None:
            first_abs, first_max_t, first_n = mism
        n = first_n.clamp_min(1)
        # the rollout's own disagreement with the training forward, measured before any update (with
        # recompute: over every trained (sample, step); without: over the first accumulation window)
        scalars["rollout_mismatch_mean"] = float(first_abs.sum() / n.sum()) if first_n.sum() else 0.0
        scalars["rollout_mismatch_max"] = float(first_max_t.max())
        scalars["time_recompute"] = t_re if self.recompute else 0.0
        return {
            "scalars": scalars,
            "clip_by_step": (out_n / cnt.clamp_min(1)).tolist(),
            "inactive_by_step": (clip_n / cnt.clamp_min(1)).tolist(),
            "mismatch_mean_by_step": (first_abs / n).tolist(),
            "mismatch_max_by_step": first_max_t.tolist(),
            "grad_share": (gshare / total).tolist(),
            "count_by_step": cnt.tolist(),
        }


class _EmptyFp32Filter(logging.Filter):
    """diffusers warns that the modules to keep in float32 are ``[]`` (none) on every ``.to``: noise
    in front of the one line a failing command prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("There are modules in") and "kept in float32: []" in msg)


@contextlib.contextmanager
def _quiet_empty_fp32_warning():
    lg = logging.getLogger("diffusers.models.modeling_utils")
    f = _EmptyFp32Filter()
    lg.addFilter(f)
    try:
        yield
    finally:
        lg.removeFilter(f)


def _mean(xs) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


__all__ = ["Trainer", "TrainingError", "resolve_framework", "RunSettings"]
