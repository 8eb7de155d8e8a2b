# The PCPO benchmark workflow: pretrain -> train -> sample -> evaluate -> aggregate -> report.
# Every job is one `pcpo` command; the math lives in the library.
#
#   snakemake --cores all                                  # config/tiny.yaml, locally
#   snakemake --cores all --configfile config/smoke.yaml   # the CI-sized run
#   snakemake --cores all --profile slurm --configfile config/paper/X.yaml   # on a Slurm cluster
#
# The config is checked before any work (schema, then the trainer's own rules for every run of
# the matrix); a bad one stops the dry run with one line. A dry run writes nothing: the
# effective config that jobs read is written in `onstart:` (real runs only).

from snakemake.utils import min_version, validate

min_version("8.20")


include: "workflow/rules/checks.smk"


# the landing page of `snakemake --report report.html`: what the experiment is, where to look first
report: "workflow/report/workflow.rst"


# The default experiment, unless --configfile names one. A --configfile without `experiment:`
# is refused: Snakemake would merge it into config/tiny.yaml and write over the tiny results.
if "experiment" not in config:
    if workflow.overwrite_configfiles:
        config_error(
            f"{', '.join(str(f) for f in workflow.overwrite_configfiles)}: no 'experiment:' key; "
            "name the experiment in the file (results go to results/<experiment>/)"
        )

    configfile: "config/tiny.yaml"


check_schema("workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


check_matrix()


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/paper.smk"


onstart:
    write_effective_config()
    paper_onstart()


rule all:
    input:
        f"{RESULTS}/report",
    default_target: True
