"""Images/second of the evaluation metrics on this machine.

    python benchmarks/eval_throughput.py [--n 64] [--size 32] [--batch-size 16] [--threads 0] [--device cpu]

Workload: N random smooth 32x32 RGB images (upsampled to 299 inside the
Inception network), a second set of N for the FID/KID reference, 8 prompt
groups for diversity and a tiny CNN classifier stub for IS.  Each metric is
timed once after a warm-up call on a few images (oneDNN primitive creation),
with reference caching disabled so every timed call does its full work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluation import inception as inc  # noqa: E402
from evaluation import metrics as M  # noqa: E402


class TinyClassifierStub(torch.nn.Module):
    """Stand-in for the tiny-world digit classifier: random 2-conv CNN, 10 classes."""

    name = "tiny-classifier-stub (random init)"

    def __init__(self, channels=3, k=10):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(32, k),
        )

    def forward(self, x):
        return self.net(x)


def smooth_images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    n, bs, dev = args.n, args.batch_size, args.device
    fake, real = smooth_images(n, args.size, 1), smooth_images(n, args.size, 2)
    groups = [i % 8 for i in range(n)]
    clf = TinyClassifierStub()

    t0, _ = timed(inc.feature_extractor_weights_path)
    desc = inc.describe_network()
    M.inception_features(fake[:bs], batch_size=bs, device=dev)  # warm-up (weights load, oneDNN primitives)
    M.diversity(fake[:4], [0, 0, 1, 1], batch_size=bs, device=dev)

    rows = []
    dt, _ = timed(lambda: M.inception_features(fake, batch_size=bs, device=dev))
    rows.append(("FID features (pool3, 1 set)", n, dt))
    dt, r = timed(lambda: M.fid(fake, real, batch_size=bs, device=dev, cache=False))
    rows.append(("FID (fake+real features)", 2 * n, dt))
    dt, r = timed(lambda: M.kid(fake, real, batch_size=bs, device=dev, cache=False))
    rows.append(("KID (fake+real features, 100 subsets)", 2 * n, dt))
    fr = M.inception_features(real, batch_size=bs, device=dev)
    ff = M.inception_features(fake, batch_size=bs, device=dev)
    dt, _ = timed(lambda: (M.fid_from_features(ff, fr), M.kid_from_features(ff, fr)))
    rows.append(("FID+KID statistics only (cached feats)", 2 * n, dt))
    g = torch.Generator().manual_seed(0)
    big1 = torch.randn(3000, 2048, generator=g).abs()
    big2 = (torch.randn(3000, 2048, generator=g) * 1.1).abs()
    dt, _ = timed(lambda: M.fid_from_features(big1, big2))
    rows.append(("FID statistics only, 3000 vs 3000 synthetic feats", 6000, dt))
    dt, _ = timed(lambda: M.inception_score(fake, clf.to(dev), batch_size=bs, device=dev))
    rows.append(("IS (tiny classifier stub)", n, dt))
    dt, d = timed(lambda: M.diversity(fake, groups, batch_size=bs, device=dev))
    rows.append((f"diversity ({d['network']}, 8 groups)", n, dt))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load avg(1m) {load:.2f}, images {n}x3x{args.size}x{args.size}, batch {bs}")
    print(f"network: {desc['network']}\nweights: {desc['weights']} (sha256 {desc['sha256'][:16]}..., "
          f"real logits: {desc['real_logits']}); weights lookup {t0:.2f}s")
    w = max(len(r[0]) for r in rows)
    print(f"{'metric'.ljust(w)}  {'images':>6}  {'seconds':>8}  {'img/s':>7}")
    for name, k, dt in rows:
        print(f"{name.ljust(w)}  {k:6d}  {dt:8.2f}  {k / dt:7.2f}")


if __name__ == "__main__":
    main()
