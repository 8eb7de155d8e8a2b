"""Real data of the tiny world: scikit-learn's handwritten digits.

``sklearn.datasets.load_digits()`` ships 1,797 real 8x8 scans (UCI optdigits,
43 writers, intensities 0..16) inside the scikit-learn wheel, so nothing is
downloaded.  They are upsampled to 16x16 with antialiased bilinear
interpolation and split once, stratified by class, with a fixed seed.

Two per-image attributes are measured on the original 8x8 scan and bucketed
into prompt words *relative to the image's own class* (a bold "1" has less ink
than a thin "8"):

* thickness: mean ink intensity in [0, 1] -> "thin" (lowest third of its
  class in the train split), "bold" (highest third), otherwise no word;
* slant: the shear of the ink around its centroid estimated from second
  moments, ``-mu11 / mu02`` (positive: the top leans right) -> "upright"
  (lowest third of ``|slant|``), "slanted" (highest third), otherwise none.

Everything is computed in memory in well under a second and cached per
process; nothing is written to disk.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RESOLUTION = 16
NUM_CLASSES = 10
SPLIT_SEED = 0
HELDOUT_FRACTION = 0.2

THICKNESS_WORDS = ("thin", "bold")
SLANT_WORDS = ("upright", "slanted")


@dataclass(frozen=True)
class DigitsSplit:
    """One split of the digits data (tensors on the CPU).

    ``images``: float32 (N, 1, R, R) in [-1, 1] (the models' pixel space);
    ``labels``: int64 (N,); ``thickness``/``slant``: float32 (N,) measured on
    the 8x8 originals; ``thickness_word``/``slant_word``: the bucket word of
    each image or ``""`` for the middle third.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    thickness: torch.Tensor
    slant: torch.Tensor
    thickness_word: tuple[str, ...]
    slant_word: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def unit_images(self) -> torch.Tensor:
        """Images in [0, 1] (the reward functions' convention)."""
        return to_unit(self.images)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model pixel space [-1, 1] -> image space [0, 1]."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """Image space [0, 1] -> model pixel space [-1, 1]."""
    return x * 2.0 - 1.0


def resize(images01: torch.Tensor, resolution: int = RESOLUTION) -> torch.Tensor:
    """Antialiased bilinear resize of (N, C, H, W) images, clamped to [0, 1]."""
    if images01.shape[-1] == resolution and images01.shape[-2] == resolution:
        return images01
    out = F.interpolate(images01, size=(resolution, resolution), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def measure_thickness(images01: torch.Tensor) -> torch.Tensor:
    """Mean ink intensity of (N, 1, H, W) images in [0, 1] -> (N,)."""
    return images01.flatten(1).mean(1)


def measure_slant(images01: torch.Tensor) -> torch.Tensor:
    """Shear of the ink, ``-mu11 / mu02`` from central image moments -> (N,).

    Positive values mean the top of the glyph lies to the right of its bottom
    (rows grow downwards, hence the sign).
    """
    n, _, h, w = images01.shape
    m = images01.reshape(n, h, w).double()
    ys = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    mass = m.sum((1, 2)).clamp_min(1e-8)
    cy = (m * ys).sum((1, 2)) / mass
    cx = (m * xs).sum((1, 2)) / mass
    dy = ys - cy.view(n, 1, 1)
    dx = xs - cx.view(n, 1, 1)
    mu11 = (m * dx * dy).sum((1, 2)) / mass
    mu02 = (m * dy * dy).sum((1, 2)) / mass
    return (-mu11 / mu02.clamp_min(1e-8)).float()


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    return images, d.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _split_indices(seed: int, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _raw()
    idx = np.arange(labels.shape[0])
    train, held = train_test_split(idx, test_size=heldout_fraction, random_state=seed,
                                   stratify=labels, shuffle=True)
    return np.sort(train), np.sort(held)


def _bucket(values: np.ndarray, labels: np.ndarray, ref: np.ndarray, words: tuple[str, str]) -> list[str]:
    """Per-class tertile words: ``words[0]`` below the 1/3 quantile of the
    class's reference values, ``words[1]`` above the 2/3 quantile."""
    out = [""] * len(values)
    for k in range(NUM_CLASSES):
        r = values[ref][labels[ref] == k]
        lo, hi = np.quantile(r, [1.0 / 3.0, 2.0 / 3.0])
        for i in np.nonzero(labels == k)[0]:
            if values[i] < lo:
                out[i] = words[0]
            elif values[i] > hi:
                out[i] = words[1]
    return out


@functools.lru_cache(maxsize=8)
def load_split(split: str = "train", resolution: int = RESOLUTION, seed: int = SPLIT_SEED,
               heldout_fraction: float = HELDOUT_FRACTION) -> DigitsSplit:
    """The ``"train"``, ``"heldout"`` or ``"all"`` split of the digits.

    The split (stratified, ``heldout_fraction`` held out, ``seed``) and the
    attribute buckets (tertiles of the train split per class) are fixed
    functions of their arguments.  The returned tensors are shared by every
    caller of the same arguments: do not modify them in place.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split: expected 'train', 'heldout' or 'all', got {split!r}")
    raw, labels = _raw()
    train_idx, held_idx = _split_indices(seed, heldout_fraction)
    x8 = torch.from_numpy(raw)
    thickness = measure_thickness(x8).numpy()
    slant = measure_slant(x8).numpy()
    thick_words = _bucket(thickness, labels, train_idx, THICKNESS_WORDS)
    slant_words = _bucket(np.abs(slant), labels, train_idx, SLANT_WORDS)

    idx = {"train": train_idx, "heldout": held_idx, "all": np.arange(len(labels))}[split]
    images = from_unit(resize(x8[idx], resolution)).contiguous()
    return DigitsSplit(
        name=split,
        images=images,
        labels=torch.from_numpy(labels[idx]).clone(),
        thickness=torch.from_numpy(thickness[idx]).clone(),
        slant=torch.from_numpy(slant[idx]).clone(),
        thickness_word=tuple(thick_words[i] for i in idx),
        slant_word=tuple(slant_words[i] for i in idx),
    )


@functools.lru_cache(maxsize=2)
def _offgrid_projector(resolution: int) -> torch.Tensor:
    basis = resize(torch.eye(64).view(64, 1, 8, 8), resolution).view(64, -1).T.double()  # (R*R, 64)
    return (torch.eye(resolution * resolution, dtype=torch.float64) - basis @ torch.linalg.pinv(basis)).float()


def offgrid_noise(images01: torch.Tensor) -> torch.Tensor:
    """Norm (in [-1, 1] pixel units) of each image's component outside the
    64-dimensional subspace of bilinearly upsampled 8x8 images -> (N,).

    Real digits have 0 here (up to float error); it measures leftover
    sampling noise.  Above ~3 the noise is plainly visible at 16x16.
    """
    n, c, h, w = images01.shape
    x = from_unit(images01.float().mean(1)).reshape(n, h * w)
    return (x @ _offgrid_projector(h).T).norm(dim=1)


def example_image(digit: int, split: str = "heldout", index: int = 0) -> torch.Tensor:
    """The ``index``-th image of class ``digit`` in a split, (1, 1, R, R) in [0, 1]."""
    s = load_split(split)
    pos = torch.nonzero(s.labels == digit).flatten()
    return to_unit(s.images[pos[index]].unsqueeze(0))
