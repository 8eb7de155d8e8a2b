"""Seconds per epoch, peak GPU memory and trainer overhead of each algorithm on the
full-scale denoisers (SD1.5 UNet, FLUX.1-dev transformer) with random weights.

    python benchmarks/fullscale_epoch.py --model sd15|flux --scale real|tiny \
        [--algorithms ddpo pcpo-ddpo ...] [--out DIR] [--time-budget SECONDS] [--json FILE]

A pipeline folder is written for the model's adapter (``pcpo.models.sd`` /
``pcpo.models.flux``), loaded through ``pcpo.trainer.Trainer`` exactly as a real
run loads one:

* the denoiser and the VAE: ``config.json`` only, plus a marker file
  (``pcpo_random_init.json``).  While this script runs, ``ComponentLoader.diffusers_model``
  is patched: a component folder with the marker is built from its config on the
  ``meta`` device, materialised with ``to_empty`` directly on the target device and
  dtype (bf16 on CUDA) and initialised with random weights (N(0, 0.02) matrices,
  zero biases, unit norm scales) -- 12B parameters in a few seconds, no disk
  round-trip.  At ``--scale real`` these are the real architectures (the configs of
  ``benchmarks/memory_estimate.py``: SD1.5 UNet 859.5M + SD VAE; FLUX.1-dev
  transformer 11.9B + FLUX VAE); at ``--scale tiny`` tiny versions of the same classes.
* text encoders and tokenizers: tiny (one layer, a few dozen tokens of vocabulary),
  written to disk, but with the widths the denoiser expects (SD1.5: CLIP 768;
  FLUX: T5 d_model 4096 for the sequence, CLIP 768 for the pooled vector).

Then each algorithm runs two epochs through the trainer (LoRA; bf16 on CUDA,
float32 on CPU; gradient checkpointing on; a mean-brightness reward); epoch 0 is
the warm-up and epoch 1 is reported: seconds/epoch, rollout and train seconds,
peak GPU memory (``torch.cuda.max_memory_allocated``, reset per algorithm), the
overhead ratio (epoch time / time of the same model calls alone: text encoding,
guided forwards, VAE decode, training forward+backward and, with a KL term, the
reference forwards -- ``benchmarks/trainer_overhead.model_only_time`` extended by
the encode/decode/reference calls a full-scale epoch makes) and the first-step
log-ratio check (``logratio_first_max``, the max over both epochs; the trainer's
own tolerance check is relaxed here (``--logratio-tolerance``) so that a
mismatch is reported next to the timings instead of aborting them; ``logratio_ok``
compares it with the trainer's default 1e-4).  ``--old-logprobs rollout recompute``
runs each algorithm once per mode of ``train.old_logprobs``: each result gives the
rollout's own mismatch with the training forward (``rollout_mismatch_max``), and a
recomputing run the pass's seconds and ``recompute_cost``, the training phase with
the pass over the phase without it.  A recomputing run keeps the trainer's own 1e-4
check (``--recompute-tolerance``): if it stops, recompute did not do its job.

Batches (per epoch): SD1.5 512px, 2 prompts x 4 images, 10 DDIM steps, micro-batch 4
(CFG doubles it in every forward), LoRA rank 4.  FLUX 512px, 1 prompt x 2 images,
6 steps, micro-batch 1, distilled guidance 3.5, T5 length 64, LoRA rank 64.  The
rollout micro-batch equals the training micro-batch, so the training forward sees
the same shapes (and kernels) as the rollout.  ``--scale tiny``: the same batches at
16px with 3 steps (a CPU test).  The trainer's checkpoints are not written (their
time is not part of an epoch; ``--save-checkpoints`` to write them).

``--meta-check`` builds the real-scale folder with the denoiser and VAE on the
``meta`` device, loads it through the adapter, runs one guided forward and one
decode on meta with the real text-encoder widths, and prints the parameter
counts (no GPU, no weights, seconds on a CPU).

One line per algorithm is printed as it finishes (``RESULT ...``); the last line
of the output is the JSON summary of all of them.  ``--time-budget`` skips an
algorithm ("skipped (budget)") when the time since the start plus the duration of
the fastest algorithm so far would exceed it.  SIGTERM (``timeout``) or Ctrl-C stops
the algorithm in progress and still prints the summary.  Exit code: 0, 1 if an
algorithm (or the meta check) failed, 130 if interrupted.
"""
from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import logging
import math
import shutil
import signal
import string
import sys
import tempfile
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MARKER = "pcpo_random_init.json"
REWARD_NAME = "bench_brightness"
GiB = 2**30

PROMPTS = [
    "a photo of a cat sitting on a red sofa",
    "an astronaut riding a horse on the moon",
    "a bowl of fresh fruit on a wooden table",
    "a lighthouse on a rocky coast at sunset",
    "a watercolor painting of a fox in the snow",
    "a city street at night in the rain",
    "a portrait of an old man with a white beard",
    "a small boat on a calm lake in the morning",
]

DEFAULT_ALGORITHMS = {
    "sd15": ["ddpo", "pcpo-ddpo", "dancegrpo", "pcpo-dancegrpo"],
    "flux": ["dancegrpo", "pcpo-dancegrpo", "flow_grpo", "pcpo-flow_grpo"],
}

#: parameter counts of the real denoisers (diffusers' classes with the model cards' configs)
REAL_DENOISER_PARAMS = {"sd15": 859_520_964, "flux": 11_901_408_320}


# ---------------------------------------------------------------------------
# what is built
# ---------------------------------------------------------------------------

def _memory_estimate():
    """benchmarks/memory_estimate.py (the real architecture configs), loaded by path."""
    name = "pcpo_bench_memory_estimate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "memory_estimate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Spec:
    kind: str  # adapter: sd1 | flux
    denoiser: tuple[str, str, dict]  # (subfolder, diffusers class, config)
    vae: dict
    clip: dict  # hidden, heads, inter, max_len
    t5: dict | None  # d_model, d_ff, heads, d_kv (FLUX only)
    resolution: int
    options: dict  # model.options
    steps: int
    prompts_per_epoch: int
    group_size: int
    train_batch_size: int
    lora_rank: int
    scheduler: dict = field(default_factory=dict)


SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                    set_alpha_to_one=False, clip_sample=False, num_train_timesteps=1000)
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096, num_train_timesteps=1000)

TINY_SD_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                    cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True,
                 axes_dims_rope=(2, 2, 4))


def _tiny_vae(latent_channels, scaling, shift, quant):
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), layers_per_block=1,
                latent_channels=latent_channels, norm_num_groups=4, sample_size=16, scaling_factor=scaling,
                shift_factor=shift, use_quant_conv=quant, use_post_quant_conv=quant)


def make_spec(model: str, scale: str) -> Spec:
    if model not in ("sd15", "flux") or scale not in ("real", "tiny"):
        raise ValueError(f"unknown model/scale {model!r}/{scale!r}")
    if model == "sd15":
        common = dict(kind="sd1", steps=10, prompts_per_epoch=2, group_size=4, train_batch_size=4, lora_rank=4,
                      scheduler=SD_SCHEDULER, t5=None)
        if scale == "real":
            me = _memory_estimate()
            return Spec(denoiser=("unet", "UNet2DConditionModel", dict(me.SD15_UNET)), vae=dict(me.SD15_VAE),
                        clip=dict(hidden=768, heads=12, inter=1024, max_len=77), resolution=512,
                        options={"resolution": 512}, **common)
        common["steps"] = 3  # tiny: the same batches, fewer steps (a fast CPU test)
        return Spec(denoiser=("unet", "UNet2DConditionModel", dict(TINY_SD_UNET)),
                    vae=_tiny_vae(4, 0.18215, None, True), clip=dict(hidden=8, heads=2, inter=16, max_len=16),
                    resolution=16, options={"resolution": 16}, **common)
    common = dict(kind="flux", steps=6, prompts_per_epoch=1, group_size=2, train_batch_size=1,
                  scheduler=FLUX_SCHEDULER)
    if scale == "real":
        me = _memory_estimate()
        cfg = dict(me.FLUX_DEV)
        return Spec(denoiser=("transformer", "FluxTransformer2DModel", cfg), vae=dict(me.FLUX_VAE),
                    clip=dict(hidden=cfg["pooled_projection_dim"], heads=12, inter=1024, max_len=77),
                    t5=dict(d_model=cfg["joint_attention_dim"], d_ff=256, heads=2, d_kv=64), resolution=512,
                    options={"resolution": 512, "max_sequence_length": 64}, lora_rank=64, **common)
    common["steps"] = 3
    return Spec(denoiser=("transformer", "FluxTransformer2DModel", dict(TINY_FLUX)),
                vae=_tiny_vae(4, 0.3611, 0.1159, False), clip=dict(hidden=8, heads=2, inter=16, max_len=16),
                t5=dict(d_model=16, d_ff=32, heads=2, d_kv=8), resolution=16,
                options={"resolution": 16, "max_sequence_length": 16}, lora_rank=4, **common)


# ---------------------------------------------------------------------------
# random-init components (built on the target device, never saved)
# ---------------------------------------------------------------------------

def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def write_random_component(folder: Path, cls_name: str, config: dict, device: str, dtype: str,
                           std: float = 0.02, seed: int = 0) -> None:
    """``config.json`` of the component plus the marker the patched loader builds it from."""
    cls = _diffusers_class(cls_name)
    with torch.device("meta"):
        m = cls.from_config(dict(config))
    folder.mkdir(parents=True, exist_ok=True)
    m.save_config(folder)
    (folder / MARKER).write_text(json.dumps({"class": cls_name, "device": str(device), "dtype": dtype,
                                             "std": std, "seed": seed}) + "\n")


@torch.no_grad()
def init_random_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Matrices and kernels ~ N(0, std), norm scales 1, biases (and other vectors) 0."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, std, generator=gen)
        elif name.rsplit(".", 1)[-1] == "weight":
            p.fill_(1.0)
        else:
            p.zero_()


def build_random_component(cls, folder: Path, spec: dict) -> torch.nn.Module:
    """The component of ``folder``'s config: on meta, then materialised on spec['device'] and initialised."""
    config = cls.load_config(str(folder))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    device = torch.device(spec.get("device", "cpu"))
    with torch.device("meta"):
        model = cls.from_config(config)
    model = torch.nn.Module.to(model, dtype=dtype)  # (diffusers' own .to warns about fp32 modules; none here)
    if device.type != "meta":
        model = model.to_empty(device=device)
        init_random_(model, float(spec.get("std", 0.02)), int(spec.get("seed", 0)))
        for mod in model.modules():  # a plain tensor attribute made at init would still be on meta
            for k, v in vars(mod).items():
                if isinstance(v, torch.Tensor) and v.is_meta:
                    raise RuntimeError(f"{cls.__name__}: attribute {k!r} of {type(mod).__name__} is still on the "
                                       "meta device after to_empty; this class cannot be built this way")
    return model.eval()


def install_random_init_loader() -> None:
    """Patch ``ComponentLoader.diffusers_model``: a folder with the marker is built, not loaded."""
    from pcpo.models.sd import ComponentLoader

    if getattr(ComponentLoader.diffusers_model, "_pcpo_random_init", False):
        return
    original = ComponentLoader.diffusers_model

    def diffusers_model(self, cls, subfolder: str, dtype=None):
        folder = Path(self.path) / subfolder
        marker = folder / MARKER
        if marker.is_file():
            return build_random_component(cls, folder, json.loads(marker.read_text()))
        return original(self, cls, subfolder, dtype)

    diffusers_model._pcpo_random_init = True
    ComponentLoader.diffusers_model = diffusers_model


# ---------------------------------------------------------------------------
# tiny text encoders and tokenizers (on disk)
# ---------------------------------------------------------------------------

def write_clip_tokenizer(folder: Path, max_length: int) -> int:
    """A byte-level BPE vocabulary in CLIP's file format; returns the vocabulary size."""
    from pcpo.models.tiny import write_tiny_clip_tokenizer

    return write_tiny_clip_tokenizer(folder, max_length, [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>"),
                                                          ("i", "n"), ("e", "r")])


def write_t5_tokenizer(folder: Path, max_length: int) -> int:
    """A unigram vocabulary of letters and digits written as ``tokenizer.json`` (any transformers version)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": max_length, "extra_ids": 0, **special}))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return len(pieces)


def write_text_encoders(spec: Spec, root: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    c = spec.clip
    vocab = write_clip_tokenizer(root / "tokenizer", c["max_len"])
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=c["hidden"], intermediate_size=c["inter"], num_hidden_layers=1,
        num_attention_heads=c["heads"], max_position_embeddings=c["max_len"], projection_dim=c["hidden"],
        bos_token_id=0, eos_token_id=1, pad_token_id=1)).save_pretrained(root / "text_encoder")
    if spec.t5 is not None:
        t = spec.t5
        vocab2 = write_t5_tokenizer(root / "tokenizer_2", int(spec.options["max_sequence_length"]))
        T5EncoderModel(T5Config(
            vocab_size=vocab2, d_model=t["d_model"], d_ff=t["d_ff"], d_kv=t["d_kv"], num_heads=t["heads"],
            num_layers=1, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0, dropout_rate=0.0)).save_pretrained(root / "text_encoder_2")


def build_pipeline(model: str, scale: str, root: Path, device: str, dtype: str) -> Path:
    """The pipeline folder: text encoders/tokenizers/scheduler on disk, denoiser and VAE as markers."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from pcpo.models.tiny import quiet_hf

    spec = make_spec(model, scale)
    root.mkdir(parents=True, exist_ok=True)
    sub, cls_name, cfg = spec.denoiser
    with quiet_hf():
        write_random_component(root / sub, cls_name, cfg, device, dtype, seed=0)
        write_random_component(root / "vae", "AutoencoderKL", spec.vae, device, dtype, seed=1)
        write_text_encoders(spec, root)
        sched = DDIMScheduler(**spec.scheduler) if spec.kind == "sd1" else FlowMatchEulerDiscreteScheduler(
            **spec.scheduler)
        sched.save_pretrained(root / "scheduler")
    return root


# ---------------------------------------------------------------------------
# the reward, the config, the model-only time
# ---------------------------------------------------------------------------

def register_brightness_reward() -> str:
    from pcpo.rewards import REWARDS

    def factory(**_):
        def fn(images, prompts, metadata):
            r = images.float().mean(dim=(1, 2, 3)).cpu()
            return r, {"brightness": r}
        return fn

    REWARDS.register(REWARD_NAME, factory, overwrite=True)
    return REWARD_NAME


def make_config(spec: Spec, folder: Path, device: str, dtype: str, logratio_tolerance: float, epochs: int = 2,
                old_logprobs: str = "auto"):
    from pcpo.config import load_config

    return load_config(None, {
        "experiment": f"fullscale-{spec.kind}",
        "model": {"kind": spec.kind, "path": str(folder), "dtype": dtype, "gradient_checkpointing": True,
                  "options": dict(spec.options)},
        "reward": {"name": REWARD_NAME},
        "prompts": {"source": "list", "options": {"prompts": list(PROMPTS)}},
        "sampling": {"steps": spec.steps, "batch_size": spec.train_batch_size},
        "train": {"epochs": epochs, "prompts_per_epoch": spec.prompts_per_epoch, "group_size": spec.group_size,
                  "train_batch_size": spec.train_batch_size, "checkpoint_every": 1_000_000, "lr": 1e-4,
                  "device": device, "logratio_tolerance": float(logratio_tolerance), "old_logprobs": old_logprobs},
        "lora": {"enabled": True, "rank": spec.lora_rank, "alpha": float(spec.lora_rank)},
    })


def model_only_time(trainer, prompts: list[str] = PROMPTS) -> float:
    """Seconds of the model calls one epoch of ``trainer`` makes, done alone: guided forwards,
    training forward+backward, KL reference forwards, prompt encoding and VAE decode
    (``benchmarks/trainer_overhead.model_only_time`` with ``full_scale``)."""
    from benchmarks.trainer_overhead import model_only_time as timed

    return timed(trainer, 1, prompts=prompts, full_scale=True)


# ---------------------------------------------------------------------------
# one algorithm
# ---------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _f(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def bench_algorithm(alg: str, cfg, run_dir: Path, dev: torch.device, save_checkpoints: bool, holder: dict) -> dict:
    from pcpo.trainer import Trainer

    class BenchTrainer(Trainer):
        def save(self, epoch, rank_rng=None, gathered=None):  # 12B FLUX's LoRA + optimizer state: GBs, not an epoch's time
            return super().save(epoch, rank_rng, gathered) if save_checkpoints else self.out

    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resume of an earlier invocation's
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    tr = BenchTrainer(cfg, alg, 0, run_dir, progress=False)
    holder["denoiser"] = weakref.ref(tr.acc.unwrap_model(tr.model.denoiser))
    holder["accelerator"] = tr.acc
    setup_s = time.perf_counter() - t0
    n_lora = sum(p.numel() for p in tr.params)
    tr.run()
    peak = torch.cuda.max_memory_allocated(dev) / GiB if cuda else None
    rows = _read_rows(run_dir / "metrics.csv")
    last = rows[-1]
    model_s = model_only_time(tr)
    epoch_s = float(last["time_epoch"])
    lr_max = max(float(r["logratio_first_max"]) for r in rows)
    recompute_s = _f(last.get("time_recompute")) or 0.0
    train_only = float(last["time_train"]) - recompute_s
    res = {
        "old_logprobs": cfg.train.old_logprobs, "recomputed": tr.recompute, "recompute_s": recompute_s,
        # the training phase with the recompute pass over the phase without it (issue target: <= 1.35)
        "recompute_cost": float(last["time_train"]) / train_only if tr.recompute and train_only > 0 else None,
        # the rollout's own |log rho| against the training forward, max over both epochs
        "rollout_mismatch_max": max(_f(r.get("rollout_mismatch_max")) or 0.0 for r in rows),
        "seconds_per_epoch": epoch_s, "rollout_s": float(last["time_rollout"]), "train_s": float(last["time_train"]),
        "reward_s": float(last["time_reward"]), "warmup_epoch_s": float(rows[0]["time_epoch"]),
        "setup_s": setup_s, "model_only_s": model_s, "overhead": epoch_s / model_s if model_s > 0 else None,
        "peak_gpu_gib": peak, "logratio_first_max": lr_max,
        "logratio_first_max_by_epoch": [float(r["logratio_first_max"]) for r in rows],
        "logratio_ok": lr_max < 1e-4,
        "loss": _f(last["loss"]), "grad_norm": _f(last["grad_norm"]), "reward_mean": _f(last["reward_mean"]),
        "approx_kl": _f(last["approx_kl"]), "kl": _f(last.get("kl")), "clipfrac": _f(last["clipfrac"]),
        "lora_params": n_lora, "trained_steps": tr.trained_steps(), "sampler_steps": tr.grid.num_steps,
        "sampler": tr.st.sampler, "samples_per_epoch": int(last["samples"]),
    }
    res["finite"] = all(res[k] is not None for k in ("loss", "grad_norm", "reward_mean"))
    return res


def _free(dev: torch.device, holder: dict) -> dict:
    acc = holder.pop("accelerator", None)
    if acc is not None:
        try:
            acc.free_memory()
        except Exception:  # noqa: BLE001 - best effort
            pass
        del acc
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    ref = holder.pop("denoiser", None)
    out = {"freed": ref is None or ref() is None}
    if dev.type == "cuda":
        out["gpu_allocated_after_gib"] = torch.cuda.memory_allocated(dev) / GiB
    return out


def format_line(model: str, r: dict) -> str:
    mode = f" [{r['old_logprobs']}]" if r.get("old_logprobs") else ""
    head = f"RESULT {model} {r['algorithm']}{mode}:"
    if r["status"] != "ok":
        return f"{head} {r['status']}" + (f" -- {r['error']}" if r.get("error") else "")

    def fmt(v, f):
        return "n/a" if v is None else format(v, f)

    return (f"{head} {r['seconds_per_epoch']:.2f} s/epoch (rollout {r['rollout_s']:.2f} s, train "
            f"{r['train_s']:.2f} s, reward {r['reward_s']:.2f} s), peak GPU {fmt(r['peak_gpu_gib'], '.2f')} GiB, "
            f"overhead {fmt(r['overhead'], '.3f')} (model-only {r['model_only_s']:.2f} s), "
            f"logratio {r['logratio_first_max']:.3e} {'ok' if r['logratio_ok'] else 'MISMATCH(>1e-4)'}, "
            f"rollout mismatch {r['rollout_mismatch_max']:.3e}"
            f"{', recompute ' + format(r['recompute_s'], '.2f') + ' s = ' + fmt(r['recompute_cost'], '.3f') + 'x the training phase' if r['recomputed'] else ''}, "
            f"setup {r['setup_s']:.1f} s, loss {fmt(r['loss'], '.4g')}, grad_norm {fmt(r['grad_norm'], '.4g')}"
            f"{'' if r.get('freed', True) else ', NOT FREED'}")


# ---------------------------------------------------------------------------
# meta check of the real configurations
# ---------------------------------------------------------------------------

def meta_check(model: str, root: Path) -> dict:
    """Real-scale folder with denoiser + VAE on meta: load through the adapter, one guided forward, one decode."""
    from pcpo.checkpoint import add_lora
    from pcpo.models import load_model
    from pcpo.models.tiny import quiet_hf
    from pcpo.rollout import make_grid

    install_random_init_loader()
    spec = make_spec(model, "real")
    folder = build_pipeline(model, "real", Path(root) / f"{model}_real_meta", "meta", "bfloat16")
    with quiet_hf():
        m = load_model(spec.kind, str(folder), **spec.options)
    den = m.denoiser
    n_den = sum(p.numel() for p in den.parameters())
    n_vae = sum(p.numel() for p in m.vae.parameters())
    cond = m.encode_prompts(PROMPTS[:2])
    unc = m.null_cond(2)
    x = torch.empty((2, *m.latent_shape()), device="meta", dtype=torch.bfloat16)
    grid = make_grid(m.schedule(), "ddim" if spec.kind == "sd1" else "flow-dance", steps=spec.steps)
    tt = grid.model_time(torch.full((2,), 0)).to("meta")
    out = m.predict_guided(x, tt, cond, unc or None, m.default_guidance_scale)
    img = m.decode(x)
    add_lora(den, spec.lora_rank, float(spec.lora_rank), m.lora_target_modules)
    n_lora = sum(p.numel() for p in den.parameters() if p.requires_grad)
    res = {
        "model": model, "denoiser_class": type(den).__name__, "denoiser_params": n_den,
        "expected_params": REAL_DENOISER_PARAMS[model], "vae_params": n_vae, "lora_rank": spec.lora_rank,
        "lora_params": n_lora, "latent_shape": list(m.latent_shape()),
        "cond_shapes": {k: list(v.shape) for k, v in cond.items()},
        "forward_shape": list(out.shape), "image_shape": list(img.shape),
        "resolution": m.resolution,
    }
    res["ok"] = (n_den == REAL_DENOISER_PARAMS[model] and tuple(out.shape) == tuple(x.shape)
                 and tuple(img.shape) == (2, 3, spec.resolution, spec.resolution))
    return res


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    pass


def _on_term(signum, frame):  # timeout(1) sends SIGTERM: stop, but still print the summary
    raise Interrupted(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["sd15", "flux"], default="sd15")
    ap.add_argument("--scale", choices=["real", "tiny"], default="real")
    ap.add_argument("--algorithms", nargs="*", help="default: " + "; ".join(
        f"{k}: {' '.join(v)}" for k, v in DEFAULT_ALGORITHMS.items()))
    ap.add_argument("--out", help="work folder (pipeline + runs); default: a new temporary folder")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds since start after which the remaining algorithms are skipped")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32", "float16"], default="auto",
                    help="model dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--logratio-tolerance", type=float, default=1e30,
                    help="the trainer's first-step check (default: never aborts; the value is reported)")
    ap.add_argument("--old-logprobs", nargs="+", choices=["auto", "rollout", "recompute"], default=["auto"],
                    help="train.old_logprobs: each algorithm runs once per value given (e.g. rollout recompute)")
    ap.add_argument("--recompute-tolerance", type=float, default=1e-4,
                    help="the first-step check of the runs that recompute (default: the trainer's own 1e-4, so a "
                         "recomputed run that disagrees with its training forward stops, as it would for real)")
    ap.add_argument("--save-checkpoints", action="store_true", help="let the trainer write its checkpoints")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 for CPU runs)")
    ap.add_argument("--meta-check", action="store_true",
                    help="first build the REAL-scale model of --model on the meta device and check it "
                         "(parameter counts, one forward and decode on meta); recorded as meta_check")
    ap.add_argument("--no-train", action="store_true", help="run no algorithm (with --meta-check: only that)")
    args = ap.parse_args(argv)

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from diffusers.utils import logging as dlog

    dlog.get_logger("diffusers")  # sets up diffusers' handler, which the filter goes on
    for h in logging.getLogger("diffusers").handlers:
        if not any(isinstance(f, _QuietCastWarning) for f in h.filters):
            h.addFilter(_QuietCastWarning())
    try:
        return _main(ap, args)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])


class _QuietCastWarning(logging.Filter):
    """Drops diffusers' 'modules that should be kept in float32: []' notice of every .to(dtype)."""

    def filter(self, record):
        return "should be kept in float32: []" not in record.getMessage()


def _main(ap, args) -> int:
    start = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pcpo-fullscale-"))
    out.mkdir(parents=True, exist_ok=True)

    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    if args.scale == "real" and device != "cuda" and not args.no_train:
        ap.error("--scale real needs a CUDA device (use --scale tiny on a CPU, or --meta-check)")
    dev = torch.device(device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if device == "cpu":
        torch.set_num_threads(args.threads or 1)
    elif args.threads:
        torch.set_num_threads(args.threads)
    algorithms = [] if args.no_train else (args.algorithms or DEFAULT_ALGORITHMS[args.model])

    import diffusers
    import transformers

    gpu = torch.cuda.get_device_name(dev) if device == "cuda" else "cpu"
    print(f"fullscale_epoch: model {args.model}, scale {args.scale}, device {gpu}, dtype {dtype}, torch "
          f"{torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}; "
          f"algorithms {' '.join(algorithms)}; work folder {out}", flush=True)
    summary = {"model": args.model, "scale": args.scale, "device": gpu, "dtype": dtype,
               "torch": torch.__version__, "diffusers": diffusers.__version__,
               "transformers": transformers.__version__, "results": []}

    if args.meta_check:
        try:
            summary["meta_check"] = meta_check(args.model, out / "meta")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            summary["meta_check"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
        mc = summary["meta_check"]
        print(f"META {args.model}: " + ("ok" if mc["ok"] else "FAILED") + " " + json.dumps(mc), flush=True)

    def finish(code: int) -> int:
        summary["total_s"] = time.perf_counter() - start
        line = json.dumps(summary, default=str)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(line + "\n")
        print(line, flush=True)
        return code

    if not algorithms:
        return finish(0 if summary.get("meta_check", {}).get("ok", True) else 1)
    try:
        spec = make_spec(args.model, args.scale)
        install_random_init_loader()
        register_brightness_reward()
        t0 = time.perf_counter()
        folder = build_pipeline(args.model, args.scale, out / f"pipeline_{args.model}_{args.scale}", device, dtype)
        summary["pipeline_s"] = time.perf_counter() - t0
        summary["settings"] = {
            "resolution": spec.resolution, "steps": spec.steps, "prompts_per_epoch": spec.prompts_per_epoch,
            "group_size": spec.group_size, "train_batch_size": spec.train_batch_size, "lora_rank": spec.lora_rank,
            "gradient_checkpointing": True, "options": spec.options}
    except KeyboardInterrupt:
        summary["error"] = "interrupted while building the pipeline folder"
        return finish(130)
    except Exception as e:  # noqa: BLE001 - report, the summary still comes out
        traceback.print_exc()
        summary["error"] = f"building the pipeline folder failed: {type(e).__name__}: {e}"
        return finish(1)

    from pcpo.config import recomputes_old_logprobs

    durations: list[float] = []
    interrupted = False
    for alg, mode in [(a, m) for a in algorithms for m in args.old_logprobs]:
        rec = {"model": args.model, "algorithm": alg, "old_logprobs": mode}
        elapsed = time.perf_counter() - start
        est = min(durations) if durations else 0.0
        if interrupted:
            rec["status"] = "skipped (interrupted)"
        elif args.time_budget is not None and (elapsed >= args.time_budget or elapsed + est > args.time_budget):
            rec["status"] = "skipped (budget)"
            rec["elapsed_s"] = elapsed
        else:
            holder: dict = {}
            a0 = time.perf_counter()
            try:
                tol = args.recompute_tolerance if recomputes_old_logprobs(mode, dtype, dev.type) \
                    else args.logratio_tolerance
                cfg = make_config(spec, folder, device, dtype, tol, old_logprobs=mode)
                rec.update(bench_algorithm(alg, cfg, out / "runs" / f"{alg}-{mode}", dev, args.save_checkpoints,
                                           holder))
                rec["status"] = "ok"
            except KeyboardInterrupt:
                rec["status"] = "interrupted"
                interrupted = True
            except Exception as e:  # noqa: BLE001 - one failure must not stop the others
                traceback.print_exc()
                sys.stderr.flush()
                msg = str(e).strip().splitlines()
                rec["status"] = "error"
                rec["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]
            rec["wall_s"] = time.perf_counter() - a0
            try:
                rec.update(_free(dev, holder))
            except KeyboardInterrupt:
                interrupted = True
            if rec["status"] == "ok":
                durations.append(rec["wall_s"])
        summary["results"].append(rec)
        print(format_line(args.model, rec), flush=True)
        if args.json:  # partial results survive a hard kill
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(summary, default=str) + "\n")
    failed = any(r["status"] == "error" for r in summary["results"])
    failed = failed or (args.meta_check and not summary["meta_check"].get("ok"))
    return finish(130 if interrupted else (1 if failed else 0))


if __name__ == "__main__":
    raise SystemExit(main())
