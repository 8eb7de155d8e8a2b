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

#: the hub model each kind stands for when `pcpo credit --model-kind` names no --model-path
CREDIT_DEFAULT_PATHS = {"sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd3": "stabilityai/stable-diffusion-3.5-medium",
                        "flux": "black-forest-labs/FLUX.1-dev"}


def run_credit_plan(cfg, algorithm: str):
    """``(framework, plan, scheduler source)`` of ``algorithm`` under ``cfg`` through the trainer's own
    path (:func:`pcpo.credit.plan_for_run`), with the schedule from the scheduler config alone."""
    from pcpo.credit import config_schedule, plan_for_run
    from pcpo.trainer import RunSettings, resolve_framework

    spec, src = config_schedule(cfg)
    fw = resolve_framework(cfg, algorithm, spec.family)
    st = RunSettings.build(cfg, fw, spec.family, 1.0)
    fw, plan = plan_for_run(cfg, fw, st, spec, cfg.model.kind)
    return fw, plan, src


def _credit_config(args):
    """The config `pcpo credit` plans for: --config (+ --set), or one built from --model-kind."""
    from pcpo.config import load_config
    from pcpo.train_cli import parse_sets

    sets = parse_sets(args.set or [])
    if args.config:
        return load_config(args.config, sets), args.config
    kind = args.model_kind
    path = args.model_path or CREDIT_DEFAULT_PATHS.get(kind)
    if path is None:
        raise UserError(f"--model-path: model kind {kind!r} has no default model; name its folder")
    opts = {}
    if args.time_grid:
        if kind != "sd3":
            raise UserError(f"--time-grid: only sd3 models have a choice of time grid, not {kind!r}")
        opts["time_grid"] = args.time_grid
    if args.shift is not None:
        opts["shift"] = args.shift
    raw = {"model": {"kind": kind, "path": path, "options": opts},
           "sampling": {"steps": args.steps, "eta": args.eta, "noise_level": args.noise_level}}
    from pcpo.config import deep_merge

    return load_config(None, deep_merge(raw, sets)), f"--model-kind {kind}"


def _default_algorithm(args) -> str:
    if args.algorithm:
        return args.algorithm
    if args.config:
        import yaml

        raw = yaml.safe_load(open(args.config)) or {}
        for m in raw.get("matrix") or []:
            for a in m.get("algorithms", []):
                if str(a).startswith("pcpo-"):
                    return a
    raise UserError("--algorithm: name the algorithm to plan for (e.g. pcpo-flow_grpo); the config's matrix "
                    "has no pcpo- algorithm")


def _credit(args) -> int:
    import torch

    from pcpo.credit import credit_table, plan_credit, plan_summary, sd15_schedule
    from pcpo.models.base import ScheduleSpec

    header = []
    if args.config or args.model_kind:
        if args.sampler:
            raise UserError("--sampler: give either --config / --model-kind (what a run trains with) or --sampler")
        if args.model_kind and args.steps is None:
            raise UserError("--steps: --model-kind needs the number of sampler steps")
        cfg, what = _credit_config(args)
        algorithm = _default_algorithm(args)
        fw, plan, src = run_credit_plan(cfg, algorithm)
        header = [f"# {algorithm} from {what}; scheduler config: {src}", f"# credit: {plan_summary(plan)}"]
    else:
        if not args.sampler or args.steps is None:
            raise UserError("--config, --model-kind or --sampler with --steps: say what to plan for")
        if args.sampler == "ddim":
            if args.scheduler != "sd15":
                raise UserError(f"--scheduler: only 'sd15' is built in for the ddim sampler, got {args.scheduler!r}")
            spec = sd15_schedule()
            plan = plan_credit(spec, "ddim", args.steps, eta=1.0 if args.eta is None else args.eta, proportional=True,
                               w_star=args.w_star if args.w_star == "auto" else float(args.w_star),
                               sigma_root=args.sigma_root)
        else:
            spec = ScheduleSpec(family="flow", shift=1.0 if args.shift is None else args.shift)
            plan = plan_credit(spec, args.sampler, args.steps, proportional=True,
                               noise_level=0.7 if args.noise_level is None else args.noise_level)
        header = [f"# uniform grid (not a model's pipeline grid): use --config or --model-kind for what a run "
                  f"trains with; credit: {plan_summary(plan)}"]
    table = credit_table(plan)
    if args.plot:
        plot_credit(table, args.plot)
    if args.json:
        print(json.dumps(table))
        return 0
    for line in header:
        print(line)
    head = f"{'step':>4} {'timestep':>9} {'sigma':>9} {'sigma~':>9} {'native w':>9} {'pcpo w':>9} {'ratio':>7}"
    print(f"# {table['sampler']}, {table['steps']} steps; native sum {table['native_sum']:.4f} "
          f"(mean {table['native_mean']:.4f}), pcpo sum {table['pcpo_sum']:.4f}")
    print(head)
    for i in range(table["steps"]):
        t = table["timesteps"][i]
        ts = f"{int(t):>9d}" if table["sampler"] == "ddim" else f"{t:>9.4f}"
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
    p = sub.add_parser("credit", help="per-step credit weights: what a run trains with (--config / --model-kind), "
                                      "or native vs PCPO on a uniform grid (--sampler)")
    p.add_argument("--config", help="an experiment file: print the credit `pcpo train --config FILE` uses")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (as pcpo train)")
    p.add_argument("--algorithm", help="with --config/--model-kind: the algorithm (default: the config's first pcpo-X)")
    p.add_argument("--model-kind", help="plan for a model kind (sd1, sd3, flux) from its scheduler config alone")
    p.add_argument("--model-path", help="with --model-kind: the model (default: the kind's reference hub model)")
    p.add_argument("--time-grid", choices=["pipeline", "uniform"], help="with --model-kind sd3: the time grid")
    p.add_argument("--sampler", choices=["ddim", "flow-dance", "flow-grpo"],
                   help="without a model: a uniform grid of this sampler")
    p.add_argument("--scheduler", default="sd15", help="ddim only: the noise schedule ('sd15')")
    p.add_argument("--steps", type=int)
    p.add_argument("--eta", type=float, default=None, help="ddim: DDIM eta (default: the framework's, or 1)")
    p.add_argument("--noise-level", type=float, default=None, help="flow: eta (DanceGRPO) or a (Flow-GRPO)")
    p.add_argument("--shift", type=float, default=None, help="flow: time-grid shift k")
    p.add_argument("--w-star", default="4.5", help="--sampler ddim: the reshaped sampler's constant w* (a number or auto)")
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
    # a log record that fails to format (seen from the hub client's retry warnings under load) must not print
    # a traceback over the command's one-line error; Python's documented production setting
    logging.raiseExceptions = bool(args.verbose)
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
        if isinstance(e, FileNotFoundError) or type(e).__name__ == "ModelLoadError" or getattr(e, "user_facing", False):
            print(f"pcpo {args.command}: error: {msg}", file=sys.stderr)
            return 2
        from pcpo.utils import disk_full

        if disk_full(e):  # a write outside the trainer's own handling (sample, evaluate ...)
            print(f"pcpo {args.command}: error: No space left on device while writing {e.filename or 'the output'}; "
                  "free space and rerun", file=sys.stderr)
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
    # `python -m pcpo.cli` runs this file as __main__, a second copy of the module: run the
    # importable pcpo.cli's main, so the UserError that subcommands import is the one caught
    from pcpo.cli import main as _main

    sys.exit(_main())
