"""Image-quality metrics for pcpo: FID, KID, Inception Score, within-prompt diversity.

Conventions
-----------
* Images are float tensors in [0, 1], shape (N, C, H, W), C = 1 or 3 (grayscale
  is replicated to RGB for the Inception network).  Before the Inception
  network they are quantised like a PNG: ``round(clamp(x, 0, 1) * 255)`` as
  uint8, which is what torch-fidelity expects (it resizes to 299x299 itself
  with TF1-compatible bilinear interpolation).  uint8 tensors are accepted as is.
* FID / KID use torch-fidelity's ``inception-v3-compat`` extractor (weights
  from :mod:`evaluation.inception`) and torch-fidelity's own statistics
  KID estimator (``kid_features_to_metric``); FID uses the same formula but
  evaluates tr sqrt(S1 S2) with an exact symmetric / low-rank route instead of
  ``np.linalg.eigvals`` on a 2048x2048 non-symmetric matrix (15-50 s on this
  2-core box).  Given the same pool3 features the numbers equal
  ``torch_fidelity.calculate_metrics`` (KID bit-for-bit, FID to ~1e-7
  relative; checked in the tests via :func:`torch_fidelity_reference`).  Features are extracted here so that the
  real set's features/statistics can be cached per (dataset name, resolution,
  count, network checksum) under ``$PCPO_CACHE/fid_refs``.
* Every result dict carries ``network``, ``weights`` and ``sha256`` naming the
  network that produced it.
* Results do not depend on ``batch_size`` beyond float32 rounding (~1e-6 rel.)
  and are deterministic (fixed RNG seeds for KID subsets / IS splits).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Dict, Hashable, List, Optional, Tuple, Union

import numpy as np
import torch

from . import inception as _inc

__all__ = [
    "load_png_folder",
    "to_uint8_rgb",
    "inception_features",
    "reference_statistics",
    "fid_from_features",
    "trace_sqrt_product",
    "kid_from_features",
    "fid",
    "kid",
    "fid_kid",
    "torch_fidelity_reference",
    "inception_score",
    "inception_score_from_logits",
    "class_coverage",
    "diversity",
    "lpips_alex_available",
    "find_alexnet_weights",
    "DIVERSITY_INCEPTION_LAYERS",
]

FEATURE_LAYER = "2048"  # pool3
DEFAULT_KID_SUBSETS = 100
DEFAULT_SEED = 2020  # torch-fidelity's default rng_seed
ALEXNET_WEIGHTS_NAME = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
# torch-fidelity attribute names of the Inception blocks used by the diversity substitute
DIVERSITY_INCEPTION_LAYERS = ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c")
LPIPS_MIN_SIZE = 64

ImagesLike = Union[torch.Tensor, np.ndarray]

#: ``pcpo data fetch`` names of the networks the metrics need (the data catalogue's names)
FETCH_INCEPTION = "inception-fidelity"   # torch-fidelity's original Inception (with classifier): IS
FETCH_LPIPS_ALEXNET = "lpips-alexnet"    # torchvision's AlexNet ImageNet weights: LPIPS diversity
FETCH_DINOV2 = "dinov2-large-hf"         # facebook/dinov2-large: FD-DINO (the catalogue entry)


class MissingNetwork(FileNotFoundError, RuntimeError):
    """A metric's network is not on this machine; the message is one line naming what to fetch."""


# =========================================================================== I/O & conversion


def load_png_folder(path, pattern: str = "*.png") -> Tuple[torch.Tensor, List[str]]:
    """Load all PNGs of a folder (non-recursive), sorted by file name.

    Returns ``(images, names)``: float32 (N, C, H, W) in [0, 1] and the file
    names.  C = 1 if every file is 8-bit grayscale ('L'), else 3 (RGB; alpha
    is dropped, palettes are expanded).  All images must share one size.
    """
    from PIL import Image

    folder = Path(path)
    files = sorted((p for p in folder.glob(pattern) if p.is_file()), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} in {folder}")
    pils = []
    for p in files:
        with Image.open(p) as im:
            im.load()
            pils.append(im.copy())
    gray = all(im.mode == "L" for im in pils)
    arrays = []
    for im, p in zip(pils, files):
        a = np.asarray(im if gray else im.convert("RGB"), dtype=np.uint8)
        a = a[None] if gray else a.transpose(2, 0, 1)
        arrays.append(a)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images in {folder} have different shapes: {sorted(shapes)}")
    x = torch.from_numpy(np.stack(arrays)).to(torch.float32) / 255.0
    return x, [p.name for p in files]


def _as_tensor(images: ImagesLike) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise TypeError(f"expected a tensor of images, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    if images.shape[0] == 0:
        raise ValueError("empty image batch")
    return images


def to_uint8_rgb(images: ImagesLike) -> torch.Tensor:
    """[0,1] float (or uint8) (N,1|3,H,W) -> uint8 (N,3,H,W), PNG-style quantisation."""
    x = _as_tensor(images).detach().cpu()
    if x.dtype != torch.uint8:
        if not torch.is_floating_point(x):
            raise TypeError(f"unsupported dtype {x.dtype}; use float in [0,1] or uint8")
        x = torch.round(x.to(torch.float32).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def _images_fingerprint(u8: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(u8.shape)).encode())
    h.update(u8.contiguous().numpy().tobytes())
    return h.hexdigest()


def _network_fields() -> Dict[str, object]:
    d = _inc.describe_network()
    return {
        "network": d["network"],
        "weights": d["weights"],
        "sha256": d["sha256"],
        "weights_source": d["source"],
    }


# =========================================================================== features


def _check_batch_size(batch_size: int) -> int:
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return batch_size


def _image_key(u8_image: torch.Tensor) -> str:
    """Key of one uint8 (3,H,W) network input in a :data:`FeatureMemo`."""
    return hashlib.sha256(u8_image.contiguous().numpy().tobytes()).hexdigest()


#: Pool3 features already computed for uint8 network inputs, keyed by :func:`_image_key`.
#: ``diversity(..., memo=m)`` fills it as a by-product (its Inception pass runs the
#: whole network), and ``inception_features(..., memo=m)`` / ``fid_kid(..., memo=m)``
#: then skip those images: one Inception pass per image for FID, KID and diversity.
FeatureMemo = Dict[str, torch.Tensor]


@torch.inference_mode()
def inception_features(images: ImagesLike, batch_size: int = 32, device="cpu",
                       memo: Optional[FeatureMemo] = None) -> torch.Tensor:
    """Pool3 (2048-d) features of torch-fidelity's FID Inception, float32 (N, 2048), in input order.

    With ``memo``, images whose features it holds are not recomputed and new
    ones are added to it.
    """
    batch_size = _check_batch_size(batch_size)
    u8 = to_uint8_rgb(images)
    n = u8.shape[0]
    keys = [_image_key(u8[i]) for i in range(n)] if memo is not None else None
    todo = [i for i in range(n) if keys is None or keys[i] not in memo]
    computed: Dict[int, torch.Tensor] = {}
    if todo:
        fe = _inc.load_feature_extractor((FEATURE_LAYER,), device=device)
        for s in range(0, len(todo), batch_size):
            idx = todo[s : s + batch_size]
            (f,) = fe(u8[idx].to(device))
            f = f.detach().to("cpu", torch.float32)
            for j, i in enumerate(idx):
                computed[i] = f[j]
                if memo is not None:
                    memo[keys[i]] = f[j]
    if n == 0:
        return torch.empty((0, 2048), dtype=torch.float32)
    return torch.stack([computed[i] if i in computed else memo[keys[i]] for i in range(n)])


# =========================================================================== reference cache


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    if not s:
        raise ValueError(f"unusable reference name {name!r}")
    return s


def _reference_path(name: str, resolution: Tuple[int, int], count: int, net_sha: str) -> Path:
    h, w = resolution
    res = f"{h}px" if h == w else f"{h}x{w}px"
    return _inc.cache_dir() / "fid_refs" / f"{_safe(name)}-{res}-n{int(count)}-inc{net_sha[:12]}.npz"


def reference_statistics(
    name: str,
    images: Optional[ImagesLike] = None,
    *,
    resolution: Optional[Union[int, Tuple[int, int]]] = None,
    count: Optional[int] = None,
    batch_size: int = 32,
    device="cpu",
    cache: bool = True,
) -> Dict[str, object]:
    """Pool3 features + FID statistics of a real image set, cached on disk.

    Cache key: (``name``, resolution (H, W), ``count``, Inception weights sha256).
    With ``images`` given, the cached entry is used only if its fingerprint
    (sha256 of the uint8 pixels) matches; otherwise it is recomputed and
    replaced (with a warning).  Without ``images``, ``resolution`` and ``count``
    select an existing entry (FileNotFoundError if absent).

    Returns a dict with ``features`` (torch float32 (N,2048)), ``mu``, ``sigma``
    (numpy, as torch-fidelity computes them), ``name``, ``resolution``,
    ``count``, ``fingerprint``, ``path`` and the network fields.
    """
    net = _network_fields()
    if images is not None:
        u8 = to_uint8_rgb(images)
        resolution = (int(u8.shape[2]), int(u8.shape[3]))
        count = int(u8.shape[0])
        fingerprint = _images_fingerprint(u8)
    else:
        if resolution is None or count is None:
            raise ValueError("without images, give resolution and count of the cached reference set")
        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        resolution = (int(resolution[0]), int(resolution[1]))
        fingerprint = None
    path = _reference_path(name, resolution, count, str(net["sha256"]))

    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ok = meta.get("sha256") == net["sha256"] and (fingerprint is None or meta.get("fingerprint") == fingerprint)
            if ok:
                feats = torch.from_numpy(z["features"].copy())
                return _ref_result(name, resolution, count, meta["fingerprint"], feats, z["mu"].copy(), z["sigma"].copy(), path, net)
        if fingerprint is None:
            raise ValueError(f"cached reference {path} was made with other weights; pass images to recompute")
        warnings.warn(f"reference set {name!r} changed since {path} was cached; recomputing", stacklevel=2)
    elif images is None:
        raise FileNotFoundError(f"no cached reference statistics at {path}")

    from torch_fidelity.metric_fid import fid_features_to_statistics

    feats = inception_features(u8, batch_size=batch_size, device=device)
    stats = fid_features_to_statistics(feats)
    if cache:
        meta = {"name": str(name), "resolution": list(resolution), "count": count, "fingerprint": fingerprint,
                "sha256": net["sha256"], "network": net["network"], "feature_layer": FEATURE_LAYER}

        buf = io.BytesIO()
        np.savez(buf, features=feats.numpy(), mu=stats["mu"], sigma=stats["sigma"], meta=np.array(json.dumps(meta)))
        _inc._atomic_write_bytes(path, buf.getvalue())
    return _ref_result(name, resolution, count, fingerprint, feats, stats["mu"], stats["sigma"], path if cache else None, net)


def _ref_result(name, resolution, count, fingerprint, feats, mu, sigma, path, net):
    return {
        "kind": "fid_reference",
        "name": str(name),
        "resolution": tuple(resolution),
        "count": int(count),
        "fingerprint": fingerprint,
        "features": feats,
        "mu": mu,
        "sigma": sigma,
        "path": None if path is None else str(path),
        **net,
    }


def _is_reference(obj) -> bool:
    return isinstance(obj, dict) and obj.get("kind") == "fid_reference"


# =========================================================================== FID / KID


def _centered(features: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    x = features.detach().cpu().to(torch.float64).numpy()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("FID needs a (N, D) feature matrix with N >= 2")
    mu = x.mean(0)
    return mu, (x - mu) / np.sqrt(x.shape[0] - 1)  # sigma = A.T @ A (np.cov normalisation)


def trace_sqrt_product(a1: np.ndarray, a2: np.ndarray) -> float:
    """tr sqrt(sigma1 sigma2) for sigma_i = a_i.T a_i, exactly, without a general eigen-solver.

    * both sets no larger than the feature dim: the non-zero eigenvalues of
      sigma1 sigma2 are the squared singular values of a1 a2.T, so the trace is
      the nuclear norm of that (N1, N2) matrix;
    * otherwise: sqrt(sigma1) from a symmetric eigendecomposition, then the
      eigenvalues of the PSD matrix sqrt(sigma1) sigma2 sqrt(sigma1).
    Negative round-off eigenvalues count as 0, as does the real part of their
    complex square root in torch-fidelity's formula.
    """
    n1, d = a1.shape
    n2 = a2.shape[0]
    if max(n1, n2) <= d:
        return float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    s1, s2 = a1.T @ a1, a2.T @ a2
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def fid_from_features(features_fake: torch.Tensor, features_real: torch.Tensor, method: str = "exact") -> float:
    """FID between two pool3 feature sets.

    ``method="exact"`` (default): ||mu1-mu2||^2 + tr s1 + tr s2 - 2 tr sqrt(s1 s2)
    in float64 via :func:`trace_sqrt_product` (well under a second for small
    sets; equal to torch-fidelity's value to ~1e-7 relative, see the tests).
    ``method="torch_fidelity"``: torch-fidelity's own functions
    (``np.linalg.eigvals`` of the 2048x2048 product: ~15-50 s on 2 CPU cores).
    """
    if method == "torch_fidelity":
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

        s1 = fid_features_to_statistics(features_fake.detach().cpu().to(torch.float32))
        s2 = fid_features_to_statistics(features_real.detach().cpu().to(torch.float32))
        return float(fid_statistics_to_metric(s1, s2, False)[KEY_METRIC_FID])
    if method != "exact":
        raise ValueError(f"unknown FID method {method!r}")
    mu1, a1 = _centered(features_fake)
    mu2, a2 = _centered(features_real)
    if a1.shape[1] != a2.shape[1]:
        raise ValueError("feature dimensions differ")
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2.0 * trace_sqrt_product(a1, a2))


def _kid_kwargs(n1: int, n2: int, subsets: int, subset_size: Optional[int], seed: int) -> Dict[str, object]:
    if subset_size is None:
        subset_size = min(1000, n1, n2)
    subset_size = int(subset_size)
    if subset_size < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if subset_size > min(n1, n2):
        raise ValueError(f"kid subset_size {subset_size} exceeds set sizes ({n1}, {n2})")
    return {"kid_subsets": int(subsets), "kid_subset_size": subset_size, "rng_seed": int(seed), "verbose": False}


def kid_from_features(
    features_fake: torch.Tensor,
    features_real: torch.Tensor,
    *,
    subsets: int = DEFAULT_KID_SUBSETS,
    subset_size: Optional[int] = None,
    seed: int = DEFAULT_SEED,
) -> Dict[str, float]:
    """Unbiased KID (cubic polynomial kernel, random subsets) via torch-fidelity; returns mean, std, subset_size."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    kw = _kid_kwargs(features_fake.shape[0], features_real.shape[0], subsets, subset_size, seed)
    out = kid_features_to_metric(features_fake.detach().cpu().to(torch.float32),
                                 features_real.detach().cpu().to(torch.float32), **kw)
    return {"mean": float(out[KEY_METRIC_KID_MEAN]), "std": float(out[KEY_METRIC_KID_STD]),
            "subset_size": kw["kid_subset_size"], "subsets": kw["kid_subsets"], "seed": kw["rng_seed"]}


def _real_features(real, real_name, batch_size, device, cache) -> Tuple[torch.Tensor, Dict[str, object]]:
    if _is_reference(real):
        ref = real
        current = _inc.describe_network()["sha256"]
        if ref.get("sha256") != current:
            raise ValueError(f"reference {ref.get('name')!r} was computed with Inception weights {ref.get('sha256')}, "
                             f"current weights are {current}")
    elif real_name is not None:
        ref = reference_statistics(real_name, real, batch_size=batch_size, device=device, cache=cache)
    else:
        feats = inception_features(real, batch_size=batch_size, device=device)
        return feats, {"real_name": None, "real_cache": None}
    return ref["features"], {"real_name": ref["name"], "real_cache": ref["path"]}


def fid_kid(
    fake: ImagesLike,
    real,
    *,
    real_name: Optional[str] = None,
    batch_size: int = 32,
    device="cpu",
    cache: bool = True,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    kid_subset_size: Optional[int] = None,
    seed: int = DEFAULT_SEED,
    memo: Optional[FeatureMemo] = None,
) -> Dict[str, Dict[str, object]]:
    """FID and KID of ``fake`` against ``real`` from one pass of feature extraction.

    ``real`` is an image tensor (cached under ``real_name`` if given) or the
    dict returned by :func:`reference_statistics`.  KID subset size defaults
    to ``min(1000, N_fake, N_real)``.  Returns ``{"fid": {...}, "kid": {...}}``.
    ``memo``: see :data:`FeatureMemo`.
    """
    ff = inception_features(fake, batch_size=batch_size, device=device, memo=memo)
    fr, real_info = _real_features(real, real_name, batch_size, device, cache)
    net = _network_fields()
    common = {"feature_layer": "pool3_2048", "n_fake": int(ff.shape[0]), "n_real": int(fr.shape[0]), **real_info, **net}
    k = kid_from_features(ff, fr, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {
        "fid": {"metric": "fid", "value": fid_from_features(ff, fr), **common},
        "kid": {"metric": "kid", "value": k["mean"], "std": k["std"], "subset_size": k["subset_size"],
                "subsets": k["subsets"], "seed": k["seed"], **common},
    }


def fid(fake: ImagesLike, real, *, real_name: Optional[str] = None, batch_size: int = 32, device="cpu",
        cache: bool = True) -> Dict[str, object]:
    """Frechet Inception Distance (pool3, torch-fidelity formula). See :func:`fid_kid` for ``real``."""
    ff = inception_features(fake, batch_size=batch_size, device=device)
    fr, real_info = _real_features(real, real_name, batch_size, device, cache)
    return {"metric": "fid", "value": fid_from_features(ff, fr), "feature_layer": "pool3_2048",
            "n_fake": int(ff.shape[0]), "n_real": int(fr.shape[0]), **real_info, **_network_fields()}


def kid(fake: ImagesLike, real, *, real_name: Optional[str] = None, batch_size: int = 32, device="cpu",
        cache: bool = True, subsets: int = DEFAULT_KID_SUBSETS, subset_size: Optional[int] = None,
        seed: int = DEFAULT_SEED) -> Dict[str, object]:
    """Kernel Inception Distance (unbiased MMD^2, poly kernel d=3, gamma=1/2048, c=1), mean +- std over subsets."""
    ff = inception_features(fake, batch_size=batch_size, device=device)
    fr, real_info = _real_features(real, real_name, batch_size, device, cache)
    k = kid_from_features(ff, fr, subsets=subsets, subset_size=subset_size, seed=seed)
    return {"metric": "kid", "value": k["mean"], "std": k["std"], "subset_size": k["subset_size"],
            "subsets": k["subsets"], "seed": k["seed"], "feature_layer": "pool3_2048",
            "n_fake": int(ff.shape[0]), "n_real": int(fr.shape[0]), **real_info, **_network_fields()}


class _U8Dataset(torch.utils.data.Dataset):
    def __init__(self, u8: torch.Tensor):
        self.u8 = u8

    def __len__(self):
        return self.u8.shape[0]

    def __getitem__(self, i):
        return self.u8[i]


def torch_fidelity_reference(fake: ImagesLike, real: ImagesLike, *, batch_size: int = 32,
                             kid_subsets: int = DEFAULT_KID_SUBSETS, kid_subset_size: Optional[int] = None,
                             seed: int = DEFAULT_SEED) -> Dict[str, float]:
    """FID/KID straight from ``torch_fidelity.calculate_metrics`` (no pcpo caching) - a cross-check."""
    import torch_fidelity

    f8, r8 = to_uint8_rgb(fake), to_uint8_rgb(real)
    kw = _kid_kwargs(f8.shape[0], r8.shape[0], kid_subsets, kid_subset_size, seed)
    return torch_fidelity.calculate_metrics(
        input1=_U8Dataset(f8), input2=_U8Dataset(r8), fid=True, kid=True, cuda=False, cache=False,
        batch_size=batch_size, save_cpu_ram=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=_inc.feature_extractor_weights_path(), **kw,
    )


# =========================================================================== Inception Score


def inception_classifier_missing() -> str:
    return (f"is: the Inception Score needs torch-fidelity's Inception with its classifier "
            f"({_inc.TORCH_FIDELITY_WEIGHTS_NAME} in the torch hub cache); run `pcpo data fetch {FETCH_INCEPTION}` "
            "or name a task classifier (evaluation.reference.classifier)")


def inception_score_from_logits(logits: torch.Tensor, splits: int = 10, shuffle: bool = True,
                                seed: int = DEFAULT_SEED) -> Dict[str, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split; mean and std over splits (torch-fidelity's estimator)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if logits.dim() != 2:
        raise ValueError("logits must be (N, K)")
    splits = int(splits)
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits must be in [1, N={logits.shape[0]}]")
    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=shuffle, rng_seed=seed)
    return {"mean": float(out[KEY_METRIC_ISC_MEAN]), "std": float(out[KEY_METRIC_ISC_STD])}


def _classifier_identity(classifier, name: Optional[str]) -> Dict[str, object]:
    net = name or getattr(classifier, "name", None) or getattr(classifier, "__name__", None) or type(classifier).__name__
    weights = getattr(classifier, "weights_path", None) or getattr(classifier, "weights", None)
    weights = str(weights) if isinstance(weights, (str, os.PathLike)) else None
    sha = getattr(classifier, "sha256", None)
    if sha is None and weights and os.path.isfile(weights):
        sha = _inc.file_sha256(weights)
    return {"network": str(net), "weights": weights, "sha256": sha}


@torch.inference_mode()
def _classifier_logits(classifier, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    was_training = isinstance(classifier, torch.nn.Module) and classifier.training
    if was_training:
        classifier.eval()
    try:
        out = []
        for i in range(0, images.shape[0], batch_size):
            y = classifier(images[i : i + batch_size].to(device))
            if y.dim() != 2:
                raise ValueError(f"classifier must return (B, K) logits, got {tuple(y.shape)}")
            out.append(y.detach().to("cpu", torch.float64))
        return torch.cat(out, 0)
    finally:
        if was_training:
            classifier.train()


def inception_score(
    images: ImagesLike,
    classifier: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    *,
    classifier_name: Optional[str] = None,
    splits: int = 10,
    shuffle: bool = True,
    seed: int = DEFAULT_SEED,
    batch_size: int = 32,
    device="cpu",
) -> Dict[str, object]:
    """Inception Score.

    * ``classifier=None``: real Inception logits (torch-fidelity's
      ``logits_unbiased``), only when :func:`evaluation.inception.has_real_logits`;
      otherwise a RuntimeError (the offline weights have no classifier).
    * ``classifier`` given: a callable mapping float [0,1] images (B, C, H, W)
      as passed in (channels untouched) to class logits (B, K).  The result is
      labelled with ``classifier_name`` / ``classifier.name`` / its type name,
      and ``classifier.weights_path``/``sha256`` if present.

    ``splits`` is capped at N.  Returns {"metric","value","std","network",...}.
    """
    x = _as_tensor(images)
    batch_size = _check_batch_size(batch_size)
    splits = min(int(splits), x.shape[0])
    if classifier is None:
        if not _inc.has_real_logits():
            raise MissingNetwork(inception_classifier_missing())
        u8 = to_uint8_rgb(x)
        fe = _inc.load_feature_extractor(("logits_unbiased",), device=device)
        chunks = []
        with torch.inference_mode():
            for i in range(0, u8.shape[0], batch_size):
                (lg,) = fe(u8[i : i + batch_size].to(device))
                chunks.append(lg.to("cpu", torch.float64))
        logits = torch.cat(chunks, 0)
        ident = {**_network_fields(), "feature_layer": "logits_unbiased"}
    else:
        logits = _classifier_logits(classifier, x, batch_size, device)
        ident = _classifier_identity(classifier, classifier_name)
    if not torch.isfinite(logits).all():
        raise ValueError("classifier produced non-finite logits")
    r = inception_score_from_logits(logits, splits=splits, shuffle=shuffle, seed=seed)
    return {"metric": "inception_score", "value": r["mean"], "std": r["std"], "splits": splits,
            "n": int(x.shape[0]), "num_classes": int(logits.shape[1]), **ident}


def class_coverage(
    images: ImagesLike,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    *,
    classifier_name: Optional[str] = None,
    batch_size: int = 32,
    device="cpu",
) -> Dict[str, object]:
    """Mode coverage across prompts: how evenly a task classifier's predicted classes spread.

    Every image is assigned its arg-max class; the value is the entropy of that
    histogram divided by ``log K`` (K = the classifier's classes), in [0, 1]: 1 when the
    images fall evenly over all K classes, 0 when every image lands in one.  This
    is the mode count of the stacked-MNIST benchmark made continuous.  Hard
    labels, not the soft marginal of the Inception Score, so that images the
    classifier is unsure about (ink blots) count as the one class they resemble
    most instead of spreading mass over all classes and looking diverse.  With an
    evaluation set balanced over the K prompted classes a faithful generator
    scores near 1.  Also returned: ``modes`` (classes predicted at least once),
    ``counts`` and ``mean_confidence`` (mean max-probability).
    """
    x = _as_tensor(images)
    batch_size = _check_batch_size(batch_size)
    logits = _classifier_logits(classifier, x, batch_size, device)
    return {**class_coverage_from_logits(logits), **_classifier_identity(classifier, classifier_name)}


def class_coverage_from_logits(logits: torch.Tensor) -> Dict[str, object]:
    """:func:`class_coverage` from the classifier's (N, K) logits (without the network fields)."""
    if not torch.isfinite(logits).all():
        raise ValueError("classifier produced non-finite logits")
    k = int(logits.shape[1])
    if k < 2:
        raise ValueError("class coverage needs a classifier with at least 2 classes")
    counts = torch.bincount(logits.argmax(1), minlength=k).to(torch.float64)
    p = counts / counts.sum()
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum())
    conf = torch.softmax(logits, 1).max(1).values
    return {"metric": "class_coverage", "value": entropy / math.log(k), "entropy_nats": entropy,
            "modes": int((counts > 0).sum()), "counts": [int(c) for c in counts.tolist()],
            "mean_confidence": float(conf.mean()), "n": int(logits.shape[0]), "num_classes": k}


# =========================================================================== diversity


def find_alexnet_weights() -> Optional[str]:
    """torchvision's ImageNet AlexNet weights in a torch hub checkpoint dir, or None."""
    for d in _inc._hub_checkpoint_dirs():
        p = d / ALEXNET_WEIGHTS_NAME
        if p.is_file():
            return str(p.resolve())
    return None


def lpips_alex_available() -> bool:
    return find_alexnet_weights() is not None


class _FeatureDistance:
    """LPIPS-style distance: channel-unit-normalised maps, (weighted) squared difference summed over
    channels, spatial mean, then combined over layers (``sum`` for LPIPS, ``mean`` for the substitute)."""

    name: str
    weights: Optional[str]
    sha256: Optional[str]
    combine: str

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def pair(self, fa: List[torch.Tensor], fb: List[torch.Tensor]) -> float:
        per_layer = []
        for a, b, w in zip(fa, fb, self.channel_weights):
            d = (a - b).square().to(torch.float64)
            if w is not None:
                d = d * w.view(-1, 1, 1)
            per_layer.append(d.sum(0).mean())
        s = torch.stack(per_layer)
        return float(s.sum() if self.combine == "sum" else s.mean())


def _unit_normalise(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.square().sum(1, keepdim=True).sqrt() + eps)


class _InceptionFeatureDistance(_FeatureDistance):
    combine = "mean"

    def __init__(self, device):
        self.device = device
        self.fe = _inc.load_feature_extractor((FEATURE_LAYER,), device=device)
        d = _inc.describe_network()
        self.name = "inception_feature_distance"
        self.network_detail = (f"{d['network']}; blocks {', '.join(DIVERSITY_INCEPTION_LAYERS)}; "
                               "unit-normalised channels, squared diff, spatial mean, mean over blocks, no learned heads")
        self.weights, self.sha256 = d["weights"], d["sha256"]
        self.channel_weights = [None] * len(DIVERSITY_INCEPTION_LAYERS)

    def prepare(self, images):
        return to_uint8_rgb(images)

    @torch.inference_mode()
    def features(self, x):
        captured: Dict[str, torch.Tensor] = {}
        handles = []
        for nm in DIVERSITY_INCEPTION_LAYERS:
            def hook(_m, _i, out, nm=nm):
                captured[nm] = _unit_normalise(out.detach().to(torch.float32)).cpu()
            handles.append(getattr(self.fe, nm).register_forward_hook(hook))
        try:
            (pool3,) = self.fe(x.to(self.device))
        finally:
            for h in handles:
                h.remove()
        self.last_pool3 = pool3.detach().to("cpu", torch.float32)
        return [captured[nm] for nm in DIVERSITY_INCEPTION_LAYERS]


class _LpipsAlexDistance(_FeatureDistance):
    """Real LPIPS (v0.1, AlexNet trunk + learned linear heads), evaluated from cached per-image features."""

    combine = "sum"

    def __init__(self, device, alexnet_weights: Optional[str], _random_trunk: bool = False):
        import lpips

        self.device = device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # linear heads ship with the package
        if not _random_trunk:
            if alexnet_weights is None:
                raise FileNotFoundError(f"torchvision AlexNet weights ({ALEXNET_WEIGHTS_NAME}) not found in torch hub cache")
            sd = torch.load(alexnet_weights, map_location="cpu", weights_only=True)
            own = m.net.state_dict()  # keys like slice1.0.weight -> features.0.weight
            new = {k: sd["features." + k.split(".", 1)[1]] for k in own}
            m.net.load_state_dict(new, strict=True)
            self.name = "lpips_alex"
            self.weights, self.sha256 = alexnet_weights, _inc.file_sha256(alexnet_weights)
        else:  # test hook: exercises the code path without downloadable weights
            self.name = "lpips_alex_RANDOM_TRUNK_TEST_ONLY"
            self.weights, self.sha256 = None, None
        self.network_detail = "LPIPS v0.1 (AlexNet features + learned linear heads, lpips package)"
        self.model = m.eval().to(device)
        self.channel_weights = [lin.model[-1].weight.detach().to("cpu", torch.float64).view(-1) for lin in m.lins]

    def prepare(self, images):
        x = _as_tensor(images).detach().cpu().to(torch.float32).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if min(h, w) < LPIPS_MIN_SIZE:
            s = LPIPS_MIN_SIZE / min(h, w)
            x = torch.nn.functional.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear",
                                                align_corners=False)
        return x.contiguous()

    @torch.inference_mode()
    def features(self, x):
        x = x.to(self.device) * 2 - 1
        outs = self.model.net(self.model.scaling_layer(x))
        return [_unit_normalise(o.to(torch.float32)).cpu() for o in outs]


def _group_indices(groups, n: int) -> List[Tuple[Hashable, List[int]]]:
    """Labels (one per image; tuples count as labels) or a list of index lists (lists/ranges)."""
    if torch.is_tensor(groups) or isinstance(groups, np.ndarray):
        groups = groups.tolist()
    groups = list(groups)
    if groups and all(isinstance(g, (list, range)) for g in groups):
        out = [(gi, [int(i) for i in g]) for gi, g in enumerate(groups)]
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} labels for {n} images")
        order: Dict[Hashable, List[int]] = {}
        for i, g in enumerate(groups):
            order.setdefault(g, []).append(i)
        out = list(order.items())
    for _, idx in out:
        if any(i < 0 or i >= n for i in idx):
            raise IndexError("group index out of range")
    return out


def lpips_alexnet_missing() -> str:
    return (f"diversity: LPIPS needs torchvision's AlexNet weights ({ALEXNET_WEIGHTS_NAME} in the torch hub cache); "
            f"run `pcpo data fetch {FETCH_LPIPS_ALEXNET}`, or measure diversity_inception (another metric) instead")


def _make_distance(backbone: str, device) -> _FeatureDistance:
    if backbone in ("lpips_alex", "lpips"):
        weights = find_alexnet_weights()
        if weights is None:
            raise MissingNetwork(lpips_alexnet_missing())
        return _LpipsAlexDistance(device, weights)
    if backbone in ("inception", "inception_feature_distance"):
        return _InceptionFeatureDistance(device)
    if backbone == "_lpips_alex_random_trunk":
        return _LpipsAlexDistance(device, None, _random_trunk=True)
    raise ValueError(f"unknown diversity backbone {backbone!r} (lpips_alex | inception)")


def diversity(
    images: ImagesLike,
    groups,
    backbone: str = "lpips_alex",
    *,
    batch_size: int = 32,
    device="cpu",
    memo: Optional[FeatureMemo] = None,
    distance: Optional[_FeatureDistance] = None,
) -> Dict[str, object]:
    """Mean pairwise perceptual distance within each prompt group, averaged over groups.

    ``groups``: one hashable label per image (e.g. prompt id), or a list of
    index lists.  Groups with fewer than 2 images are ignored (ValueError if
    none is left).  Each group weighs equally.  Bitwise-identical network
    inputs share one feature computation, so identical images are at distance
    exactly 0.

    ``backbone``: "lpips_alex" (default): real LPIPS v0.1 with torchvision's
    AlexNet from the torch hub cache; :class:`MissingNetwork` when those weights
    are absent (never a quiet substitute).  "inception": a different metric,
    reported as ``diversity_inception`` (network ``inception_feature_distance``:
    an LPIPS-style distance on the FID Inception's blocks
    :data:`DIVERSITY_INCEPTION_LAYERS`, mean over blocks, no learned heads;
    images quantised to uint8 and resized to 299 like for FID).  LPIPS inputs
    smaller than 64 px are bilinearly upsampled to 64.

    ``distance``: a network built once by :func:`_make_distance` (streamed evaluation
    calls this per chunk of groups); overrides ``backbone``.

    ``memo``: with the Inception backbone, the pool3 features of every image
    passed through the network are stored there (see :data:`FeatureMemo`), so
    a following :func:`fid_kid` with the same memo reuses them.
    """
    x = _as_tensor(images)
    batch_size = _check_batch_size(batch_size)
    gidx = _group_indices(groups, x.shape[0])
    dist = distance if distance is not None else _make_distance(backbone, device)
    prepared = dist.prepare(x)

    per_group = []
    total_pairs = 0
    for label, idx in gidx:
        if len(idx) < 2:
            continue
        # de-duplicate bitwise-identical inputs
        key_of, uniq = [], {}
        for i in idx:
            k = _image_key(prepared[i])
            if k not in uniq:
                uniq[k] = len(uniq)
            key_of.append(uniq[k])
        first = {}
        for i, u in zip(idx, key_of):
            first.setdefault(u, i)
        u_idx = [first[u] for u in range(len(uniq))]
        u_keys = list(uniq)  # image key of each unique input, in the order of u_idx
        feats: List[List[torch.Tensor]] = []
        for s in range(0, len(u_idx), batch_size):
            layers = dist.features(prepared[u_idx[s : s + batch_size]])
            for j in range(layers[0].shape[0]):
                feats.append([lay[j] for lay in layers])
            if memo is not None and isinstance(dist, _InceptionFeatureDistance):
                for j in range(layers[0].shape[0]):
                    memo[u_keys[s + j]] = dist.last_pool3[j]
        cache: Dict[Tuple[int, int], float] = {}
        vals = []
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                ua, ub = sorted((key_of[a], key_of[b]))
                if ua == ub:
                    vals.append(0.0)
                    continue
                if (ua, ub) not in cache:
                    cache[(ua, ub)] = dist.pair(feats[ua], feats[ub])
                vals.append(cache[(ua, ub)])
        total_pairs += len(vals)
        per_group.append({"group": label if isinstance(label, (str, int, float, bool)) else str(label),
                          "n": len(idx), "n_unique": len(uniq), "value": float(np.mean(vals))})
    if not per_group:
        raise ValueError("diversity needs at least one group with 2 or more images")
    return {
        "metric": "diversity_inception" if isinstance(dist, _InceptionFeatureDistance) else "diversity",
        "value": float(np.mean([g["value"] for g in per_group])),
        "per_group": per_group,
        "n_groups": len(per_group),
        "n_pairs": total_pairs,
        "network": dist.name,
        "network_detail": dist.network_detail,
        "weights": dist.weights,
        "sha256": dist.sha256,
    }


# =========================================================================== streamed image folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def folder_images(path) -> List[Path]:
    """The image files of a folder (non-recursive), sorted by name."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder {folder} does not exist")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no images in reference folder {folder}")
    return files


def files_sha256(files: List[Path]) -> str:
    """sha256 over the sorted ``"name sha256"`` lines of ``files`` (the reference manifest's ``files_sha256``)."""
    h = hashlib.sha256()
    for p in sorted(files, key=lambda p: p.name):
        h.update(f"{p.name} {_inc.file_sha256(p)}\n".encode())
    return h.hexdigest()


def folder_identity(path) -> Dict[str, object]:
    """Name, image count and content key of a reference folder.

    A prepared folder's ``manifest.json`` gives ``files_sha256`` (checked against the image
    count on disk); a plain folder is hashed here, file by file, with the same definition.
    """
    folder = Path(path)
    files = folder_images(folder)
    man_p = folder / "manifest.json"
    if man_p.is_file():
        man = json.loads(man_p.read_text())
        key = man.get("files_sha256")
        n = man.get("n_images")
        if not key or n is None:
            raise ValueError(f"{man_p}: no files_sha256/n_images; prepare the folder again (pcpo data fetch)")
        if int(n) != len(files):
            raise ValueError(f"{man_p}: n_images {n} but {len(files)} images in the folder; prepare it again "
                             "(pcpo data fetch)")
        return {"files": files, "key": str(key), "key_source": "manifest files_sha256", "n": len(files),
                "name": man.get("name") or folder.name, "resolution": man.get("resolution")}
    return {"files": files, "key": files_sha256(files), "key_source": "hashed listing", "n": len(files),
            "name": folder.name, "resolution": None}


def load_uint8_rgb(files: List[Path]) -> torch.Tensor:
    """uint8 (N, 3, H, W) of a few image files (one size); grayscale and palettes become RGB."""
    from PIL import Image

    arrays = []
    for p in files:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images {files[0].parent} {[p.name for p in files][:3]}...: different sizes {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays))


def iter_uint8_batches(files: List[Path], batch_size: int):
    """uint8 (B, 3, H, W) batches of ``files`` in order; one batch in memory at a time."""
    batch_size = _check_batch_size(batch_size)
    for s in range(0, len(files), batch_size):
        yield load_uint8_rgb(files[s : s + batch_size])


def stream_features(files: List[Path], extract: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                    desc: str = "features") -> torch.Tensor:
    """float32 (N, D) features of image files, ``extract`` applied batch by batch (uint8 RGB in)."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(files), desc=desc, unit="img", disable=len(files) <= batch_size) as bar:
        for u8 in iter_uint8_batches(files, batch_size):
            out.append(extract(u8).detach().to("cpu", torch.float32))
            bar.update(u8.shape[0])
    return torch.cat(out)


def pool3_extractor(device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B,3,H,W) -> pool3 (B, 2048) of the FID Inception."""
    fe = _inc.load_feature_extractor((FEATURE_LAYER,), device=device)

    @torch.inference_mode()
    def run(u8):
        (f,) = fe(u8.to(device))
        return f
    return run


def folder_reference(
    path,
    *,
    name: Optional[str] = None,
    network: str = "inception",
    extract: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    network_fields: Optional[Dict[str, object]] = None,
    batch_size: int = 32,
    device="cpu",
    cache: bool = True,
    identity: Optional[Dict[str, object]] = None,
) -> Dict[str, object]:
    """Features and Fréchet statistics of a reference folder, streamed in batches and cached.

    Cache key: the folder's content key (:func:`folder_identity`: the manifest's
    ``files_sha256``, else the hashed listing) and the network's weights sha256, under
    ``$PCPO_CACHE/fid_refs``.  ``network="inception"`` uses the FID Inception's pool3;
    other networks pass ``extract`` (uint8 RGB batch -> features) and ``network_fields``
    (``network``, ``weights``, ``sha256``).  Only one batch of images is in memory at a time.
    """
    ident = identity or folder_identity(path)
    name = name or str(ident["name"])
    if network == "inception":
        net = _network_fields()
        extract = extract or pool3_extractor(device)
    else:
        if extract is None or not network_fields:
            raise ValueError("a non-Inception reference needs extract and network_fields")
        net = dict(network_fields)
    tag = f"{_safe(network)}{str(net['sha256'])[:12]}"
    cpath = _inc.cache_dir() / "fid_refs" / f"{_safe(name)}-n{ident['n']}-{str(ident['key'])[:16]}-{tag}.npz"
    if cache and cpath.is_file():
        with np.load(cpath, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") == ident["key"] and meta.get("sha256") == net["sha256"]:
                return _folder_ref(name, ident, torch.from_numpy(z["features"].copy()), z["mu"].copy(),
                                   z["sigma"].copy(), cpath, net)
    feats = stream_features(ident["files"], extract, batch_size, desc=f"reference {name}")
    mu, sigma = _stats(feats)
    if cache:
        meta = {"name": name, "n": ident["n"], "key": ident["key"], "key_source": ident["key_source"],
                "sha256": net["sha256"], "network": net["network"], "folder": str(Path(path))}
        buf = io.BytesIO()
        np.savez(buf, features=feats.numpy(), mu=mu, sigma=sigma, meta=np.array(json.dumps(meta)))
        _inc._atomic_write_bytes(cpath, buf.getvalue())
    return _folder_ref(name, ident, feats, mu, sigma, cpath if cache else None, net)


def _stats(feats: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    st = fid_features_to_statistics(feats)
    return st["mu"], st["sigma"]


def _folder_ref(name, ident, feats, mu, sigma, path, net):
    return {"kind": "fid_reference", "name": str(name), "resolution": ident.get("resolution"), "count": int(ident["n"]),
            "fingerprint": ident["key"], "key_source": ident["key_source"], "features": feats, "mu": mu,
            "sigma": sigma, "path": None if path is None else str(path), **net}


def frechet_distance(features_fake: torch.Tensor, features_real: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula on any features)."""
    return fid_from_features(features_fake, features_real)
