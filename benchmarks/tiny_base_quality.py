"""Quality bar of the tiny world's base models.

For each base model (eps and flow) this samples the fixed evaluation prompts
with the project's sampler (``pcpo.rollout``), in the stochastic form RL uses
and in the deterministic form, and reports

* prompt accuracy: how often a sample for digit k is classified as k by the
  tiny classifier (the bar: >= 80% at the default guidance scale, both models);
* every reward's mean +- std on the base samples, next to the same reward on
  real held-out digits, so one sees the base is not at any reward's maximum;
* the fraction of visibly noisy samples (leftover noise outside the subspace
  of upsampled 8x8 images, :func:`pcpo.tiny.data.offgrid_noise`);
* the classifier's held-out accuracy and the pretraining wall time of each
  model (from the folders' logs).

Usage (models missing from --work are trained there first)::

    python benchmarks/tiny_base_quality.py --work results/tiny/base [--n-per-digit 20] [--json out.json]
    python benchmarks/tiny_base_quality.py --eps DIR --flow DIR --classifier DIR
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REWARDS = ("digit_alignment", "digit_boldness", "jpeg_compressibility", "jpeg_incompressibility")
NOISY = 3.0  # off-grid noise norm above which a 16x16 sample looks visibly noisy (see pcpo.tiny.data)


def _ensure_models(args) -> dict[str, Path]:
    from pcpo.tiny.classifier import TinyClassifierConfig, train_classifier
    from pcpo.tiny.pretrain import TinyPretrainConfig, pretrain

    work = Path(args.work) if args.work else None
    paths = {}
    for name in ("eps", "flow", "classifier"):
        given = getattr(args, name)
        if given:
            paths[name] = Path(given)
            continue
        if work is None:
            sys.exit(f"--{name} or --work is required")
        p = work / name
        marker = "config.json" if name == "classifier" else "pcpo_model.json"
        if not (p / marker).is_file():
            print(f"# training {name} into {p}", flush=True)
            if name == "classifier":
                train_classifier(p, TinyClassifierConfig(progress=not args.quiet), seed=args.seed)
            else:
                pretrain(name, p, TinyPretrainConfig.from_dict({"progress": not args.quiet}, kind=name), seed=args.seed)
        paths[name] = p
    return paths


def _stats(x: torch.Tensor) -> dict[str, float]:
    x = x.float()
    return {"mean": x.mean().item(), "std": x.std().item() if x.numel() > 1 else 0.0,
            "min": x.min().item(), "max": x.max().item()}


def _reward_stats(fns, images, prompts, metadata) -> dict[str, dict]:
    out = {}
    for name, fn in fns.items():
        r, _ = fn(images, prompts, metadata)
        out[name] = _stats(r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", help="folder holding (or receiving) eps/, flow/, classifier/")
    ap.add_argument("--eps")
    ap.add_argument("--flow")
    ap.add_argument("--classifier")
    ap.add_argument("--n-per-digit", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, nargs="*", default=None,
                    help="guidance scales to evaluate (default: each model's default)")
    ap.add_argument("--eps-steps", type=int, default=20)
    ap.add_argument("--flow-steps", type=int, default=16)
    ap.add_argument("--eta", type=float, default=1.0, help="stochastic DDIM eta (RL's sampler)")
    ap.add_argument("--noise-level", type=float, default=0.3, help="stochastic flow-dance noise level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--grid", help="save a PNG grid of samples per model and sampler with this prefix")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from pcpo.models import load_model
    from pcpo.rewards import get_reward
    from pcpo.rollout import make_grid, rollout
    from pcpo.tiny.data import load_split, offgrid_noise
    from pcpo.tiny.prompts import eval_prompts

    paths = _ensure_models(args)
    clf_cfg = json.loads((paths["classifier"] / "config.json").read_text())
    fns = {n: get_reward(n, classifier_path=str(paths["classifier"])) if n.startswith("digit") else get_reward(n)
           for n in REWARDS}
    align = fns["digit_alignment"]

    ev = eval_prompts(args.n_per_digit)
    prompts = [p for p, _ in ev]
    metadata = [m for _, m in ev]
    held = load_split("heldout")
    held_meta = [{"digit": int(d)} for d in held.labels]
    report = {
        "classifier": {"path": str(paths["classifier"]), "heldout": clf_cfg["metrics"]["heldout"],
                       "train_wall_time_s": clf_cfg["metrics"].get("wall_time_s")},
        "real_heldout_rewards": _reward_stats(fns, held.unit_images(), [""] * len(held), held_meta),
        "n_prompts": len(prompts),
        "models": {},
        "threads": torch.get_num_threads(),
    }

    for kind in ("eps", "flow"):
        adapter = load_model(f"tiny-{kind}", str(paths[kind]))
        log_file = paths[kind] / "pretrain_log.json"
        log = json.loads(log_file.read_text()) if log_file.is_file() else {}
        entry = {"path": str(paths[kind]), "pretrain_wall_time_s": log.get("wall_time_s"),
                 "pretrain_steps": log.get("config", {}).get("steps"),
                 "unet_parameters": sum(p.numel() for p in adapter.denoiser.parameters()),
                 "default_guidance_scale": adapter.default_guidance_scale, "runs": []}
        spec = adapter.schedule()
        if kind == "eps":
            grids = {f"ddim eta={args.eta:g}": make_grid(spec, "ddim", args.eps_steps, eta=args.eta),
                     "ddim eta=0": make_grid(spec, "ddim", args.eps_steps, eta=0.0)}
        else:
            grids = {f"flow-dance noise={args.noise_level:g}": make_grid(spec, "flow-dance", args.flow_steps,
                                                                         noise_level=args.noise_level),
                     "flow-dance noise=0": make_grid(spec, "flow-dance", args.flow_steps, noise_level=0.0)}
        scales = args.guidance if args.guidance else [adapter.default_guidance_scale]
        for gname, grid in grids.items():
            for g in scales:
                t0 = time.time()
                traj = rollout(adapter, prompts, grid, guidance_scale=g,
                               generator=torch.Generator().manual_seed(args.seed), batch_size=100)
                dt = time.time() - t0
                _, info = align(traj.images, prompts, metadata)
                offgrid = offgrid_noise(traj.images)
                correct = info["correct"]
                per_digit = correct.view(10, -1).mean(1)
                run = {"sampler": gname, "steps": grid.num_steps, "guidance_scale": g,
                       "prompt_accuracy": correct.mean().item(),
                       "per_digit_accuracy": [round(v, 3) for v in per_digit.tolist()],
                       "rewards": _reward_stats(fns, traj.images, prompts, metadata),
                       "offgrid_noise": _stats(offgrid),
                       "noisy_fraction": (offgrid > NOISY).float().mean().item(),
                       "sampling_wall_time_s": dt}
                entry["runs"].append(run)
                print(f"tiny-{kind:4s} {gname:22s} g={g:<4g} accuracy {run['prompt_accuracy']:.3f}  "
                      f"worst digit {per_digit.min().item():.2f}  noisy {run['noisy_fraction']:.3f}  ({dt:.1f}s)",
                      flush=True)
                if args.grid:
                    _save_grid(traj.images, args.n_per_digit, f"{args.grid}_{kind}_{gname.split()[-1]}_g{g:g}.png")
        report["models"][kind] = entry

    _print_tables(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _save_grid(images: torch.Tensor, n_per_digit: int, path: str) -> None:
    from PIL import Image

    n = min(n_per_digit, 12)
    im = images[:, 0].view(10, n_per_digit, 16, 16)[:, :n]
    im = im.permute(0, 2, 1, 3).reshape(10 * 16, n * 16)
    Image.fromarray((im * 255).round().byte().numpy(), mode="L").resize((n * 48, 480), Image.NEAREST).save(path)


def _print_tables(report: dict) -> None:
    c = report["classifier"]["heldout"]
    print(f"\nclassifier: held-out accuracy {c['accuracy']:.4f} (n={c['n']}), "
          f"thickness R^2 {c['thickness_r2']:.3f}")
    print("\n| model | pretrain wall s | sampler | g | prompt acc | worst digit | noisy |")
    print("|---|---|---|---|---|---|---|")
    for kind, e in report["models"].items():
        w = "-" if e["pretrain_wall_time_s"] is None else f"{e['pretrain_wall_time_s']:.0f}"
        for r in e["runs"]:
            print(f"| tiny-{kind} | {w} | {r['sampler']} | {r['guidance_scale']:g} | "
                  f"{r['prompt_accuracy']:.3f} | {min(r['per_digit_accuracy']):.2f} | {r['noisy_fraction']:.3f} |")
    runs = [(k, r) for k, e in report["models"].items() for r in e["runs"]
            if r["guidance_scale"] == e["default_guidance_scale"]] or \
           [(k, r) for k, e in report["models"].items() for r in e["runs"]]
    print("\nrewards at each model's default guidance scale (mean ± std):\n")
    print("| reward | real held-out | " + " | ".join(f"tiny-{k} {r['sampler']}" for k, r in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for name in REWARDS:
        real = report["real_heldout_rewards"][name]
        cells = [f"{r['rewards'][name]['mean']:.4f} ± {r['rewards'][name]['std']:.4f}" for _, r in runs]
        print(f"| {name} | {real['mean']:.4f} ± {real['std']:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
