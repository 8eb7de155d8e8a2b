"""Evaluate one folder of samples (written by ``pcpo sample``) into a metrics dict.

Every metric records the network that produced it, the images it was computed on
(``n``, the prompt set) and, for the distribution metrics, the reference set (name, count).
The reference set for FID/KID/FD-DINO is named in ``evaluation.reference``:

    reference: {source: tiny-heldout}                # the tiny world's held-out real digits
    reference: {source: folder, path: DIR, name: X}  # a prepared folder (manifest.json) or any folder of images
    reference: {classifier: PATH}                    # task classifier: IS and coverage use it

Order of work: every network the requested metrics need is loaded first (a missing one
fails in one line naming what to fetch, before anything is computed); then the samples are
streamed in chunks of whole prompt groups, so memory holds one chunk of images plus the
per-image features, never the whole set; the reference folder is streamed the same way and
its features cached (:func:`evaluation.metrics.folder_reference`).

Metrics: ``reward`` (each reward of ``evaluation.rewards``), ``fid``, ``kid`` (FID Inception
pool3), ``is`` (the configured task classifier when ``evaluation.reference.classifier`` names
one, else torch-fidelity's Inception classifier), ``diversity`` (LPIPS/AlexNet within prompt
groups), ``diversity_inception`` (an Inception-feature distance, a different metric),
``coverage`` (task classifier), ``fd_dino`` (Fréchet distance on DINOv2 ViT-L/14 features).
A manifest with several prompt sets routes each metric to the set that lists it
(``evaluation.prompts.NAME.metrics``).
"""
from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger("pcpo.evaluate")

ALL_METRICS = ("reward", "fid", "kid", "is", "diversity", "diversity_inception", "coverage", "fd_dino")
# what runs when the config names no metrics: coverage needs a task classifier, fd_dino DINOv2
DEFAULT_METRICS = ("reward", "fid", "kid", "is", "diversity")
REFERENCE_METRICS = ("fid", "kid", "fd_dino")


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


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    p = folder / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"--samples: no manifest.json in {folder} (a folder written by pcpo sample)")
    return json.loads(p.read_text())


def load_images(folder: Path, records: list[dict]) -> torch.Tensor:
    """float [0, 1] (N, C, H, W) of a few sample records; C = 1 for grayscale PNGs."""
    from PIL import Image
    import numpy as np

    imgs = []
    for rec in records:
        with Image.open(folder / rec["file"]) as im:
            a = np.asarray(im, dtype=np.uint8)
        t = torch.from_numpy(a.copy()).float() / 255.0
        imgs.append(t[None] if t.ndim == 2 else t.permute(2, 0, 1))
    return torch.stack(imgs)


def load_samples(folder: str | Path):
    """All images of a (small) sample folder and its manifest (tests, notebooks)."""
    man = read_manifest(folder)
    return load_images(Path(folder), man["images"]), man


def route(metrics: list[str], man: dict) -> dict[str, tuple[str, list[int]]]:
    """metric -> (prompt set, indices of its images).  A set that lists the metric gets it; a
    metric no set lists uses the sets that list none (all images when there is one set)."""
    recs = man["images"]
    sets = man.get("prompt_sets") or {}
    by_set: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by_set.setdefault(r.get("set", "all"), []).append(i)
    out = {}
    for m in metrics:
        owner = [n for n, s in sets.items() if m in (s.get("metrics") or [])]
        if owner:
            out[m] = (owner[0], by_set.get(owner[0], []))
        else:
            free = [n for n in by_set if not (sets.get(n, {}).get("metrics"))]
            names = free or list(by_set)
            out[m] = ("+".join(names), sorted(i for n in names for i in by_set[n]))
        if not out[m][1]:
            from pcpo.config import ConfigError

            raise ConfigError(f"evaluation.prompts: metric {m!r} has no images in {out[m][0]!r}")
    return out


def _classifier(cfg: dict):
    ev = cfg.get("evaluation", {})
    path = ev.get("reference", {}).get("classifier") or \
        cfg.get("reward_options", {}).get("digit_alignment", {}).get("classifier_path")
    if not path:
        return None, None
    from pcpo.tiny.classifier import load_classifier

    path = expand(path, cfg)
    return load_classifier(path), f"tiny-digit-classifier ({path})"


def _reward_fn(name: str, cfg: dict, device: str):
    from pcpo.rewards import REWARDS, _load_builtins, get_reward

    opts = dict(expand(cfg.get("reward_options", {}).get(name, {}), cfg))
    _load_builtins()
    try:
        factory = REWARDS.get(name, "evaluation.rewards")
        if "device" in inspect.signature(factory).parameters and "device" not in opts:
            opts["device"] = device
    except (TypeError, ValueError):
        pass
    return get_reward(name, field="evaluation.rewards", **opts)


class _Networks:
    """Every network the requested metrics need, loaded before anything is computed."""

    def __init__(self, metrics, cfg, rewards, device, batch_size):
        from evaluation import inception as I
        from evaluation import metrics as M
        from pcpo.config import ConfigError

        ev = cfg.get("evaluation", {})
        self.device = device
        self.rewards = {}
        if "reward" in metrics:
            names = rewards or ev.get("rewards") or [cfg.get("reward", {}).get("name", "digit_alignment")]
            for name in names:
                self.rewards[name] = _reward_fn(name, cfg, device)
        self.inception = None
        if {"fid", "kid", "diversity_inception"} & set(metrics):
            I.describe_network()  # the pool3 weights exist (or are converted) and are checksummed
            self.inception = M.pool3_extractor(device)
        self.classifier = self.classifier_name = None
        self.is_real = False
        if "is" in metrics or "coverage" in metrics:
            self.classifier, self.classifier_name = _classifier(cfg)
        if "coverage" in metrics and self.classifier is None:
            raise ConfigError("evaluation.reference.classifier: the coverage metric needs a task classifier; "
                              "name one (the tiny world's: '{classifier}') or drop coverage from evaluation.metrics")
        if "is" in metrics and self.classifier is None:
            if not I.has_real_logits():
                raise M.MissingNetwork(M.inception_classifier_missing())
            self.is_real = True
            self.is_extractor = I.load_feature_extractor(("logits_unbiased",), device=device)
        self.lpips = M._make_distance("lpips_alex", device) if "diversity" in metrics else None
        self.inc_distance = M._make_distance("inception", device) if "diversity_inception" in metrics else None
        self.dino = None
        if "fd_dino" in metrics:
            from evaluation.dino import DinoV2Features

            self.dino = DinoV2Features(ev.get("dino_model"), device=device)
        self.reference = None
        if set(REFERENCE_METRICS) & set(metrics):
            self.reference = _reference_spec(ev.get("reference", {}), cfg)


def _reference_spec(ref: dict, cfg: dict) -> dict:
    from evaluation import metrics as M
    from pcpo.config import ConfigError

    source = ref.get("source", "tiny-heldout")
    if source == "tiny-heldout":
        return {"source": source}
    if source == "folder":
        path = ref.get("path")
        if not path:
            raise ConfigError("evaluation.reference.path: the reference image folder is required with source: folder")
        path = expand(path, cfg)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"evaluation.reference.path: no folder {path!r}; prepare it with "
                                    "`pcpo data fetch --for CONFIG`")
        ident = M.folder_identity(path)
        return {"source": source, "path": path, "name": ref.get("name") or ident["name"], "identity": ident}
    raise ConfigError(f"evaluation.reference.source: unknown source {source!r}; use tiny-heldout or folder")


def _chunks(indices: list[int], groups: list, batch_size: int) -> list[list[int]]:
    """Consecutive runs of whole prompt groups, about ``batch_size`` images each."""
    out, cur = [], []
    for n, i in enumerate(indices):
        cur.append(i)
        nxt = indices[n + 1] if n + 1 < len(indices) else None
        if len(cur) >= batch_size and (nxt is None or groups[nxt] != groups[i]):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _tiny_heldout(resolution: int) -> tuple[torch.Tensor, str]:
    from pcpo.tiny.data import load_split

    split = load_split("heldout", resolution=resolution)
    return split.unit_images(), f"tiny-heldout-{resolution}px"


def evaluate_folder(samples: str | Path, cfg: dict, rewards: list[str] | None = None,
                    metrics: list[str] | None = None, batch_size: int = 64, device: str = "cpu") -> dict:
    from evaluation import metrics as M
    from pcpo.config import ConfigError

    ev = cfg.get("evaluation", {})
    metrics = list(dict.fromkeys(metrics or ev.get("metrics") or DEFAULT_METRICS))
    bad = [m for m in metrics if m not in ALL_METRICS]
    if bad:
        raise ConfigError(f"--metric: unknown metric {bad[0]!r}; known: {', '.join(ALL_METRICS)}")
    folder = Path(samples)
    man = read_manifest(folder)
    recs = man["images"]
    routes = route(metrics, man)
    t0 = time.perf_counter()
    nets = _Networks(metrics, cfg, rewards, device, batch_size)
    timing: dict = {"load networks": time.perf_counter() - t0}
    log.info("networks ready for %s (%.1f s); streaming %d images", ", ".join(metrics), timing["load networks"],
             len(recs))

    member = {m: set(idx) for m, (_, idx) in routes.items()}
    groups = [r["group"] for r in recs]
    reward_vals = {n: [] for n in nets.rewards}
    reward_idx: list[int] = []  # the manifest position of each value in reward_vals, in order
    pool3: dict[int, torch.Tensor] = {}
    is_logits, cov_logits, dino_feats = [], [], []
    div_groups = {"diversity": [], "diversity_inception": []}
    div_info: dict = {}
    spent = {k: 0.0 for k in ("reward", "inception", "is", "coverage", "diversity", "diversity_inception", "fd_dino")}
    fid_members = member.get("fid", set()) | member.get("kid", set())
    from tqdm import tqdm

    chunks = _chunks(list(range(len(recs))), groups, batch_size)
    for chunk in tqdm(chunks, desc="evaluate", unit="chunk", disable=len(chunks) < 2):
        x = load_images(folder, [recs[i] for i in chunk])
        pos = {i: j for j, i in enumerate(chunk)}

        def sub(metric):
            idx = [i for i in chunk if i in member[metric]]
            return idx, x[[pos[i] for i in idx]] if idx else None

        if nets.rewards:
            idx, xs = sub("reward")
            if idx:
                t = time.perf_counter()
                for name, fn in nets.rewards.items():
                    r, _ = fn(xs, [recs[i]["prompt"] for i in idx], [recs[i]["metadata"] for i in idx])
                    reward_vals[name].append(torch.as_tensor(r, dtype=torch.float64).reshape(-1).cpu())
                reward_idx.extend(idx)
                spent["reward"] += time.perf_counter() - t
        memo: dict = {}
        for key, dist in (("diversity", nets.lpips), ("diversity_inception", nets.inc_distance)):
            if dist is None:
                continue
            idx, xs = sub(key)
            g = [groups[i] for i in idx]
            if idx and any(g.count(v) > 1 for v in set(g)):
                t = time.perf_counter()
                d = M.diversity(xs, g, batch_size=batch_size, device=device, distance=dist,
                                memo=memo if key == "diversity_inception" else None)
                div_groups[key].extend(d["per_group"])
                div_info[key] = {k: d[k] for k in ("network", "network_detail", "weights", "sha256")}
                spent[key] += time.perf_counter() - t
        if fid_members:
            idx = [i for i in chunk if i in fid_members]
            if idx:
                t = time.perf_counter()
                f = M.inception_features(x[[pos[i] for i in idx]], batch_size=batch_size, device=device, memo=memo)
                pool3.update({i: f[j] for j, i in enumerate(idx)})
                spent["inception"] += time.perf_counter() - t
        if "is" in member:
            idx, xs = sub("is")
            if idx:
                t = time.perf_counter()
                if nets.is_real:
                    u8 = M.to_uint8_rgb(xs)
                    with torch.inference_mode():
                        (lg,) = nets.is_extractor(u8.to(device))
                    is_logits.append(lg.to("cpu", torch.float64))
                else:
                    is_logits.append(M._classifier_logits(nets.classifier, xs, batch_size, device))
                spent["is"] += time.perf_counter() - t
        if "coverage" in member:
            idx, xs = sub("coverage")
            if idx:
                t = time.perf_counter()
                cov_logits.append(M._classifier_logits(nets.classifier, xs, batch_size, device))
                spent["coverage"] += time.perf_counter() - t
        if nets.dino is not None:
            idx, xs = sub("fd_dino")
            if idx:
                t = time.perf_counter()
                dino_feats.append(nets.dino(M.to_uint8_rgb(xs)))
                spent["fd_dino"] += time.perf_counter() - t
        del x

    out: dict = {}
    for name, vals in reward_vals.items():
        r = torch.cat(vals)
        # per image as well (manifest position and value): the report labels sample grids with them
        out[f"reward/{name}"] = {"value": float(r.mean()), "std": float(r.std(unbiased=False)),
                                 "network": f"reward:{name}", "n": int(r.numel()), "prompt_set": routes["reward"][0],
                                 "per_image": {"index": list(reward_idx), "value": r.tolist()}}
    timing["reward"] = spent["reward"]

    resolution = int(load_images(folder, recs[:1]).shape[-1])
    if "fid" in metrics or "kid" in metrics:
        t = time.perf_counter()
        real = _inception_reference(nets.reference, resolution, batch_size, device)
        for m in ("fid", "kid"):
            if m not in metrics:
                continue
            ff = torch.stack([pool3[i] for i in routes[m][1]])
            common = {"feature_layer": "pool3_2048", "n": int(ff.shape[0]), "n_fake": int(ff.shape[0]),
                      "n_real": int(real["count"]), "prompt_set": routes[m][0], **_reference_fields(real),
                      **M._network_fields()}
            if m == "fid":
                out["fid"] = {"metric": "fid", "value": M.fid_from_features(ff, real["features"]), **common}
            else:
                k = M.kid_from_features(ff, real["features"])
                out["kid"] = {"metric": "kid", "value": k["mean"], "std": k["std"], "subset_size": k["subset_size"],
                              "subsets": k["subsets"], "seed": k["seed"], **common}
        timing["fid+kid"] = spent["inception"] + time.perf_counter() - t
    if "is" in metrics:
        logits = torch.cat(is_logits)
        if not torch.isfinite(logits).all():
            raise ValueError("is: the classifier produced non-finite logits")
        splits = min(10, logits.shape[0])
        r = M.inception_score_from_logits(logits, splits=splits)
        ident = ({**M._network_fields(), "feature_layer": "logits_unbiased"} if nets.is_real
                 else M._classifier_identity(nets.classifier, nets.classifier_name))
        out["is"] = {"metric": "inception_score", "value": r["mean"], "std": r["std"], "splits": splits,
                     "n": int(logits.shape[0]), "num_classes": int(logits.shape[1]), "prompt_set": routes["is"][0],
                     **ident}
        timing["is"] = spent["is"]
    if "coverage" in metrics:
        c = M.class_coverage_from_logits(torch.cat(cov_logits))
        out["coverage"] = {"metric": "class_coverage", **c, "prompt_set": routes["coverage"][0],
                           **M._classifier_identity(nets.classifier, nets.classifier_name)}
        timing["coverage"] = spent["coverage"]
    for key in ("diversity", "diversity_inception"):
        if key not in metrics:
            continue
        pg = div_groups[key]
        if not pg:
            raise ValueError(f"{key}: needs at least one prompt with 2 or more images (n_per_prompt >= 2)")
        import numpy as np

        out[key] = {"metric": key, "value": float(np.mean([g["value"] for g in pg])), "per_group": pg,
                    "n_groups": len(pg), "n_pairs": int(sum(g["n"] * (g["n"] - 1) // 2 for g in pg)),
                    "n": int(sum(g["n"] for g in pg)), "prompt_set": routes[key][0], **div_info[key]}
        timing[key] = spent[key]
    if "fd_dino" in metrics:
        t = time.perf_counter()
        ff = torch.cat(dino_feats)
        real = _dino_reference(nets.reference, nets.dino, resolution, batch_size, device)
        out["fd_dino"] = {"metric": "fd_dino", "value": M.frechet_distance(ff, real["features"]),
                          "feature": f"dinov2_cls_{nets.dino.dim}", "n": int(ff.shape[0]), "n_fake": int(ff.shape[0]),
                          "n_real": int(real["count"]), "prompt_set": routes["fd_dino"][0], **_reference_fields(real),
                          **nets.dino.fields()}
        timing["fd_dino"] = spent["fd_dino"] + time.perf_counter() - t
    man_small = {k: v for k, v in man.items() if k != "images"}
    return {"samples": str(samples), "manifest": man_small, "n_images": len(recs), "device": str(device),
            "metrics": out, "seconds": timing}


def _reference_fields(real: dict) -> dict:
    return {"real_name": real["name"], "real_cache": real.get("path"), "reference": real["name"],
            "reference_n": int(real["count"]), "reference_key": real.get("fingerprint")}


def _inception_reference(ref: dict, resolution: int, batch_size: int, device) -> dict:
    from evaluation import metrics as M

    if ref["source"] == "tiny-heldout":
        imgs, name = _tiny_heldout(resolution)
        return M.reference_statistics(name, imgs, batch_size=batch_size, device=device)
    return M.folder_reference(ref["path"], name=ref["name"], batch_size=batch_size, device=device,
                              identity=ref["identity"])


def _dino_reference(ref: dict, dino, resolution: int, batch_size: int, device) -> dict:
    from evaluation import metrics as M

    if ref["source"] == "tiny-heldout":
        imgs, name = _tiny_heldout(resolution)
        u8 = M.to_uint8_rgb(imgs)
        feats = torch.cat([dino(u8[s:s + batch_size]) for s in range(0, u8.shape[0], batch_size)])
        return {"name": name, "count": int(u8.shape[0]), "features": feats, "path": None, "fingerprint": None}
    return M.folder_reference(ref["path"], name=ref["name"], network="dinov2", extract=dino,
                              network_fields=dino.fields(), batch_size=batch_size, device=device,
                              identity=ref["identity"])
