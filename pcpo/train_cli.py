"""``pcpo train`` and ``pcpo algorithms``."""
from __future__ import annotations

import json

import yaml


def parse_sets(items: list[str] | None) -> dict:
    """``--set train.epochs=3`` -> nested dict (values parsed as YAML)."""
    from pcpo.config import ConfigError, deep_merge

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set: expected KEY=VALUE (for example train.epochs=3), got {item!r}")
        key, val = item.split("=", 1)
        node: dict = {}
        cur = node
        parts = key.split(".")
        for p in parts[:-1]:
            cur[p] = {}
            cur = cur[p]
        try:
            cur[parts[-1]] = yaml.safe_load(val)
        except yaml.YAMLError as e:
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--set {key}: the value {val!r} is not valid YAML ({what}); quote it "
                              f"(--set '{key}=\"...\"') or fix the brackets") from None
        out = deep_merge(out, node)
    return out


def _train(args) -> int:
    from pcpo.config import load_config
    from pcpo.trainer import RunStopped, Trainer, TrainingError

    cfg = load_config(args.config, parse_sets(args.set))
    try:
        trainer = Trainer(cfg, args.algorithm, args.seed, args.out, progress=not args.no_progress)
        trainer.run()
    except KeyError as e:
        from pcpo.config import ConfigError

        raise ConfigError(e.args[0]) from e
    except TrainingError as e:
        import sys

        print(f"pcpo train: training stopped: {e}", file=sys.stderr)
        return 3
    except RunStopped as e:  # SIGTERM/SIGINT: the trainer logged where a rerun resumes
        return e.code
    return 0


def _algorithms(args) -> int:
    from pcpo.algorithms import algorithm_names, get_algorithm

    if args.show:
        import difflib

        from pcpo.cli import UserError
        from pcpo.recipes import render_card

        names = algorithm_names()
        if args.show not in names:
            close = difflib.get_close_matches(args.show, names, n=4, cutoff=0.5) or \
                [n for n in names if args.show.lower() in n.lower()][:4]
            raise UserError(f"--show: unknown algorithm {args.show!r}; "
                            f"{'did you mean ' + ', '.join(close) + '? ' if close else ''}`pcpo algorithms` lists all")

        print(render_card(args.show), end="")
        return 0
    if args.write_docs:
        from pcpo.recipes import write_docs

        for p in write_docs(args.write_docs):
            print(f"wrote {p}")
        return 0

    items = []
    for n in algorithm_names():
        fw = get_algorithm(n)
        items.append({"name": n, **fw.summary()})
    if args.json:
        print(json.dumps(items, indent=1))
        return 0
    print(f"{'name':<26} {'samplers':<28} {'advantage':<11} {'objective':<20} credit")
    for it in items:
        s = ",".join(f"{k}:{v}" for k, v in it["samplers"].items())
        print(f"{it['name']:<26} {s:<28} {it['advantage']:<11} {it['objective'] + '/' + it['objective_form']:<20} "
              f"{'proportional' if it['proportional'] else 'native'}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one algorithm with one seed")
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--algorithm", required=True, help="e.g. ddpo, pcpo-ddpo, pcpo-base-ddpo (see pcpo algorithms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder (resumes from its last checkpoint if present)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)
    q = sub.add_parser("algorithms", help="list registered algorithms (baselines and their PCPO variants)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--show", metavar="NAME", help="print the recipe card of one algorithm: every setting against "
                   "its reference code, with file and function")
    q.add_argument("--write-docs", metavar="DIR", help="write the recipe cards of every cited baseline as Markdown "
                   "(docs/recipes is the committed copy)")
    q.set_defaults(func=_algorithms)
