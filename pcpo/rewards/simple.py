"""Hand-written rewards that need no model: JPEG (in)compressibility, as in DDPO.

Each image is encoded with PIL as a JPEG of quality 95; the file size in
kilobytes (1 kB = 1000 bytes) is the reward of ``jpeg_incompressibility`` and
its negative that of ``jpeg_compressibility``.  A flat image compresses to
almost nothing (highest compressibility); noise is the least compressible.

Grey (C=1) images are encoded as 8-bit greyscale JPEGs, C=3 as RGB.  Values
are quantised to uint8 with rounding after clamping to [0, 1].
"""
from __future__ import annotations

import io

import numpy as np
import torch

from pcpo.rewards import register_reward

JPEG_QUALITY = 95


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) float in [0, 1] -> (B, H, W, C) uint8."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, C, H, W) with C in {{1, 3}}, got shape {tuple(images.shape)}")
    x = (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def jpeg_sizes_kb(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """JPEG file size in kB of each image, float32 (B,)."""
    from PIL import Image

    sizes = []
    for arr in _to_uint8(images):
        img = Image.fromarray(arr[..., 0], mode="L") if arr.shape[-1] == 1 else Image.fromarray(arr, mode="RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


@register_reward("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = JPEG_QUALITY):
    """Reward = JPEG size in kB (larger files are better)."""
    quality = int(quality)

    def fn(images, prompts=None, metadata=None):
        kb = jpeg_sizes_kb(images, quality)
        return kb, {"jpeg_kb": kb}

    return fn


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = JPEG_QUALITY):
    """Reward = minus the JPEG size in kB (smaller files are better)."""
    quality = int(quality)

    def fn(images, prompts=None, metadata=None):
        kb = jpeg_sizes_kb(images, quality)
        return -kb, {"jpeg_kb": kb}

    return fn
