"""Seconds per epoch per algorithm, the trainer's overhead, and peak memory.

Overhead = epoch wall time / time of the same model calls alone: the same
number of guided forward passes (rollout), forward+backward passes (update)
and, with a KL term, reference forwards, at the same batch sizes, on random
inputs, with no sampler, reward, advantage, logging or optimizer work around
them.  Target: <= 1.15.

    python benchmarks/trainer_overhead.py [--model-dir DIR] [--epochs 3] [--algorithms ...]

Without --model-dir it builds tiny randomly initialised models (the default
tiny-world sizes) in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def model_only_time(trainer, epochs_measured: int = 1, *, prompts: list[str] | None = None,
                    full_scale: bool = False) -> float:
    """Seconds per epoch of the model calls an epoch of ``trainer`` makes, done alone on random inputs.

    The rollout's guided forwards in its micro-batches; per training micro-batch, K
    forward+backward passes and, with a KL term, K reference forwards.  With
    ``full_scale`` also what a full-scale epoch spends in the other networks: encoding
    the prompts (and the empty prompt) and the VAE decode of the final latents.
    """
    cfg = trainer.cfg
    m = trainer.model
    dev = trainer.acc.device
    t = cfg.train
    B = t.prompts_per_epoch * t.group_size
    T = trainer.grid.num_steps
    K = trainer.trained_steps()
    g = trainer.st.guidance_scale
    kl = trainer.st.kl_beta > 0
    shape = m.latent_shape()
    mdtype = m.dtype
    prompts = prompts or ["a handwritten digit one"]
    texts = [prompts[i % len(prompts)] for i in range(B)]

    def encode():
        with torch.no_grad():
            cond = {k: v.to(dev) for k, v in m.encode_prompts(texts).items()}
            unc = {k: v.to(dev) for k, v in m.null_cond(B).items()} if g != 1.0 else None
        return cond, unc

    def rows(d, s, n):
        return {k: v[s:s + n] for k, v in d.items()} if d else None

    cond, unc = encode()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(epochs_measured):
        den = m.denoiser
        den.eval()
        with torch.no_grad():  # rollout: T guided forwards over the batch
            if full_scale:
                cond, unc = encode()
            bs = cfg.sampling.batch_size
            for s in range(0, B, bs):
                n = min(bs, B - s)
                x = torch.randn((n, *shape), device=dev, dtype=mdtype)
                for i in range(T):
                    tt = trainer.grid.model_time(torch.full((n,), i)).to(dev)
                    m.predict_guided(x, tt, rows(cond, s, n), rows(unc, s, n), g)
                if full_scale:
                    m.decode(x)
        den.train()
        for _ in range(t.inner_epochs):  # update: K forward+backward per micro-batch
            mb = t.train_batch_size
            for s in range(0, B, mb):
                n = min(mb, B - s)
                for _j in range(K):
                    x = torch.randn((n, *shape), device=dev, dtype=mdtype)
                    tt = trainer.grid.model_time(torch.randint(T, (n,))).to(dev)
                    out = m.predict_guided(x, tt, rows(cond, s, n), rows(unc, s, n), g)
                    out.float().square().mean().backward()
                    if kl:
                        with torch.no_grad():
                            trainer._ref_prediction(x, tt, rows(cond, s, n), rows(unc, s, n))
        trainer.opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / epochs_measured


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", help="folder with eps/ and flow/ tiny models (default: random, built here)")
    ap.add_argument("--config", default="config/tiny.yaml")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--algorithms", nargs="*", metavar="ALGORITHM:eps|flow",
                    default=["ddpo:eps", "pcpo-ddpo:eps", "dancegrpo:flow", "pcpo-dancegrpo:flow", "flow_grpo:flow",
                             "pcpo-flow_grpo:flow"])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from pcpo.config import load_config
    from pcpo.models.tiny import build_random_tiny
    from pcpo.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="pcpo-bench-"))
    if args.model_dir:
        dirs = {"eps": Path(args.model_dir) / "eps", "flow": Path(args.model_dir) / "flow"}
    else:
        dirs = {k: build_random_tiny(k, tmp / k, seed=0, size="default") for k in ("eps", "flow")}
    results = []
    print(f"{'algorithm':<22} {'model':<5} {'s/epoch':>8} {'model-only s':>12} {'overhead':>8} {'peak MB':>8}")
    for item in args.algorithms:
        alg, _, fam = item.partition(":")
        if fam not in dirs:
            ap.error(f"--algorithms: {item!r} names no tiny model; write ALGORITHM:eps or ALGORITHM:flow "
                     "(for example pcpo-ddpo:eps dancegrpo:flow)")
        cfg = load_config(args.config, {
            "model": {"kind": f"tiny-{fam}", "path": str(dirs[fam])},
            "reward": {"name": "jpeg_incompressibility", "options": {}},
            "train": {"epochs": args.epochs + 1, "checkpoint_every": 1000},
        })
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        tr = Trainer(cfg, alg, 0, tmp / f"run_{alg}_{fam}", progress=False)
        tr.run()
        import pandas as pd

        d = pd.read_csv(tmp / f"run_{alg}_{fam}" / "metrics.csv")
        epoch_s = float(d["time_epoch"].iloc[1:].mean())  # first epoch includes warm-up
        model_s = model_only_time(tr, args.epochs)
        peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        r = {"algorithm": alg, "model": fam, "seconds_per_epoch": epoch_s, "model_only_seconds": model_s,
             "overhead": epoch_s / model_s, "peak_mb": peak,
             "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
        results.append(r)
        print(f"{alg:<22} {fam:<5} {epoch_s:>8.2f} {model_s:>12.2f} {r['overhead']:>8.3f} {peak:>8.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
