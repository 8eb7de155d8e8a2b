"""Which difference between the rollout's forward pass and the training forward pass
moves the prediction?  A bisection of the first-inner-step log-ratio check.

    python benchmarks/forward_consistency.py --model sd15|flux --scale real|tiny [--json FILE]

The trainer scores each stored transition twice: once while sampling (``rollout``:
model in ``eval()``, ``torch.no_grad()``, all rows of a micro-batch at one timestep)
and once at the first inner step of the update (``train()``, autograd on, gradient
checkpointing, rows at different timesteps).  Both must give the same prediction,
otherwise ``|log ratio|`` at the first inner step is not 0 and the trainer stops
(tolerance ``train.logratio_tolerance``, 1e-4).  On an H200 in bf16 the real-size
SD1.5 UNet failed this check (|log ratio| about 0.1) while FLUX passed with exactly 0
(``benchmarks/results/gpu_check_h200_2026-11-27.log``).

This script loads the same random-weight pipeline as ``fullscale_epoch.py`` through a
real ``Trainer`` (same dtype, LoRA, gradient checkpointing, accelerate wrapping),
fixes one micro-batch of inputs (states, timesteps, prompts, guidance) and computes
the guided prediction under the rollout's conditions (the reference) and under each
variant below, changing one thing at a time:

* ``train_mode``          ``train()`` instead of ``eval()``, still no autograd
* ``autograd``            ``train()`` + autograd, gradient checkpointing off
* ``training``            ``train()`` + autograd + gradient checkpointing: what the update does
* ``training_math_sdpa``  ``training`` with the math SDPA kernel, reference also with math SDPA
* ``training_no_cudnn``   ``training`` with cuDNN off, reference also with cuDNN off
* ``batch_double``        the reference's conditions, batch of 2x the rows (rows duplicated)
* ``batch_single``        the reference's conditions, one row at a time
* ``mixed_timesteps``     the reference's conditions, each row at its own timestep (compared
                          with that row computed in a batch all at that timestep)

For each it prints the max |prediction difference| and the resulting max |log ratio|
(the grid's own step, the reference's sample re-scored with the variant's prediction)
over the steps checked.  On a CPU everything should be exactly 0; on a GPU the first
non-zero line names the culprit.  It runs in well under a minute on one H100 at real
size; ``benchmarks/gpu_check.sh`` runs it after the SD1.5 epoch benchmark.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import fullscale_epoch as fe  # noqa: E402

VARIANTS = ("train_mode", "autograd", "training", "training_math_sdpa", "training_no_cudnn", "batch_double",
            "batch_single", "mixed_timesteps")


def _math_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


@contextlib.contextmanager
def _no_cudnn():
    old = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = old


class Probe:
    """One fixed micro-batch and the trainer's model, grid and guidance."""

    def __init__(self, trainer, steps: list[int], seed: int = 0):
        self.tr = trainer
        m = trainer.model
        self.m, self.den, self.grid = m, trainer.acc.unwrap_model(m.denoiser), trainer.grid
        self.dev = trainer.acc.device
        self.g = trainer.st.guidance_scale
        n = trainer.cfg.train.train_batch_size
        gen = torch.Generator().manual_seed(seed)
        self.n = n
        self.steps = steps
        self.x = torch.randn((n, *m.latent_shape()), generator=gen)
        self.z = torch.randn((len(steps), n, *m.latent_shape()), generator=gen)
        texts = [fe.PROMPTS[i % len(fe.PROMPTS)] for i in range(n)]
        with torch.no_grad():
            self.cond = {k: v.to(self.dev) for k, v in m.encode_prompts(texts).items()}
            self.unc = {k: v.to(self.dev) for k, v in m.null_cond(n).items()} if self.g != 1.0 else None

    def _rows(self, d, idx):
        return {k: v[idx] for k, v in d.items()} if d is not None else None

    def predict(self, step_idx: torch.Tensor, rows: torch.Tensor, *, train: bool, grad: bool,
                checkpointing: bool) -> torch.Tensor:
        """Guided prediction for ``rows`` (indices into the micro-batch) at grid steps ``step_idx``."""
        den = self.den
        den.train(train)
        has = hasattr(den, "enable_gradient_checkpointing")
        if has:
            den.enable_gradient_checkpointing() if checkpointing else den.disable_gradient_checkpointing()
        x = self.x[rows].to(self.dev)
        tt = self.grid.model_time(step_idx).to(self.dev)
        with torch.set_grad_enabled(grad):
            out = self.m.predict_guided(x.to(self.m.dtype), tt, self._rows(self.cond, rows),
                                        self._rows(self.unc, rows), self.g)
        return out.detach().float().cpu()

    def rollout_pred(self, i: int, rows=None) -> torch.Tensor:
        rows = torch.arange(self.n) if rows is None else rows
        return self.predict(torch.full((len(rows),), i, dtype=torch.long), rows, train=False, grad=False,
                            checkpointing=False)

    def log_ratio(self, k: int, steps: torch.Tensor, ref: torch.Tensor, var: torch.Tensor) -> float:
        """max |log ratio| of the reference's sampled transition re-scored with ``var`` (row r at grid
        step ``steps[r]``)."""
        idx = steps.long()
        x = self.x.float()
        o_ref = self.grid.step(idx, ref, x, noise=self.z[k])
        o_var = self.grid.step(idx, var, x, prev_sample=o_ref.prev_sample)
        return float((o_var.log_prob - o_ref.log_prob).abs().max())


def run_probe(probe: Probe) -> list[dict]:
    n = probe.n
    rows = torch.arange(n)
    out = []
    for name in VARIANTS:
        max_d, max_lr = 0.0, 0.0
        for k, i in enumerate(probe.steps):
            full_i = torch.full((n,), i, dtype=torch.long)
            if name in ("training_math_sdpa", "training_no_cudnn"):
                ctx = _math_sdpa if name == "training_math_sdpa" else _no_cudnn
                with ctx():
                    ref = probe.rollout_pred(i)
                with ctx():
                    var = probe.predict(full_i, rows, train=True, grad=True, checkpointing=True)
            else:
                ref = probe.rollout_pred(i)
                if name == "train_mode":
                    var = probe.predict(full_i, rows, train=True, grad=False, checkpointing=False)
                elif name == "autograd":
                    var = probe.predict(full_i, rows, train=True, grad=True, checkpointing=False)
                elif name == "training":
                    var = probe.predict(full_i, rows, train=True, grad=True, checkpointing=True)
                elif name == "batch_double":
                    var = probe.predict(torch.full((2 * n,), i, dtype=torch.long), torch.cat([rows, rows]),
                                        train=False, grad=False, checkpointing=False)[:n]
                elif name == "batch_single":
                    var = torch.cat([probe.rollout_pred(i, rows[r:r + 1]) for r in range(n)])
                elif name == "mixed_timesteps":
                    # row r at step steps[(k + r) % len]; its reference: the whole batch at that step
                    own = torch.tensor([probe.steps[(k + r) % len(probe.steps)] for r in range(n)])
                    var = probe.predict(own, rows, train=False, grad=False, checkpointing=False)
                    ref = torch.stack([probe.rollout_pred(int(own[r]))[r] for r in range(n)])
                    full_i = own  # each row scored at its own step
                else:  # pragma: no cover
                    raise ValueError(name)
            max_d = max(max_d, float((var - ref).abs().max()))
            max_lr = max(max_lr, probe.log_ratio(k, full_i, ref, var))
        out.append({"variant": name, "max_abs_pred_diff": max_d, "max_abs_log_ratio": max_lr})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["sd15", "flux"], default="sd15")
    ap.add_argument("--scale", choices=["real", "tiny"], default="real")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32", "float16"], default="auto")
    ap.add_argument("--out", help="work folder (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.scale == "real" and device != "cuda":
        ap.error("--scale real needs a CUDA device (use --scale tiny on a CPU)")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if device == "cpu":
        torch.set_num_threads(1)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pcpo-consistency-"))
    t0 = time.perf_counter()
    spec = fe.make_spec(args.model, args.scale)
    fe.install_random_init_loader()
    fe.register_brightness_reward()
    folder = fe.build_pipeline(args.model, args.scale, out / f"pipeline_{args.model}_{args.scale}", device, dtype)
    cfg = fe.make_config(spec, folder, device, dtype, logratio_tolerance=1e30, epochs=1)
    from pcpo.trainer import Trainer

    tr = Trainer(cfg, "ddpo" if args.model == "sd15" else "dancegrpo", 0, out / "run", progress=False)
    T = tr.grid.num_steps
    steps = sorted({0, T // 2, T - 1})
    probe = Probe(tr, steps)
    res = run_probe(probe)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    summary = {"model": args.model, "scale": args.scale, "device": name, "dtype": dtype, "torch": torch.__version__,
               "steps_checked": steps, "micro_batch": probe.n, "guidance_scale": probe.g, "results": res,
               "seconds": time.perf_counter() - t0}
    for r in res:
        print(f"CONSISTENCY {args.model} {r['variant']:<20s} max|d pred| {r['max_abs_pred_diff']:.3e}  "
              f"max|log ratio| {r['max_abs_log_ratio']:.3e}", flush=True)
    line = json.dumps(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
