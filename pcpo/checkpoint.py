"""Checkpoints: written atomically as directories, found again after a crash,
and loadable as a policy for sampling.

Layout of ``<run>/checkpoints/epoch_000004/``:

* ``checkpoint.json``  -- algorithm, model, LoRA settings, epoch, seed
* ``trainable.safetensors`` -- the trained weights (LoRA layers, or the whole denoiser)
* ``ema.safetensors``  -- EMA of the trained weights (when enabled)
* ``state.pt``         -- optimizer, RNG states, advantage tracker (for resuming)

``<run>/checkpoints/latest`` names the newest complete one; a directory is
renamed into place only once every file in it is written.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pcpo.utils import atomic_write_text


def checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / "checkpoints" / "latest"
    if not p.is_file():
        return None
    d = p.parent / p.read_text().strip()
    return d if (d / "checkpoint.json").is_file() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    return sorted(d for d in root.glob("epoch_*") if (d / "checkpoint.json").is_file())


def write_checkpoint(run_dir: Path, epoch: int, meta: dict, trainable: dict, state: dict, ema: dict | None = None) -> Path:
    final = checkpoint_dir(run_dir, epoch)
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(final.parent / "latest", final.name + "\n")
    return final


def read_meta(ckpt: Path) -> dict:
    f = Path(ckpt) / "checkpoint.json"
    if not f.is_file():
        from pcpo.config import ConfigError

        raise ConfigError(f"--checkpoint: {ckpt} is not a checkpoint folder (no checkpoint.json); name a folder "
                          "runs/.../checkpoints/epoch_NNNNNN written by `pcpo train`")
    return json.loads(f.read_text())


def load_trainable(ckpt: Path, ema: bool = False) -> dict:
    f = Path(ckpt) / ("ema.safetensors" if ema else "trainable.safetensors")
    if ema and not f.is_file():
        f = Path(ckpt) / "trainable.safetensors"
    return load_file(str(f))


def add_lora(denoiser: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> None:
    from peft import LoraConfig

    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))


def trainable_state(denoiser: torch.nn.Module, lora: bool) -> dict:
    if lora:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(denoiser)
    return {k: v for k, v in denoiser.state_dict().items()}


def apply_trainable(denoiser: torch.nn.Module, weights: dict, lora: bool) -> None:
    if lora:
        from peft.utils import set_peft_model_state_dict

        res = set_peft_model_state_dict(denoiser, weights)
        unexpected = getattr(res, "unexpected_keys", None) or []
        if unexpected:
            raise RuntimeError(f"checkpoint has LoRA weights the model does not: {unexpected[:5]}")
    else:
        denoiser.load_state_dict(weights)


def load_policy(ckpt: str | Path, device: str | torch.device = "cpu", use_ema: bool = False, model_path: str | None = None):
    """The model adapter of a checkpoint: base model + trained weights, ready to sample."""
    from pcpo.models import load_model

    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    m = meta["model"]
    adapter = load_model(m["kind"], model_path or m["path"], **m.get("options", {}))
    lora = meta["lora"]["enabled"]
    if lora:
        add_lora(adapter.denoiser, meta["lora"]["rank"], meta["lora"]["alpha"], adapter.lora_target_modules)
    apply_trainable(adapter.denoiser, load_trainable(ckpt, ema=use_ema), lora)
    adapter.denoiser.eval()
    adapter.to(device)
    return adapter
