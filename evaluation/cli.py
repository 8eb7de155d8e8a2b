"""``pcpo evaluate``, ``pcpo aggregate`` and ``pcpo report``."""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

log = logging.getLogger("pcpo.evaluate")


def _load_yaml(path: str | None) -> dict:
    if not path:
        return {}
    from pcpo.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file {path!r}")
    return yaml.safe_load(p.read_text()) or {}


def _aggregate(args) -> int:
    from evaluation.aggregate import aggregate

    paths = aggregate(args.results, _load_yaml(args.config))
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0


def _report(args) -> int:
    from evaluation.report import build_report

    index = build_report(args.results, _load_yaml(args.config))
    print(f"report: {index}")
    return 0


def resolve_device(device: str | None) -> str:
    """``auto`` (default): the job's GPU when torch sees one, else the CPU; or the device named."""
    import torch

    from pcpo.cli import UserError

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is visible to this process")
    return str(device)


def _evaluate(args) -> int:
    from evaluation.evaluate import evaluate_folder
    from pcpo.utils import atomic_write_json

    cfg = _load_yaml(args.config)
    device = resolve_device(args.device)
    log.info("evaluating %s on %s", args.samples, device)
    result = evaluate_folder(args.samples, cfg, rewards=args.reward, metrics=args.metric,
                             batch_size=args.batch_size, device=device)
    atomic_write_json(args.out, result)
    for name, m in result["metrics"].items():
        log.info("%s = %.5g  [%s]", name, m["value"], m.get("network", ""))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a folder of samples -> one JSON")
    p.add_argument("--samples", required=True, help="a folder written by pcpo sample (manifest.json + images/)")
    p.add_argument("--config", help="experiment YAML (reward options, reference data)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--reward", action="append", help="reward to evaluate (repeatable); default: the config's")
    p.add_argument("--metric", action="append", help="reward, fid, kid, is, diversity, diversity_inception, "
                   "coverage, fd_dino (repeatable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="where the metric networks run: auto (the GPU when there is "
                   "one, else cpu), cpu, cuda, cuda:N")
    p.set_defaults(func=_evaluate)
    a = sub.add_parser("aggregate", help="collect all runs' logs and metrics into tidy tables")
    a.add_argument("--results", required=True, help="results/<experiment>")
    a.add_argument("--config", help="experiment YAML")
    a.set_defaults(func=_aggregate)
    r = sub.add_parser("report", help="tables, plots and image grids from the aggregated tables")
    r.add_argument("--results", required=True, help="results/<experiment>")
    r.add_argument("--config", help="experiment YAML")
    r.set_defaults(func=_report)
