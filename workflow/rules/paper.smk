# `snakemake paper`: every experiment of the paper in one invocation, then each figure and table the
# paper reports (workflow/paper_figures.yaml; rendering in evaluation/paper.py).
#
# Each experiment is this Snakefile again as a Snakemake module with that experiment's config, its
# rules renamed <experiment>_<rule>: every run stays its own job (resume, one Slurm job each), and
# results stay apart under <results>/<experiment>/. Not loaded from the modules themselves (no recursion).
#   PCPO_PAPER_WORLD=full snakemake --cores all --profile slurm paper   # the full-scale configs of config/paper/
#   PCPO_PAPER_WORLD=tiny snakemake --cores all paper                   # the tiny rehearsal (smoke-sized analogues)
# The world comes from the environment so that the job-side Snakemake on a cluster node (Slurm exports
# the submitting environment) builds the same modules and rule names.  Without PCPO_PAPER_WORLD no paper
# module is declared: an ordinary run of one experiment parses only its own config.
import os
import re

from evaluation.paper import PaperError, experiment_configs, load_figures, paper_world

PAPER_FIGURES = "workflow/paper_figures.yaml"
# rules of a module whose role the main workflow already plays: `all` (the default target stays the
# main experiment's) and `data_fetch` (one data root for every experiment: the main workflow's
# data_fetch serves every stamp, which would otherwise be ambiguous between modules)
PAPER_EXCLUDE = ["all", "data_fetch"]
# only Snakemake's onstart of the main Snakefile runs: it calls this for the modules' configs
paper_onstart = lambda: None

if workflow.modifier.is_main_snakefile() and os.environ.get("PCPO_PAPER_WORLD"):
    try:
        PAPER_WORLD = paper_world(Path(workflow.basedir, PAPER_FIGURES))
        PAPER_EXPERIMENTS = experiment_configs(Path(workflow.basedir, PAPER_FIGURES), PAPER_WORLD, workflow.basedir,
                                               config.get("results", "results"))
        PAPER_SPEC = load_figures(
            Path(workflow.basedir, PAPER_FIGURES), PAPER_WORLD)
    except PaperError as e:
        config_error(str(e))
    if EXP in PAPER_EXPERIMENTS:
        config_error(f"{PAPER_FIGURES}: experiment {EXP} is also the main experiment; give the paper's "
                     "experiments their own names")
    PAPER_ROOT = config.get("results", "results")
    PAPER_OUT = f"{PAPER_ROOT}/paper/{PAPER_WORLD}"
    for _name, _cfg in PAPER_EXPERIMENTS.items():
        workflow.module(name=f"paper_{_name}", snakefile=str(Path(workflow.basedir, "Snakefile")), config=_cfg)
        workflow.userule(rules=["*"], from_module=f"paper_{_name}", exclude_rules=PAPER_EXCLUDE,
                         name_modifier=f"{_name}_*")(None)
    # the modules' `localrules:` keep their unprefixed names: name the prefixed ones (bookkeeping on the
    # submitting host, as in the main workflow)
    workflow.localrules(*[f"{n}_{r}" for n in PAPER_EXPERIMENTS for r in ("aggregate", "report")])
    # each module's own write_effective_config (its results/<experiment>/config.yaml, read by its jobs)
    paper_onstart = lambda: [workflow.get_rule(f"{n}_report").module_globals["write_effective_config"]()
                             for n in PAPER_EXPERIMENTS]

    _IRG = next(f for f in PAPER_SPEC["figures"].values() if f["kind"] == "irg")
    _IRG_SET = PAPER_SPEC["settings"][_IRG["setting"]]
    _IRG_CFG = PAPER_EXPERIMENTS[_IRG_SET["experiment"]]
    _IRG_SEED = min(int(s) for b in _IRG_CFG["matrix"] if b["model"] == _IRG_SET["model"] for s in b["seeds"])
    _IRG_RUN = (f"{PAPER_ROOT}/{_IRG_SET['experiment']}/runs/{_IRG_SET['model']}/{_IRG_SET['reward']}/"
                f"{_IRG_SET['pcpo']}/seed{_IRG_SEED}")
    _IRG_EPOCH = int(_IRG_CFG.get("train", {}).get("epochs", 10)) - 1

    localrules:
        paper,
        paper_irg,

    _IRG_LAMBDAS = [f"{float(x):g}" for x in _IRG["lambdas"]]

    rule paper_irg_lambda:
        """Implicit reward guidance (docs/method.md §5) at one lambda: the last checkpoint of the IRG
        setting's PCPO run (first seed) sampled against the base model and evaluated (reward, FID, KID,
        diversity); one job per lambda, so they run side by side."""
        input:
            done=f"{_IRG_RUN}/DONE",
            # the base model's evaluation: the reference features are cached by then (not the report: the
            # IRG samples then run beside the experiment's other jobs instead of alone after them)
            base=f"{PAPER_ROOT}/{_IRG_SET['experiment']}/metrics/{_IRG_SET['model']}/base.json",
        output:
            f"{PAPER_OUT}/irg/lambda/{{lam}}.csv",
        log:
            f"{PAPER_OUT}/logs/irg_{{lam}}.log",
        wildcard_constraints:
            lam="|".join(re.escape(x) for x in _IRG_LAMBDAS),
        params:
            results=f"{PAPER_ROOT}/{_IRG_SET['experiment']}",
            checkpoint=lambda w, input: f"{Path(input.done).parent}/checkpoints/epoch_{_IRG_EPOCH:06d}",
            n=int(_IRG.get("n_per_prompt", 2)),
            python=shlex.quote(sys.executable),
        conda:
            "../envs/pcpo.yaml"
        threads: cpus("sample")
        resources:
            **res("sample"),
        shell:
            "OMP_NUM_THREADS={threads} {params.python} benchmarks/irg_experiment.py --results {params.results} "
            "--checkpoint {params.checkpoint} --lambdas {wildcards.lam} --n-per-prompt {params.n} "
            "--prompts-per-digit 1 --out {output} > {log} 2>&1"

    rule paper_irg:
        """The IRG table: every lambda's row, in the figure list's order."""
        input:
            [f"{PAPER_OUT}/irg/lambda/{x}.csv" for x in _IRG_LAMBDAS],
        output:
            f"{PAPER_OUT}/irg/irg.csv",
        run:
            import pandas as pd

            from pcpo.utils import atomic_write_text

            atomic_write_text(output[0], pd.concat([pd.read_csv(f) for f in input], ignore_index=True)
                              .to_csv(index=False))

    rule paper:
        """Every figure and table of workflow/paper_figures.yaml, ours beside the paper's numbers."""
        input:
            reports=[f"{PAPER_ROOT}/{n}/report" for n in PAPER_EXPERIMENTS],
            irg=f"{PAPER_OUT}/irg/irg.csv",
            figures=PAPER_FIGURES,
        output:
            f"{PAPER_OUT}/index.md",
        log:
            f"{PAPER_OUT}/logs/paper.log",
        params:
            python=shlex.quote(sys.executable),
            world=PAPER_WORLD,
            results=lambda w, output: str(Path(output[0]).parents[2]),
            out=lambda w, output: str(Path(output[0]).parent),
        conda:
            "../envs/pcpo.yaml"
        shell:
            "{params.python} -m evaluation.paper --figures {input.figures} --world {params.world} "
            "--results {params.results} --irg {input.irg} --out {params.out} > {log} 2>&1"
