"""``pcpo sample``: a fixed evaluation prompt set x fixed seeds -> PNG files + manifest."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("pcpo.sample")


def save_png(img, path: Path) -> None:
    import numpy as np
    from PIL import Image

    a = (img.clamp(0, 1).mul(255).round().to("cpu").numpy()).astype(np.uint8)
    if a.shape[0] == 1:
        Image.fromarray(a[0], mode="L").save(path)
    else:
        Image.fromarray(a.transpose(1, 2, 0)).save(path)


def image_noise(seed: int, index: int, steps: int, shape: tuple[int, ...]):
    """Initial state (*shape) and per-step noise (steps, *shape) of image ``index`` of a sample set.

    Each image draws from its own generator, seeded from (``seed``, ``index``), so an image's
    noise depends neither on the batch size nor on how many images are sampled: the first N
    images of a larger set are the N images of a smaller one, for every model alike.
    """
    import hashlib

    import torch

    key = int.from_bytes(hashlib.sha256(f"pcpo-sample/{int(seed)}/{int(index)}".encode()).digest()[:8], "little")
    gen = torch.Generator().manual_seed(key & ((1 << 63) - 1))
    x0 = torch.randn(shape, generator=gen)
    z = torch.randn((steps, *shape), generator=gen)
    return x0, z


def iter_samples(adapter, prompts: list[tuple[str, dict]], *, n_per_prompt: int, seed: int, sampler: str, steps: int,
                 eta: float, noise_level: float, guidance_scale: float | None, batch_size: int, predict_fn=None,
                 progress: bool = True, index_offset: int = 0):
    """Yield ``(images, texts, metadata)`` batches of at most ``batch_size`` images, in order.

    Image k (of ``len(prompts) * n_per_prompt``) is prompt ``k // n_per_prompt``; its noise is
    :func:`image_noise` (seed, ``index_offset`` + k).  Only one batch is encoded, denoised and
    decoded at a time, and nothing of it is kept after it is yielded: host and device memory
    do not grow with the number of prompts.  The denoising loop is the rollout's
    (:func:`pcpo.rollout.rollout`) without the trajectory it records for training.
    """
    import torch
    from tqdm import tqdm

    from pcpo.rollout import make_grid

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    grid = make_grid(adapter.schedule(), sampler, steps, eta=eta, noise_level=noise_level)
    T = grid.num_steps
    g = adapter.default_guidance_scale if guidance_scale is None else float(guidance_scale)
    predict = predict_fn or adapter.predict_guided
    shape = tuple(adapter.latent_shape())
    dev, mdtype = adapter.device, adapter.dtype
    total = len(prompts) * n_per_prompt
    bar = tqdm(total=total, desc="sample", unit="img", disable=not progress)
    for start in range(0, total, batch_size):
        ks = range(start, min(start + batch_size, total))
        texts = [prompts[k // n_per_prompt][0] for k in ks]
        metas = [{**prompts[k // n_per_prompt][1], "prompt_index": k // n_per_prompt, "sample_index": k % n_per_prompt}
                 for k in ks]
        noise = [image_noise(seed, index_offset + k, T, shape) for k in ks]
        x = torch.stack([a for a, _ in noise]).to(dev)
        z = torch.stack([b for _, b in noise])
        del noise
        with torch.no_grad():
            c = {k: v.to(dev) for k, v in adapter.encode_prompts(texts).items()}
            u = {k: v.to(dev) for k, v in adapter.null_cond(len(texts)).items()} if g != 1.0 else None
            for i in range(T):
                idx = torch.full((len(texts),), i, dtype=torch.long)
                pred = predict(x.to(mdtype), grid.model_time(idx).to(dev), c, u, g)
                x = grid.step(idx, pred, x, noise=z[:, i].to(dev)).prev_sample
            images = adapter.decode(x).float().cpu()
        del c, u, x, z
        yield images, texts, metas
        del images  # the caller has written it: not kept while the next batch is made
        bar.update(len(texts))
    bar.close()


def sample_images(adapter, prompts: list[tuple[str, dict]], **kw):
    """All images of :func:`iter_samples` at once, (N, C, H, W), with their texts and metadata
    (for small sets: tests, notebooks).  ``pcpo sample`` streams instead."""
    import torch

    imgs, texts, metas = [], [], []
    for b, t, m in iter_samples(adapter, prompts, **kw):
        imgs.append(b)
        texts += t
        metas += m
    return torch.cat(imgs), texts, metas


def _sample(args) -> int:
    import torch

    from pcpo.checkpoint import load_base_model, load_policy, read_meta
    from pcpo.cli import UserError
    from pcpo.config import load_config
    from pcpo.guidance import ImplicitRewardGuidance
    from pcpo.prompts import evaluation_prompt_sets, prompt_set
    from pcpo.utils import atomic_write_json

    cfg = load_config(args.config) if args.config else None
    from pcpo.runlock import lock_output

    lock_output(args.out)  # one writer per output folder; a second one fails in one line
    # every prompt set is read (and checked) before any model loads
    evaluation = _raw_evaluation(args.config)
    single = isinstance(evaluation.get("prompts"), dict) and "source" in evaluation["prompts"]
    resolved = []
    for set_name, spec in evaluation_prompt_sets(evaluation, cfg.prompts.source if cfg else "tiny",
                                                 dict(cfg.prompts.options) if cfg else {}).items():
        field = "evaluation.prompts" + ("" if single or set_name == "all" else f".{set_name}")
        prompts = prompt_set(spec, field, n_per_digit=args.prompts_per_digit)
        if args.max_prompts:
            prompts = prompts[: args.max_prompts]
        resolved.append((set_name, spec, prompts, int(spec.get("n_per_prompt") or args.n_per_prompt)))
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    kind = args.model_kind or (cfg.model.kind if cfg else None)
    path = args.model_path or (cfg.model.path if cfg else None)
    meta = read_meta(args.checkpoint) if args.checkpoint else {}
    use_ema = _wants_ema(meta, args)
    if args.checkpoint:
        kind, path = meta["model"]["kind"], args.model_path or meta["model"]["path"]
    if not kind or not path:
        raise UserError("--model-kind/--model-path (or --config, or --checkpoint) must name the model")

    irg_specs = list(args.irg or [])
    if args.irg_scale is not None:
        if not args.checkpoint:
            raise UserError("--irg-scale needs --checkpoint (the fine-tuned model guided against the base)")
        irg_specs.append(f"{args.checkpoint}:{args.irg_scale}")
    if irg_specs:
        base = load_base_model(kind, path, "--model-path").to(device)
        models = []
        for spec in irg_specs:
            ck, _, lam = spec.rpartition(":")
            if not ck:
                raise UserError(f"--irg: expected CHECKPOINT:LAMBDA, got {spec!r}")
            models.append((load_policy(ck, device, use_ema=_wants_ema(read_meta(ck), args)), float(lam)))
        adapter = base
        predict_fn = ImplicitRewardGuidance(base, models)
    elif args.checkpoint:
        adapter = load_policy(args.checkpoint, device, use_ema=use_ema, model_path=args.model_path)
        predict_fn = None
    else:
        adapter = load_base_model(kind, path, "--model-path").to(device)
        predict_fn = None

    fam = adapter.family
    sampler = args.sampler or meta.get("sampler") or ("ddim" if fam == "ddim" else "flow-dance")
    steps = args.steps or meta.get("sampling_steps") or (cfg.sampling.steps if cfg else 20)
    eta = 0.0 if args.deterministic else (args.eta if args.eta is not None else meta.get("eta", 1.0))
    noise = 0.0 if args.deterministic else (args.noise_level if args.noise_level is not None else meta.get("noise_level", 0.7))
    gscale = args.guidance_scale if args.guidance_scale is not None else meta.get("guidance_scale",
                                                                                   cfg.sampling.guidance_scale if cfg else None)
    policy = None
    if args.checkpoint and not irg_specs:
        predict_fn, policy = checkpoint_policy(args.checkpoint, meta, adapter, sampler, steps, eta, noise, device,
                                               model_path=args.model_path)
    out = Path(args.out)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    try:
        records, set_info = _write_sets(tmp, resolved, adapter, args, sampler, steps, eta, noise, gscale, predict_fn)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    manifest = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "epoch": meta.get("epoch"), "algorithm": meta.get("algorithm"), "seed_train": meta.get("seed"),
        "model": {"kind": kind, "path": path}, "sampler": sampler, "steps": steps, "eta": eta,
        "noise_level": noise, "deterministic": bool(args.deterministic), "guidance_scale": gscale,
        "seed": args.seed, "n_per_prompt": args.n_per_prompt, "irg": irg_specs or None, "ema": bool(use_ema),
        "policy": policy or {"variant": "plain", "description": "the model's own prediction"},
        "noise": "per image: sample_cli.image_noise(seed, index)", "prompt_sets": set_info,
        "images": records,
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %d images to %s", len(records), out)
    return 0


def run_config(meta: dict):
    """A checkpoint's training config, rebuilt from its ``identity`` record (the flattened config a
    resume checks; paths are not in it, the model's is the checkpoint's ``model.path``).  None for a
    checkpoint written before that record existed."""
    from pcpo.config import TrainingConfig, from_dict

    flat = (meta.get("identity") or {}).get("config")
    if not flat:
        return None
    data: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        d = data
        for k in parents:
            d = d.setdefault(k, {})
        d[leaf] = value
    data.setdefault("model", {})["path"] = meta["model"]["path"]
    return from_dict(TrainingConfig, data, where="")


def checkpoint_policy(ckpt, meta: dict, adapter, sampler: str, steps: int, eta: float, noise_level: float, device,
                      model_path: str | None = None):
    """``(predict_fn, policy record)`` of a checkpoint on the evaluation grid: ``(None, None)`` for a
    plain policy; for a run with ``pcpo.variant: uw-lambda`` the authors' evaluation policy
    ``pred_ref + lambda_t (pred_theta - pred_ref)`` (:func:`pcpo.credit.policy_mix`, lambda_t of
    :func:`pcpo.credit.evaluation_mix_plan` on ``(sampler, steps, eta, noise_level)``), the reference
    from the base model: the LoRA adapters disabled, or the base weights loaded beside the policy."""
    import torch

    from pcpo.checkpoint import load_base_model
    from pcpo.cli import UserError
    from pcpo.config import ConfigError
    from pcpo.credit import evaluation_mix_plan, plan_summary, policy_mix

    cfg = run_config(meta)
    if cfg is None or cfg.pcpo.variant != "uw-lambda":
        return None, None
    try:
        plan = evaluation_mix_plan(cfg, meta["algorithm"], adapter.schedule(), sampler, steps, eta, noise_level)
    except ConfigError as e:
        raise UserError(f"--checkpoint {ckpt}: {e}") from None
    if plan is None:
        return None, None
    if meta["lora"]["enabled"]:
        den = adapter.denoiser
        how = "the base model: the checkpoint's LoRA adapters disabled"

        def reference(x, t, cond, uncond, scale):
            den.disable_adapters()
            try:
                return adapter.predict_guided(x, t, cond, uncond, scale)
            finally:
                den.enable_adapters()
    else:
        m = meta["model"]
        base = load_base_model(m["kind"], model_path or m["path"], "--model-path (or the checkpoint's model.path)",
                               **m.get("options", {})).to(device)
        ref_den = base.denoiser.eval().requires_grad_(False)
        how = f"the base model: the weights at {model_path or m['path']}"

        def reference(x, t, cond, uncond, scale):
            live, adapter.denoiser = adapter.denoiser, ref_den
            try:
                return adapter.predict_guided(x, t, cond, uncond, scale)
            finally:
                adapter.denoiser = live
    log.info("uw-lambda checkpoint: sampling pred_ref + lambda_t (pred - pred_ref) on the evaluation grid (%s)",
             plan_summary(plan))
    record = {"variant": "uw-lambda",
              "description": "pred_ref + lambda_t (pred_theta - pred_ref), lambda_t of the evaluation grid",
              "reference": how, "lambda": [float(v) for v in plan.mix.to(torch.float64)],
              "timesteps": [float(v) for v in plan.sample_grid.timesteps],
              "w_bar": float((plan.mix * plan.native).mean()) if sampler == "ddim" else None, "zeta": plan.zeta,
              "summary": plan_summary(plan)}
    return policy_mix(adapter.predict_guided, reference, plan), record


def _write_sets(tmp: Path, resolved, adapter, args, sampler, steps, eta, noise, gscale, predict_fn):
    """Sample every prompt set into ``tmp/images`` batch by batch; the manifest records."""
    records, set_info = [], {}
    k = group0 = 0
    for set_name, spec, prompts, npp in resolved:
        log.info("prompt set %s: %d prompts x %d images (%s)", set_name, len(prompts), npp, spec.get("source"))
        first = k
        for images, texts, metas in iter_samples(
                adapter, prompts, n_per_prompt=npp, seed=args.seed, sampler=sampler, steps=steps, eta=eta,
                noise_level=noise, guidance_scale=gscale, batch_size=args.batch_size, predict_fn=predict_fn,
                progress=not args.no_progress, index_offset=k):
            for img, p, m in zip(images, texts, metas):
                name = f"{k:05d}.png"
                save_png(img, tmp / "images" / name)
                rec = {"file": f"images/{name}", "prompt": p, "metadata": m, "group": group0 + m["prompt_index"]}
                if len(resolved) > 1:
                    rec["set"] = set_name
                records.append(rec)
                k += 1
            img = images = None  # a view keeps its batch alive: drop both before the next batch
        group0 += len(prompts)
        set_info[set_name] = {"source": spec.get("source"), "path": spec.get("path"), "count": spec.get("count"),
                              "seed": spec.get("seed"), "n_prompts": len(prompts), "n_per_prompt": npp,
                              "n_images": k - first, "metrics": spec.get("metrics")}
    return records, set_info


def _raw_evaluation(config) -> dict:
    """The ``evaluation:`` block of the experiment YAML as written (the trainer's config ignores it)."""
    if not config:
        return {}
    import yaml

    return (yaml.safe_load(Path(config).read_text()) or {}).get("evaluation") or {}


def _wants_ema(meta: dict, args) -> bool:
    """EMA weights when asked, or by default where the checkpoint's framework evaluates
    with them (``ema_eval``, Flow-GRPO)."""
    return bool(args.ema or (meta.get("ema_eval") and not args.no_ema))


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample the evaluation prompt set from a checkpoint or the base model")
    p.add_argument("--checkpoint", help="a checkpoint folder (runs/<...>/checkpoints/epoch_N); omit for the base model")
    p.add_argument("--config", help="experiment YAML (model, prompts, sampling defaults)")
    p.add_argument("--model-kind")
    p.add_argument("--model-path")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--n-per-prompt", type=int, default=4)
    p.add_argument("--prompts-per-digit", type=int, default=None, help="tiny world: eval prompts per digit")
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--sampler", choices=["ddim", "flow-dance", "flow-grpo"])
    p.add_argument("--steps", type=int)
    p.add_argument("--eta", type=float)
    p.add_argument("--noise-level", type=float)
    p.add_argument("--deterministic", action="store_true", help="eta = 0 (DDIM) / ODE (flow)")
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights (the default where its "
                   "framework evaluates with EMA, as Flow-GRPO does)")
    p.add_argument("--no-ema", action="store_true", help="use the raw trained weights even where the framework "
                   "evaluates with EMA")
    p.add_argument("--irg-scale", type=float, help="implicit reward guidance of --checkpoint against the base model")
    p.add_argument("--irg", action="append", metavar="CHECKPOINT:LAMBDA", help="compose several fine-tuned models")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sample)
