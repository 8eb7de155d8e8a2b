"""Implicit reward guidance on the tiny world: reward and FID of samples at several
lambda for one fine-tuned checkpoint (docs/method.md §5).

    python benchmarks/irg_experiment.py --results results/tiny \
        --checkpoint results/tiny/runs/eps/digit_alignment/pcpo-ddpo/seed0/checkpoints/epoch_000007 \
        --out results/reference/tiny/irg.csv

lambda = 0 is the base model and lambda = 1 the fine-tuned one (bit for bit);
lambda > 1 extrapolates along the implicit reward direction.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="results/<experiment> of a finished run (config.yaml inside)")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--lambdas", nargs="*", type=float, default=[0.0, 0.5, 1.0, 1.5, 2.0])
    ap.add_argument("--n-per-prompt", type=int, default=4)
    ap.add_argument("--prompts-per-digit", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    res = Path(args.results)
    cfg = res / "config.yaml"
    work = Path(args.out).parent / "irg_work"
    rows = []
    for lam in args.lambdas:
        d = work / f"lambda_{lam:g}"
        pcpo = [sys.executable, "-m", "pcpo.cli"]
        subprocess.run(pcpo + ["sample", "--config", str(cfg), "--checkpoint", args.checkpoint, "--irg-scale", str(lam),
                               "--out", str(d), "--n-per-prompt", str(args.n_per_prompt), "--prompts-per-digit",
                               str(args.prompts_per_digit), "--deterministic", "--no-progress"], check=True)
        subprocess.run(pcpo + ["evaluate", "--config", str(cfg), "--samples", str(d), "--out", str(d) + ".json",
                               "--metric", "reward", "--metric", "fid", "--metric", "kid", "--metric", "diversity_inception"],
                       check=True)
        m = pd.read_json(str(d) + ".json", typ="series")["metrics"]
        row = {"lambda": lam}
        for name, v in m.items():
            row[name] = v["value"]
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    from evaluation.report import to_markdown

    Path(args.out).with_suffix(".md").write_text(
        f"IRG of {args.checkpoint} against the base model (deterministic sampler)\n\n" + to_markdown(df))
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
