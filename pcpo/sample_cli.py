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


def sample_images(adapter, prompts: list[tuple[str, dict]], *, n_per_prompt: int, seed: int, sampler: str, steps: int,
                  eta: float, noise_level: float, guidance_scale: float | None, batch_size: int, predict_fn=None,
                  progress: bool = True):
    """Images (N, C, H, W) and per-image records, N = len(prompts) * n_per_prompt.

    All noise comes from one generator seeded with ``seed`` in a fixed order, so
    the same prompts and seeds give the same starting noise for every model.
    """
    import torch

    from pcpo.rollout import make_grid, rollout

    grid = make_grid(adapter.schedule(), sampler, steps, eta=eta, noise_level=noise_level)
    texts, metas, gids = [], [], []
    for i, (p, m) in enumerate(prompts):
        for j in range(n_per_prompt):
            texts.append(p)
            metas.append({**m, "prompt_index": i, "sample_index": j})
            gids.append(i)
    gen = torch.Generator().manual_seed(seed)
    traj = rollout(adapter, texts, grid, guidance_scale, gen, metas, torch.tensor(gids), batch_size=batch_size,
                   progress=progress, predict_fn=predict_fn)
    return traj.images, texts, metas, grid


def _sample(args) -> int:
    import torch

    from pcpo.checkpoint import load_policy, read_meta
    from pcpo.cli import UserError
    from pcpo.config import load_config
    from pcpo.guidance import ImplicitRewardGuidance
    from pcpo.models import load_model
    from pcpo.prompts import get_prompts
    from pcpo.utils import atomic_write_json

    cfg = load_config(args.config) if args.config else None
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
        base = load_model(kind, path).to(device)
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
        adapter = load_model(kind, path).to(device)
        predict_fn = None

    fam = adapter.family
    sampler = args.sampler or meta.get("sampler") or ("ddim" if fam == "ddim" else "flow-dance")
    steps = args.steps or meta.get("sampling_steps") or (cfg.sampling.steps if cfg else 20)
    eta = 0.0 if args.deterministic else (args.eta if args.eta is not None else meta.get("eta", 1.0))
    noise = 0.0 if args.deterministic else (args.noise_level if args.noise_level is not None else meta.get("noise_level", 0.7))
    gscale = args.guidance_scale if args.guidance_scale is not None else meta.get("guidance_scale",
                                                                                   cfg.sampling.guidance_scale if cfg else None)
    source = cfg.prompts.source if cfg else "tiny"
    options = dict(cfg.prompts.options) if cfg else {}
    if args.prompts_per_digit is not None:
        options.setdefault("eval", {})["n_per_digit"] = args.prompts_per_digit
    prompts = get_prompts(source, options, split="eval")
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]

    images, texts, metas, grid = sample_images(
        adapter, prompts, n_per_prompt=args.n_per_prompt, seed=args.seed, sampler=sampler, steps=steps, eta=eta,
        noise_level=noise, guidance_scale=gscale, batch_size=args.batch_size, predict_fn=predict_fn,
        progress=not args.no_progress)

    out = Path(args.out)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    records = []
    for k, (img, p, m) in enumerate(zip(images, texts, metas)):
        name = f"{k:05d}.png"
        save_png(img, tmp / "images" / name)
        records.append({"file": f"images/{name}", "prompt": p, "metadata": m, "group": m["prompt_index"]})
    manifest = {
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "epoch": meta.get("epoch"), "algorithm": meta.get("algorithm"), "seed_train": meta.get("seed"),
        "model": {"kind": kind, "path": path}, "sampler": sampler, "steps": steps, "eta": eta,
        "noise_level": noise, "deterministic": bool(args.deterministic), "guidance_scale": gscale,
        "seed": args.seed, "n_per_prompt": args.n_per_prompt, "irg": irg_specs or None, "ema": bool(use_ema),
        "images": records,
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %d images to %s", len(records), out)
    return 0


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
