# All metrics -> one tidy table -> tables, plots and image grids.
# Cheap bookkeeping: run on the submitting host, never as cluster jobs.


localrules:
    all,
    aggregate,
    report,


rule aggregate:
    input:
        evals=eval_jsons(),
        logs=run_logs(),
    output:
        f"{RESULTS}/tables/all_metrics.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        pcpo=PCPO,
        results=lambda w, output: str(Path(output[0]).parents[1]),
        cfg=CONFIGFILE,
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("report")
    resources:
        **res("report"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} aggregate --config {params.cfg} --results {params.results} > {log} 2>&1"


rule report:
    input:
        f"{RESULTS}/tables/all_metrics.csv",
    output:
        index=report(
            f"{RESULTS}/report/index.md",
            caption="../report/index.rst",
            category="Report",
        ),
        # the pairwise tests (verdicts and table) as a page of the HTML report;
        # significance.csv/.md/.tex sit beside it
        significance=report(
            f"{RESULTS}/report/significance.html",
            category="Report",
            subcategory="Statistical tests",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        pcpo=PCPO,
        # rerun the report when its settings change (targets, matched rewards, tests)
        settings=lambda w: settings("report", ev={k: v for k, v in EVAL.items() if k in ("targets", "matched_rewards")}),
        results=lambda w, output: str(Path(output[0]).parents[1]),
        cfg=CONFIGFILE,
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("report")
    resources:
        **res("report"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} report --config {params.cfg} --results {params.results} > {log} 2>&1"
