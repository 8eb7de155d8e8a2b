"""Evaluate one folder of samples (written by ``pcpo sample``) into a metrics dict.

Every metric records the network that produced it.  The reference set for
FID/KID is named in ``evaluation.reference`` of the experiment config:

    reference: {source: tiny-heldout}                # the tiny world's held-out real digits
    reference: {source: folder, path: DIR, name: X}  # any folder of PNGs
    reference: {classifier: PATH}                    # IS classifier when Inception logits are absent
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger("pcpo.evaluate")

ALL_METRICS = ("reward", "fid", "kid", "is", "diversity", "coverage", "fd_dino")
# what runs when the config names no metrics: coverage needs a task classifier, fd_dino offline weights
DEFAULT_METRICS = ("reward", "fid", "kid", "is", "diversity")


def expand(value, cfg: dict):
    """Fill the {results} and {classifier} placeholders used in experiment configs."""
    results = f"{cfg.get('results', 'results')}/{cfg.get('experiment', 'default')}"
    if isinstance(value, str):
        return value.format(results=results, classifier=f"{results}/base/classifier")
    if isinstance(value, dict):
        return {k: expand(v, cfg) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, cfg) for v in value]
    return value


def load_samples(folder: str | Path):
    from PIL import Image
    import numpy as np

    folder = Path(folder)
    man = json.loads((folder / "manifest.json").read_text())
    imgs = []
    for rec in man["images"]:
        a = np.asarray(Image.open(folder / rec["file"]), dtype=np.uint8)
        t = torch.from_numpy(a.copy()).float() / 255.0
        imgs.append(t[None] if t.ndim == 2 else t.permute(2, 0, 1))
    return torch.stack(imgs), man


def reference_images(ref: dict, resolution: int) -> tuple[torch.Tensor, str]:
    source = ref.get("source", "tiny-heldout")
    if source == "tiny-heldout":
        from pcpo.tiny.data import load_split

        split = load_split("heldout", resolution=resolution)
        return split.unit_images(), f"tiny-heldout-{resolution}px"
    if source == "folder":
        from evaluation.metrics import load_png_folder

        imgs, _ = load_png_folder(ref["path"])
        return imgs, ref.get("name") or Path(ref["path"]).name
    from pcpo.config import ConfigError

    raise ConfigError(f"evaluation.reference.source: unknown source {source!r}; use tiny-heldout or folder")


def _classifier(cfg: dict):
    ev = cfg.get("evaluation", {})
    path = ev.get("reference", {}).get("classifier") or \
        cfg.get("reward_options", {}).get("digit_alignment", {}).get("classifier_path")
    if not path:
        return None, None
    from pcpo.tiny.classifier import load_classifier

    path = expand(path, cfg)
    return load_classifier(path), f"tiny-digit-classifier ({path})"


def evaluate_folder(samples: str | Path, cfg: dict, rewards: list[str] | None = None,
                    metrics: list[str] | None = None, batch_size: int = 64, device: str = "cpu") -> dict:
    from evaluation import metrics as M
    from pcpo.config import ConfigError
    from pcpo.rewards import get_reward

    ev = cfg.get("evaluation", {})
    metrics = list(metrics or ev.get("metrics") or DEFAULT_METRICS)
    bad = [m for m in metrics if m not in ALL_METRICS]
    if bad:
        raise ConfigError(f"--metric: unknown metric {bad[0]!r}; known: {', '.join(ALL_METRICS)}")
    images, man = load_samples(samples)
    prompts = [r["prompt"] for r in man["images"]]
    meta = [r["metadata"] for r in man["images"]]
    groups = [r["group"] for r in man["images"]]
    out: dict = {}
    timing: dict = {}

    if "reward" in metrics:
        names = rewards or ev.get("rewards") or [cfg.get("reward", {}).get("name", "digit_alignment")]
        for name in names:
            t0 = time.perf_counter()
            fn = get_reward(name, field="evaluation.rewards", **expand(cfg.get("reward_options", {}).get(name, {}), cfg))
            r, _ = fn(images, prompts, meta)
            r = torch.as_tensor(r, dtype=torch.float64)
            out[f"reward/{name}"] = {"value": float(r.mean()), "std": float(r.std(unbiased=False)),
                                     "network": f"reward:{name}", "n": int(r.numel())}
            timing[f"reward/{name}"] = time.perf_counter() - t0
    # Diversity runs first: its Inception pass leaves each image's pool3 features in
    # ``memo``, so FID/KID need no second pass over the same images.
    memo: dict = {}
    div = None
    if "diversity" in metrics:
        t0 = time.perf_counter()
        div = M.diversity(images, groups, batch_size=batch_size, device=device, memo=memo)
        timing["diversity"] = time.perf_counter() - t0
    if "fid" in metrics or "kid" in metrics:
        t0 = time.perf_counter()
        real, real_name = reference_images(ev.get("reference", {}), images.shape[-1])
        fk = M.fid_kid(images, real, real_name=real_name, batch_size=batch_size, device=device, memo=memo)
        for k in ("fid", "kid"):
            if k in metrics:
                out[k] = fk[k]
        timing["fid+kid"] = time.perf_counter() - t0
    if "is" in metrics:
        t0 = time.perf_counter()
        from evaluation.inception import has_real_logits

        if has_real_logits():
            out["is"] = M.inception_score(images, batch_size=batch_size, device=device)
        else:
            clf, name = _classifier(cfg)
            if clf is None:
                raise ConfigError("evaluation.reference.classifier: the Inception Score needs real Inception logits "
                                  "or a classifier; name one (the tiny world's: '{classifier}')")
            out["is"] = M.inception_score(images, clf, classifier_name=name, batch_size=batch_size, device=device)
        timing["is"] = time.perf_counter() - t0
    if "coverage" in metrics:
        t0 = time.perf_counter()
        clf, name = _classifier(cfg)
        if clf is None:
            raise ConfigError("evaluation.reference.classifier: the coverage metric needs a task classifier; "
                              "name one (the tiny world's: '{classifier}') or drop coverage from evaluation.metrics")
        out["coverage"] = M.class_coverage(images, clf, classifier_name=name, batch_size=batch_size, device=device)
        timing["coverage"] = time.perf_counter() - t0
    if div is not None:
        out["diversity"] = div
    if "fd_dino" in metrics:
        raise ConfigError("evaluation.metrics: fd_dino needs torch-fidelity's DINOv2 weights, which are not "
                          "available offline here; remove it from the metric list on this machine")
    man_small = {k: v for k, v in man.items() if k != "images"}
    return {"samples": str(samples), "manifest": man_small, "n_images": int(images.shape[0]),
            "metrics": out, "seconds": timing}
