"""The ``pcpo`` command.

Subcommands live in their own modules and register themselves through an
``add_parser(subparsers)`` function; heavy imports happen only inside the
chosen subcommand, so ``pcpo --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

# module -> optional: subcommand modules, each with add_parser(subparsers)
SUBCOMMAND_MODULES = [
    "pcpo.cli",  # credit (below)
    "pcpo.tiny.cli",  # pretrain
    "pcpo.train_cli",  # train, algorithms
    "pcpo.sample_cli",  # sample
    "evaluation.cli",  # evaluate, aggregate, report
    "pcpo.data.cli",  # data fetch, data list
]


class UserError(Exception):
    """An error caused by input the user can fix; printed without a traceback."""


# ---------------------------------------------------------------------------
# pcpo credit
# ---------------------------------------------------------------------------

def _credit(args) -> int:
    import torch

    from pcpo.credit import credit_table, plan_credit, sd15_schedule
    from pcpo.models.base import ScheduleSpec

    if args.sampler == "ddim":
        if args.scheduler != "sd15":
            raise UserError(f"--scheduler: only 'sd15' is built in for the ddim sampler, got {args.scheduler!r}")
        spec = sd15_schedule()
        plan = plan_credit(spec, "ddim", args.steps, eta=args.eta, proportional=True,
                           w_star=args.w_star if args.w_star == "auto" else float(args.w_star),
                           sigma_root=args.sigma_root)
    else:
        spec = ScheduleSpec(family="flow", shift=args.shift)
        plan = plan_credit(spec, args.sampler, args.steps, noise_level=args.noise_level, proportional=True)
    table = credit_table(plan)
    if args.plot:
        plot_credit(table, args.plot)
    if args.json:
        print(json.dumps(table))
        return 0
    head = f"{'step':>4} {'timestep':>9} {'sigma':>9} {'sigma~':>9} {'native w':>9} {'pcpo w':>9} {'ratio':>7}"
    print(f"# {table['sampler']}, {table['steps']} steps; native sum {table['native_sum']:.4f} "
          f"(mean {table['native_mean']:.4f}), pcpo sum {table['pcpo_sum']:.4f}")
    print(head)
    for i in range(table["steps"]):
        t = table["timesteps"][i]
        ts = f"{int(t):>9d}" if args.sampler == "ddim" else f"{t:>9.4f}"
        print(f"{i:>4d} {ts} {table['sigma_native'][i]:>9.4f} {table['sigma_sampling'][i]:>9.4f} "
              f"{table['native'][i]:>9.4f} {table['pcpo'][i]:>9.4f} {table['ratio'][i]:>7.3f}")
    del torch
    return 0


def plot_credit(table: dict, path: str) -> None:
    """Native vs PCPO weight per step (the paper's Fig. 2), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pcpo.utils import atomic_path

    steps = list(range(table["steps"]))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, table["native"], "o-", ms=3, label="native w(t)")
    ax.plot(steps, table["pcpo"], "s-", ms=3, label="PCPO (proportional)")
    ax.set_xlabel("sampling step (noise \u2192 data)")
    ax.set_ylabel("credit weight")
    ax.set_title(f"Per-step credit, {table['sampler']}, {table['steps']} steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("credit", help="per-step credit weights of a sampler: native vs PCPO")
    p.add_argument("--sampler", required=True, choices=["ddim", "flow-dance", "flow-grpo"])
    p.add_argument("--scheduler", default="sd15", help="ddim only: the noise schedule ('sd15')")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--eta", type=float, default=1.0, help="ddim: DDIM eta")
    p.add_argument("--noise-level", type=float, default=0.7, help="flow: eta (DanceGRPO) or a (Flow-GRPO)")
    p.add_argument("--shift", type=float, default=1.0, help="flow: time-grid shift k")
    p.add_argument("--w-star", default="4.5", help="ddim PCPO: the reshaped sampler's constant w* (a number or auto)")
    p.add_argument("--sigma-root", default="paper", choices=["paper", "exact"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw native vs PCPO weights per step")
    p.set_defaults(func=_credit)


# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcpo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in SUBCOMMAND_MODULES:
        try:
            m = sys.modules[__name__] if mod == "pcpo.cli" else importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"pcpo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a missing model folder, checkpoint or weights file: the loaders' messages name the
        # field and the fix (pcpo.models.tiny.read_model_json, pcpo.models.sd.ModelLoadError)
        msg = str(e).strip()
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "ModelLoadError":
            print(f"pcpo {args.command}: error: {msg}", file=sys.stderr)
            return 2
        raise
    except (ValueError, KeyError) as e:
        from pcpo.config import ConfigError

        if isinstance(e, ConfigError) or getattr(e, "user_facing", False):
            msg = e.args[0] if e.args else str(e)
            print(f"pcpo {args.command}: error: {msg}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
