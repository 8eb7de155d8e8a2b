"""DINOv2 features for FD-DINO (Fréchet distance in DINOv2 feature space; Stein et al. 2023).

Network: ``facebook/dinov2-large`` (ViT-L/14, the official weights on the Hugging Face hub)
loaded with transformers' ``Dinov2Model``.  torch-fidelity 0.4's DINOv2 extractor loads the
model through ``torch.hub.load("facebookresearch/dinov2", ...)`` (code fetched from GitHub at
run time) and accepts no local weights file, so it cannot be pinned or fetched ahead of a
job; the hub port of the same weights can.

Preprocessing follows dgm-eval (layer6ai-labs/dgm-eval ``models/dinov2.py``, the code of
Stein et al.): the RGB image resized to 224 x 224 with PIL bicubic interpolation, scaled to
[0, 1], normalised with the ImageNet mean/std; the feature is the CLS token after the final
layer norm (the hub model's ``x_norm_clstoken`` = transformers' ``pooler_output``), 1024-d.
One known difference: the position embeddings (trained at 518 px) are interpolated to the
16 x 16 patch grid by transformers' routine, not the original repository's.

The weights are read from the local Hugging Face cache only (``pcpo data fetch dinov2-large``
puts them there); a missing model fails in one line before any metric is computed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

DEFAULT_MODEL = "facebook/dinov2-large"
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def missing_line(model: str) -> str:
    from evaluation.metrics import FETCH_DINOV2

    return (f"fd_dino: DINOv2 weights {model!r} are not on this machine (Hugging Face cache or a local folder); "
            f"run `pcpo data fetch {FETCH_DINOV2}`")


def resolve(model: Optional[str] = None) -> str:
    """Local folder holding ``config.json`` and the weights of ``model`` (a folder or a hub id), or
    :class:`evaluation.metrics.MissingNetwork`.  Never downloads."""
    from evaluation.metrics import MissingNetwork

    model = model or os.environ.get("PCPO_DINOV2") or DEFAULT_MODEL
    p = Path(model)
    if p.is_dir():
        folder = p
    else:
        try:
            from huggingface_hub import snapshot_download

            from pcpo.data import hub_revision

            # the revision the catalogue pins (what `pcpo data fetch` put in the cache), else main
            folder = Path(snapshot_download(model, revision=hub_revision(model), local_files_only=True))
        except Exception:  # not in the cache (LocalEntryNotFoundError), or not a valid id
            raise MissingNetwork(missing_line(model)) from None
    if not (folder / "config.json").is_file() or not any((folder / w).is_file() for w in _WEIGHT_FILES):
        raise MissingNetwork(missing_line(model))
    return str(folder)


class DinoV2Features:
    """uint8 RGB (B, 3, H, W) -> float32 (B, D) CLS features; ``network``/``weights``/``sha256`` name it."""

    def __init__(self, model: Optional[str] = None, device="cpu"):
        from transformers import Dinov2Model

        from evaluation.inception import file_sha256

        self.model_id = model or os.environ.get("PCPO_DINOV2") or DEFAULT_MODEL
        folder = Path(resolve(self.model_id))
        self.device = torch.device(device)
        self.model = Dinov2Model.from_pretrained(str(folder)).eval().requires_grad_(False).to(self.device)
        self.model.to(torch.float32)
        wf = next(folder / w for w in _WEIGHT_FILES if (folder / w).is_file())
        self.weights, self.sha256 = str(wf), file_sha256(wf)
        self.dim = int(self.model.config.hidden_size)
        self.network = (f"DINOv2 {self.model_id} (transformers Dinov2Model, CLS after final layer norm, "
                        f"{INPUT_SIZE}px PIL bicubic, ImageNet normalisation; dgm-eval preprocessing)")

    def fields(self) -> Dict[str, object]:
        return {"network": self.network, "weights": self.weights, "sha256": self.sha256}

    @staticmethod
    def preprocess(u8: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        x = u8.detach().cpu()
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("DINOv2 input must be uint8 (B, 3, H, W)")
        out = []
        for a in x.numpy():
            im = Image.fromarray(a.transpose(1, 2, 0)).resize((INPUT_SIZE, INPUT_SIZE), Image.BICUBIC)
            out.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        t = torch.from_numpy(np.stack(out))
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (t - mean) / std

    @torch.inference_mode()
    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        px = self.preprocess(u8).to(self.device)
        return self.model(pixel_values=px).pooler_output.detach().to("cpu", torch.float32)
