# Shared helpers: the experiment matrix from the config, paths, and --set flags.
import json
import os
import shlex
import sys
from pathlib import Path

from pcpo.launch import job_resources, processes_per_node, resource_block, train_launcher, world_size

EXP = config["experiment"]
RESULTS = f"{config.get('results', 'results')}/{EXP}"



CONFIGFILE = f"{RESULTS}/config.yaml"


def write_effective_config():
    """The config Snakemake uses (files + --config overrides), for the pcpo commands.

    Called from `onstart:`, which Snakemake runs for real runs only: a dry run writes nothing,
    and the job-side Snakemake processes on cluster nodes (started with --no-hooks) never
    rewrite it under running jobs. Rewritten only when its content changes, so its mtime
    triggers nothing; jobs rerun on the config slices they declare in params (rerun trigger
    "params").
    """
    import yaml
    from pcpo.utils import atomic_write_text

    path = Path(CONFIGFILE)
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return str(path)


TRAINER_SECTIONS = ("model", "reward", "prompts", "sampling", "train", "lora", "ema", "pcpo", "algorithms")


def settings(*keys, **extra):
    """A stable JSON of the config sections a job depends on (its rerun trigger)."""
    d = {k: config.get(k) for k in keys}
    d.update(extra)
    return json.dumps(d, sort_keys=True, default=str)
# `pcpo` through the interpreter running Snakemake, so jobs (local or on Slurm nodes, where
# the job-side Snakemake re-evaluates this) find it without an activated environment
PCPO = config.get("pcpo_command") or f"{shlex.quote(sys.executable)} -m pcpo.cli"
EVAL = config.get("evaluation", {})
EVAL_EPOCHS = [int(e) for e in EVAL.get("epochs", [])]
TRAIN_EPOCHS = int(config.get("train", {}).get("epochs", 10))
CKPT_EVERY = int(config.get("train", {}).get("checkpoint_every", 2))


def checkpoint_epochs():
    eps = {e for e in range(TRAIN_EPOCHS) if (e + 1) % CKPT_EVERY == 0}
    eps.add(TRAIN_EPOCHS - 1)
    return eps


_bad = [e for e in EVAL_EPOCHS if e not in checkpoint_epochs()]
if _bad:
    config_error(
        f"evaluation.epochs: {_bad} are not checkpoint epochs; with train.epochs={TRAIN_EPOCHS} and "
        f"train.checkpoint_every={CKPT_EVERY} the checkpoints are {sorted(checkpoint_epochs())}"
    )


def runs():
    """Every (model, reward, algorithm, seed) of the matrix."""
    out = []
    for block in config["matrix"]:
        for reward in block["rewards"]:
            for alg in block["algorithms"]:
                for seed in block["seeds"]:
                    out.append(dict(model=block["model"], reward=reward, algorithm=alg, seed=int(seed)))
    return out


def base_model(name):
    return config["base_models"][name]


def base_model_path(name):
    bm = base_model(name)
    return bm.get("path") or f"{RESULTS}/base/{bm['pretrain']}"


def pretrained_inputs(name):
    bm = base_model(name)
    return [f"{RESULTS}/base/{bm['pretrain']}/pcpo_model.json"] if bm.get("pretrain") else []


def classifier_inputs():
    return [f"{RESULTS}/base/classifier/config.json"] if "classifier" in config.get("pretrain", {}) else []


def fmt(value):
    """Fill {results} and {classifier} placeholders of config strings."""
    if isinstance(value, str):
        return value.format(results=RESULTS, classifier=f"{RESULTS}/base/classifier")
    if isinstance(value, dict):
        return {k: fmt(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fmt(v) for v in value]
    return value


def set_flags(prefix, mapping):
    """{'a': {'b': 1}} -> --set prefix.a.b=1 ..."""
    flags = []
    for k, v in mapping.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            flags += set_flags(key, v)
        else:
            flags += ["--set", f"{key}={json.dumps(v)}"]
    return flags


def reward_options(reward):
    return fmt(config.get("reward_options", {}).get(reward, {}))


def train_set_flags(model, reward):
    """The --set flags of one run (model, reward and the base model's overrides)."""
    bm = base_model(model)
    flags = ["--set", f"model.kind={bm['kind']}", "--set", f"model.path={base_model_path(model)}"]
    flags += ["--set", f"reward.name={reward}"]
    flags += set_flags("reward.options", reward_options(reward))
    flags += set_flags("", fmt(bm.get("overrides", {})))
    return flags


def train_flags(model, reward):
    return " ".join(shlex.quote(f) for f in train_set_flags(model, reward))


RUN = "{model}/{reward}/{algorithm}/seed{seed}"


def run_dir(w):
    return f"{RESULTS}/runs/{w.model}/{w.reward}/{w.algorithm}/seed{w.seed}"


def _eval_seeds():
    """evaluation.seeds: evaluate the checkpoints of these seeds only (default: every seed)."""
    seeds = EVAL.get("seeds")
    if seeds is None:
        return None
    known = {int(r["seed"]) for r in runs()}
    bad = [s for s in seeds if int(s) not in known]
    if bad:
        config_error(f"evaluation.seeds: {bad} are not seeds of any matrix entry (they are {sorted(known)}); "
                         "list a subset of the matrix's seeds, or drop the key to evaluate every seed")
    return {int(s) for s in seeds}


def sample_dirs():
    out = [f"{RESULTS}/samples/{m}/base" for m in sorted({r['model'] for r in runs()})]
    keep = _eval_seeds()
    for r in runs():
        if keep is not None and int(r["seed"]) not in keep:
            continue
        for e in EVAL_EPOCHS:
            out.append(f"{RESULTS}/samples/{r['model']}/{r['reward']}/{r['algorithm']}/seed{r['seed']}/epoch{e}")
    return out


def eval_jsons():
    samples, metrics = f"{RESULTS}/samples", f"{RESULTS}/metrics"
    return [metrics + d[len(samples):] + ".json" for d in sample_dirs()]


def run_logs():
    return [f"{RESULTS}/runs/{r['model']}/{r['reward']}/{r['algorithm']}/seed{r['seed']}/metrics.csv" for r in runs()]


def eval_flags():
    f = []
    for r in EVAL.get("rewards", []):
        f.append(f"--reward {r}")
    for m in EVAL.get("metrics", []):
        f.append(f"--metric {m}")
    return " ".join(f)


def sample_flags():
    f = [f"--seed {EVAL.get('seed', 1234)}", f"--n-per-prompt {EVAL.get('n_per_prompt', 4)}"]
    if EVAL.get("prompts_per_digit") is not None:
        f.append(f"--prompts-per-digit {EVAL['prompts_per_digit']}")
    if EVAL.get("deterministic", True):
        f.append("--deterministic")
    if EVAL.get("steps") is not None:
        f.append(f"--steps {int(EVAL['steps'])}")
    if EVAL.get("guidance_scale") is not None:
        f.append(f"--guidance-scale {float(EVAL['guidance_scale'])}")
    return " ".join(f)


def res(kind):
    """Snakemake resources of a job of `kind` (a block of the config's `resources:`), the same on
    every executor: Slurm maps them to sbatch flags (see pcpo/launch.py job_resources)."""
    return job_resources(config.get("resources"), kind)


def cpus(kind):
    """A job's threads follow its CPUs (Snakemake scales them down to --cores locally)."""
    return res(kind)["cpus_per_task"]


def omp_threads(kind, threads):
    """OpenMP threads per process: the job's threads shared by the processes of one node."""
    per_node = processes_per_node(resource_block(config.get("resources"), kind)) if kind == "train" else 1
    return max(1, int(threads) // per_node)


# `pcpo` for one process, torchrun on one node, srun + one torchrun agent per node on several
# (gloo on CPUs, NCCL on GPUs: the trainer's Accelerator reads torchrun's environment)
TRAIN_LAUNCHER = PCPO if world_size(config.get("resources")) == 1 else train_launcher(config.get("resources"))


def report_item(field, report_dir):
    """Category, subcategory or labels of one file of the report folder, from the
    report_items.json that `pcpo report` writes beside it (evaluation/figures.py); read when
    `snakemake --report` builds the HTML report."""
    from evaluation.figures import read_items

    def get(wildcards):
        it = read_items(report_dir).get(f"{wildcards.name}.{wildcards.ext}")
        if it is None:  # written after the captions (should not happen): visible, not hidden under "Other"
            it = {"category": "Statistical tests", "subcategory": "Unregistered", "title": wildcards.name}
        if field == "labels":
            return {"result": it["title"], "file": f"{wildcards.name}.{wildcards.ext}"}
        return it[field]

    return get
