"""What recomputing the old log-probs costs (train.old_logprobs: recompute).

For each algorithm, a few epochs with the old log-probs from the rollout and a few
with them recomputed by the training forward in the training layout; prints the
recompute pass's seconds per epoch as a ratio to the training phase without it
(target: the training phase with recompute at most 1.35x the one without), and the
rollout's own mismatch (max |log rho| before the first update).

    python benchmarks/recompute_cost.py --config config/tiny.yaml --model-dir results/tiny/base \\
        [--epochs 3] [--algorithms ddpo dancegrpo] [--json out.json]

Without --model-dir it builds tiny randomly initialised models in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

DEFAULT = [("ddpo", "eps"), ("pcpo-ddpo", "eps"), ("dancegrpo", "flow"), ("flow_grpo", "flow")]


def measure(cfg_path: str, model_dir: Path, algorithm: str, family: str, epochs: int, out: Path) -> dict:
    from pcpo.config import load_config
    from pcpo.trainer import Trainer

    res = {"algorithm": algorithm, "model": family}
    for mode in ("rollout", "recompute"):
        cfg = load_config(cfg_path, {"model": {"kind": f"tiny-{family}", "path": str(model_dir / family)},
                                     "reward": {"name": "jpeg_incompressibility", "options": {}},
                                     "train": {"old_logprobs": mode, "epochs": epochs}})
        tr = Trainer(cfg, algorithm, 0, out / f"{algorithm}-{mode}", progress=False)
        rows = [tr.epoch(e)[0] for e in range(epochs)]
        rows = rows[1:] if len(rows) > 1 else rows  # the first epoch warms up
        train = sum(r["time_train"] - r["time_recompute"] for r in rows) / len(rows)
        rec = sum(r["time_recompute"] for r in rows) / len(rows)
        res[f"{mode}_train_s"] = train
        if mode == "recompute":
            res["recompute_s"] = rec
            res["train_with_recompute_over_without"] = (train + rec) / res["rollout_train_s"]
            res["rollout_mismatch_max"] = max(r["rollout_mismatch_max"] for r in rows)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/tiny.yaml")
    ap.add_argument("--model-dir", help="folder with eps/ and flow/ tiny models (default: random ones)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--algorithms", nargs="*", help="NAME:eps|flow (default: " +
                    " ".join(f"{a}:{m}" for a, m in DEFAULT) + ")")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = [tuple(a.split(":")) for a in args.algorithms] if args.algorithms else DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else tmp / "models"
        if not args.model_dir:
            from pcpo.models.tiny import build_random_tiny

            for fam in ("eps", "flow"):
                build_random_tiny(fam, model_dir / fam, seed=0)
        results = [measure(args.config, model_dir, a, m, args.epochs, tmp / "runs") for a, m in cases]
    print(f"{'algorithm':<18} {'model':<5} {'train s':>8} {'recompute s':>12} {'ratio':>6} {'rollout mismatch':>17}")
    for r in results:
        print(f"{r['algorithm']:<18} {r['model']:<5} {r['rollout_train_s']:>8.2f} {r['recompute_s']:>12.2f} "
              f"{r['train_with_recompute_over_without']:>6.2f} {r['rollout_mismatch_max']:>17.3e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
