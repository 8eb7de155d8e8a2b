# The PCPO benchmark workflow: pretrain -> train -> sample -> evaluate -> aggregate -> report.
# Every job is one `pcpo` command; the math lives in the library.
#
#   snakemake --cores all                                  # config/tiny.yaml, locally
#   snakemake --cores all --configfile config/smoke.yaml   # the CI-sized run
#   snakemake --cores all --profile slurm                  # on a Slurm cluster (see profiles/slurm)

from snakemake.utils import min_version, validate

min_version("8.20")


# The default experiment, unless --configfile names one (Snakemake would otherwise merge
# this file under the named one, leaking tiny-world keys into other experiments).
if "experiment" not in config:

    configfile: "config/tiny.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        f"{RESULTS}/report/index.md",
    default_target: True
