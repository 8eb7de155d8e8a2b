# All metrics -> one tidy table -> tables, plots and image grids.


rule aggregate:
    input:
        evals=eval_jsons(),
        logs=run_logs(),
    output:
        f"{RESULTS}/tables/all_metrics.csv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        cfg=CONFIGFILE,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{PCPO} aggregate --config {params.cfg} --results {RESULTS} > {log} 2>&1"


rule report:
    input:
        f"{RESULTS}/tables/all_metrics.csv",
    output:
        index=report(
            f"{RESULTS}/report/index.md",
            caption="../report/index.rst",
            category="Report",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        cfg=CONFIGFILE,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PCPO} report --config {params.cfg} --results {RESULTS} > {log} 2>&1"
