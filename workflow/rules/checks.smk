# Checks of the config before any job is planned: each failure is one line (config_error).
# The trainer sections and the matrix are checked by the library's own validators, the ones
# `pcpo train` runs, so the workflow and the CLI cannot disagree on what is valid.
import sys
from pathlib import Path


def config_error(msg):
    """Stop before any work with one line naming the field and the fix (no traceback)."""
    print(f"config: {msg}", file=sys.stderr)
    raise SystemExit(1)


def check_schema(schema):
    """The workflow schema (Snakemake's validate, which also fills defaults), in one line."""
    from pcpo.launch import old_keys_message

    if isinstance(config.get("resources"), dict):
        msg = old_keys_message(config["resources"])
        if msg:
            config_error(msg)
    try:
        validate(config, schema)
    except Exception:
        import jsonschema
        import yaml

        with open(Path(workflow.basedir) / schema) as f:
            s = yaml.safe_load(f)
        err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(s).iter_errors(config))
        if err is None:
            raise
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err.absolute_path).replace(".[", "[")
        config_error(f"{where or 'top level'}: {err.message}")


def _is_main_process():
    """The Snakemake the user started (not the job-side one on a cluster node or a subprocess)."""
    from snakemake_interface_executor_plugins.settings import ExecMode

    return workflow.exec_mode == ExecMode.DEFAULT


def check_matrix():
    """Every run of the matrix as `pcpo train` would load it: its base model exists, its algorithm
    is known (registry, with baselines/ discovered), the trainer sections with the run's --set
    flags pass pcpo.config's loading and validation, and `algorithms:` overrides name fields
    of the framework (pcpo.trainer.resolve_framework)."""
    if not _is_main_process():
        return
    known = sorted(config["base_models"])
    for i, block in enumerate(config["matrix"]):
        if block["model"] not in config["base_models"]:
            config_error(f"matrix[{i}].model: {block['model']!r} is not in base_models (they are {', '.join(known)}); "
                         "add it under base_models or fix the name")
    from pcpo.algorithms import get_algorithm
    from pcpo.config import ConfigError, TrainingConfig, deep_merge, from_dict
    from pcpo.config import validate as validate_training
    from pcpo.train_cli import parse_sets

    for i, block in enumerate(config["matrix"]):
        for alg in block["algorithms"]:
            try:
                get_algorithm(alg, f"matrix[{i}].algorithms")
            except KeyError as e:
                config_error(e.args[0])
    # the trainer reads the effective config file (a JSON round trip of this dict) plus the run's --set flags
    raw = json.loads(json.dumps(config))
    seen = set()
    for i, block in enumerate(config["matrix"]):
        for reward in block["rewards"]:
            if (block["model"], reward) in seen:
                continue
            seen.add((block["model"], reward))
            sets = train_set_flags(block["model"], reward)[1::2]
            try:
                cfg = from_dict(TrainingConfig, deep_merge(raw, parse_sets(sets)))
                validate_training(cfg)
                if cfg.algorithms:  # per-algorithm overrides: the trainer's merge (it imports the models)
                    from pcpo.trainer import resolve_framework

                    for alg in block["algorithms"]:
                        resolve_framework(cfg, alg)
            except ConfigError as e:
                config_error(f"{e} (matrix[{i}]: model {block['model']}, reward {reward})")
