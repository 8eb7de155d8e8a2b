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
        # the whole folder (index.md, tables as CSV/Markdown/LaTeX, plots, sample grids, the tests) is one
        # output, as `pcpo report` writes a data-dependent set of files into it; every PNG, CSV and HTML
        # is in the HTML report (`snakemake --report report.html`), with the caption and category that
        # `pcpo report` wrote for it (captions.rst, report_items.json)
        report(
            directory(f"{RESULTS}/report"),
            patterns=["{name}.{ext,(png|csv|html)}"],
            caption=os.path.abspath(f"{RESULTS}/report/captions.rst"),
            category=report_item("category", f"{RESULTS}/report"),
            subcategory=report_item("subcategory", f"{RESULTS}/report"),
            labels=report_item("labels", f"{RESULTS}/report"),
        ),
    log:
        f"{RESULTS}/logs/report.log",
    params:
        pcpo=PCPO,
        # rerun the report when its settings change (targets, matched rewards, tests)
        settings=lambda w: settings("report", ev={k: v for k, v in EVAL.items() if k in ("targets", "matched_rewards")}),
        results=lambda w, output: str(Path(output[0]).parent),
        cfg=CONFIGFILE,
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("report")
    resources:
        **res("report"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} report --config {params.cfg} --results {params.results} > {log} 2>&1"
