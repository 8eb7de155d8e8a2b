"""``pcpo pretrain``: train a tiny-world base model or the tiny classifier.

    pcpo pretrain --model eps|flow|classifier --out DIR [--config FILE.yaml] [--seed N]

``--config`` reads the optional top-level ``pretrain:`` mapping of an
experiment YAML; its sub-mappings ``eps:``, ``flow:`` and ``classifier:``
override the defaults of :class:`~pcpo.tiny.pretrain.TinyPretrainConfig`
(eps/flow) and :class:`~pcpo.tiny.classifier.TinyClassifierConfig`::

    pretrain:
      eps:   {steps: 1500, guidance_scale: 3.0}
      flow:  {steps: 1500, flow_shift: 3.0}
      classifier: {epochs: 30}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SECTIONS = ("eps", "flow", "classifier")


class PretrainConfigError(ValueError):
    """A pretraining config problem; the message names the field."""

    user_facing = True


def read_pretrain_section(config_file: str | None, model: str) -> dict[str, Any]:
    """The ``pretrain.<model>`` mapping of a YAML file ({} when absent)."""
    if not config_file:
        return {}
    import yaml

    path = Path(config_file)
    if not path.is_file():
        raise PretrainConfigError(f"--config: no such file {config_file!r}")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise PretrainConfigError(f"{config_file}: expected a mapping at the top level")
    section = doc.get("pretrain") or {}
    if not isinstance(section, dict):
        raise PretrainConfigError(f"{config_file}: pretrain: expected a mapping")
    for k in section:
        if k not in SECTIONS:
            raise PretrainConfigError(f"{config_file}: pretrain.{k}: unknown section; known: {', '.join(SECTIONS)}")
    sub = section.get(model) or {}
    if not isinstance(sub, dict):
        raise PretrainConfigError(f"{config_file}: pretrain.{model}: expected a mapping")
    return dict(sub)


def _run(args) -> int:
    overrides = read_pretrain_section(args.config, args.model)
    if args.threads is not None:
        overrides["num_threads"] = args.threads
    if args.no_progress:
        overrides["progress"] = False
    try:
        if args.model == "classifier":
            from pcpo.tiny.classifier import TinyClassifierConfig, train_classifier

            cfg = TinyClassifierConfig.from_dict(overrides, where="pretrain.classifier")
        else:
            from pcpo.tiny.pretrain import TinyPretrainConfig

            cfg = TinyPretrainConfig.from_dict(overrides, where=f"pretrain.{args.model}", kind=args.model)
    except (TypeError, ValueError) as e:
        raise PretrainConfigError(str(e)) from e

    if args.model == "classifier":
        out = train_classifier(args.out, cfg, seed=args.seed)
        summary = json.loads((out / "config.json").read_text())["metrics"]
    else:
        from pcpo.tiny.pretrain import pretrain

        out = pretrain(args.model, args.out, cfg, seed=args.seed)
        log = json.loads((out / "pretrain_log.json").read_text())
        summary = {"wall_time_s": log["wall_time_s"], "final_loss": log["losses"][-1] if log["losses"] else None,
                   "unet_parameters": log["unet_parameters"]}
    print(json.dumps({"model": args.model, "out": str(out), "seed": args.seed, **summary}))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="train a tiny-world base model (eps, flow) or the tiny classifier",
                       description="Train a tiny-world base model (eps, flow) or the tiny classifier.")
    p.add_argument("--model", required=True, choices=["eps", "flow", "classifier"])
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced atomically)")
    p.add_argument("--config", metavar="FILE.yaml", help="experiment YAML; reads its pretrain.<model> mapping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the config's num_threads, 1; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
