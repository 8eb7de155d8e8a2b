"""Checkpoints: written atomically as directories, found again after a crash,
and loadable as a policy for sampling.

Layout of ``<run>/checkpoints/epoch_000004/``:

* ``checkpoint.json``  -- algorithm, model, LoRA settings, epoch, seed
* ``trainable.safetensors`` -- the trained weights (LoRA layers, or the whole denoiser)
* ``ema.safetensors``  -- EMA of the trained weights (when enabled)
* ``state.pt``         -- optimizer, RNG states, advantage tracker (for resuming)

``<run>/checkpoints/latest`` names the newest complete one; a directory is
renamed into place only once every file in it is written and fsynced (it is built in
``.epoch_N.tmp-PID-XXXXXXXX``, unique to its writer).  A resume tries the checkpoints
newest first and uses the first that passes :func:`verify_checkpoint`; ``latest`` is
a hint, not the only way to find one.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pcpo.utils import atomic_write_text, disk_full, fsync_path, inject_disk_full, torch_save


CHECKPOINT_RE = re.compile(r"^epoch_(\d{6})$")
#: names of the files a checkpoint folder must hold (``ema.safetensors`` too when its meta says so)
REQUIRED = ("checkpoint.json", "trainable.safetensors", "state.pt")

log = logging.getLogger("pcpo.checkpoint")


class CheckpointInvalid(Exception):
    """A checkpoint folder that cannot be used: the message says which file and why."""


class DiskFullError(OSError):
    """The disk (or quota) filled while writing ``path``; what was half-written is gone."""

    user_facing = True

    def __init__(self, path, resume_from=None):
        self.path, self.resume_from = str(path), resume_from
        super().__init__(errno.ENOSPC, f"No space left on device while writing {path}; free space and rerun "
                         f"(the run resumes from {resume_from or 'the start: no checkpoint was written yet'})")

    def __str__(self) -> str:
        return self.strerror


def checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``checkpoints/latest`` names, if it has its checkpoint.json (not verified)."""
    p = Path(run_dir) / "checkpoints" / "latest"
    if not p.is_file():
        return None
    try:
        d = p.parent / p.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return d if CHECKPOINT_RE.match(d.name) and (d / "checkpoint.json").is_file() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Every ``epoch_NNNNNN`` folder with a checkpoint.json, oldest first (not verified)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if CHECKPOINT_RE.match(d.name) and (d / "checkpoint.json").is_file())


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints to try, newest first: the one ``latest`` names, then every other
    ``epoch_*`` folder by epoch (``latest`` is only a hint; a missing one is no reason to
    start over)."""
    out = []
    last = latest_checkpoint(run_dir)
    if last is not None:
        out.append(last)
    out += [d for d in reversed(list_checkpoints(run_dir)) if d != last]
    return out


def _temp_dirs(root: Path) -> list[Path]:
    return [d for d in root.glob(".epoch_*.tmp*") if d.is_dir()] if root.is_dir() else []


def clean_stale_temp(run_dir: Path) -> list[Path]:
    """Remove half-written checkpoint folders (``.epoch_N.tmp-PID-XXXX``) of earlier writers.
    Call only while holding the run folder's lock: then no other writer is alive."""
    removed = []
    for d in _temp_dirs(Path(run_dir) / "checkpoints"):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _save_safetensors(tensors: dict, path: Path) -> None:
    inject_disk_full(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    fsync_path(path)


def write_checkpoint(run_dir: Path, epoch: int, meta: dict, trainable: dict, state: dict, ema: dict | None = None) -> Path:
    """Write the checkpoint of ``epoch`` into a temporary folder unique to this writer, fsync
    every file and the folder, rename it into place and point ``latest`` at it.

    A folder already there for this epoch was skipped by the resume as unreadable: it is kept,
    renamed ``epoch_N.untrusted-...`` (never deleted).  A full disk raises
    :class:`DiskFullError` naming the file, with the temporary folder removed."""
    final = checkpoint_dir(run_dir, epoch)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    current = tmp
    try:
        tmp.mkdir()
        current = tmp / "trainable.safetensors"
        _save_safetensors(trainable, current)
        if ema is not None:
            current = tmp / "ema.safetensors"
            _save_safetensors(ema, current)
        current = tmp / "state.pt"
        torch_save(state, current)
        current = tmp / "checkpoint.json"
        inject_disk_full(current)
        with open(current, "w") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        current = tmp
        fsync_path(tmp)
        if final.exists():
            kept = final.parent / f"{final.name}.untrusted-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            os.replace(final, kept)
            log.warning("kept the earlier, unreadable %s as %s (not used again; delete it when looked at)",
                        final, kept.name)
        os.replace(tmp, final)
        fsync_path(final.parent)
        current = final.parent / "latest"
        atomic_write_text(current, final.name + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            good = latest_checkpoint(run_dir)
            # name the file as it would have been called (the temporary folder is gone)
            raise DiskFullError(final / current.name if current.parent == tmp else current, good) from None
        raise
    return final


def verify_checkpoint(ckpt: Path, trainable_shapes: dict | None = None) -> tuple[dict, dict, dict, dict | None]:
    """Load and check one checkpoint folder: every file present and readable, the epoch of
    ``state.pt`` the one of ``checkpoint.json``, the trained weights the names (and shapes) of
    ``trainable_shapes`` when given.  Returns (meta, state, trainable, ema) or raises
    :class:`CheckpointInvalid` naming the file and the reason."""
    ckpt = Path(ckpt)
    meta_f = ckpt / "checkpoint.json"
    try:
        meta = json.loads(meta_f.read_text())
    except FileNotFoundError:
        raise CheckpointInvalid(f"{meta_f}: missing") from None
    except (OSError, ValueError) as e:
        raise CheckpointInvalid(f"{meta_f}: unreadable ({_short(e)})") from None
    if not isinstance(meta, dict) or not {"algorithm", "seed", "epoch"} <= set(meta):
        raise CheckpointInvalid(f"{meta_f}: lacks algorithm, seed or epoch")
    names = list(REQUIRED[1:]) + (["ema.safetensors"] if meta.get("ema") else [])
    for n in names:
        if not (ckpt / n).is_file():
            raise CheckpointInvalid(f"{ckpt / n}: missing")
    tensors = {}
    for n in names[:1] + names[2:]:
        try:
            tensors[n] = load_file(str(ckpt / n))
        except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
            raise CheckpointInvalid(f"{ckpt / n}: unreadable ({_short(e)})") from None
    try:
        state = torch.load(ckpt / "state.pt", weights_only=False)
    except Exception as e:  # truncated zip, unpickling error ...
        raise CheckpointInvalid(f"{ckpt / 'state.pt'}: unreadable ({_short(e)})") from None
    if not isinstance(state, dict) or state.get("epoch") != meta["epoch"]:
        raise CheckpointInvalid(f"{ckpt / 'state.pt'}: epoch {state.get('epoch') if isinstance(state, dict) else '?'} "
                                f"does not match checkpoint.json's {meta['epoch']}")
    if trainable_shapes is not None:
        for n, t in tensors.items():
            got = {k: tuple(v.shape) for k, v in t.items()}
            if got != trainable_shapes:
                missing = sorted(set(trainable_shapes) - set(got))
                extra = sorted(set(got) - set(trainable_shapes))
                what = (f"lacks {missing[0]}" if missing else f"has {extra[0]} the model does not" if extra else
                        "has weights of other shapes than the model's")
                raise CheckpointInvalid(f"{ckpt / n}: {what}")
    return meta, state, tensors["trainable.safetensors"], tensors.get("ema.safetensors")


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


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


def weights_fault(path: str | os.PathLike) -> str | None:
    """The first weights file under a local model folder that is truncated or garbled, with the
    reason (``unet/diffusion_pytorch_model.safetensors: 100000 bytes, its header promises 275948``),
    or None.  A safetensors file is checked against its own header (cheap, no tensor read); a
    pickled ``.bin``/``.pt`` by loading it."""
    root = Path(path)
    if not root.is_dir():
        return None
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(root)
        if f.suffix == ".safetensors":
            why = _safetensors_fault(f)
        elif f.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            try:
                torch.load(f, map_location="cpu", weights_only=True, mmap=False)
                why = None
            except Exception as e:
                why = f"unreadable ({_short(e)})"
        else:
            continue
        if why:
            return f"{f} ({rel}) {why}"
    return None


def _safetensors_fault(f: Path) -> str | None:
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"is {size} bytes, too short for a safetensors header"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return f"is {size} bytes, shorter than its {n}-byte header"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        return f"has an unreadable header ({_short(e)})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"is {size} bytes, its header promises {8 + n + end}: truncated or corrupt"
    return None


def load_base_model(kind: str, path: str, field: str = "model.path", **options):
    """:func:`pcpo.models.load_model`, with a truncated or corrupt weights file reported in one
    line naming the file and the fix instead of the loader's traceback."""
    from pcpo.models import load_model

    try:
        return load_model(kind, path, **options)
    except (KeyError, FileNotFoundError):
        raise
    except Exception as e:
        if type(e).__name__ in ("ConfigError", "ModelLoadError", "UserError"):
            raise
        bad = weights_fault(path)
        if bad is None:
            raise
        from pcpo.config import ConfigError

        raise ConfigError(f"{field}: the weights file {bad}; fetch the model again (or rerun `pcpo pretrain` for "
                          "a tiny-world model)") from None


def load_policy(ckpt: str | Path, device: str | torch.device = "cpu", use_ema: bool = False, model_path: str | None = None):
    """The model adapter of a checkpoint: base model + trained weights, ready to sample."""
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    m = meta["model"]
    adapter = load_base_model(m["kind"], model_path or m["path"], "--model-path (or the checkpoint's model.path)",
                              **m.get("options", {}))
    lora = meta["lora"]["enabled"]
    if lora:
        add_lora(adapter.denoiser, meta["lora"]["rank"], meta["lora"]["alpha"], adapter.lora_target_modules)
    apply_trainable(adapter.denoiser, load_trainable(ckpt, ema=use_ema), lora)
    adapter.denoiser.eval()
    adapter.to(device)
    return adapter
