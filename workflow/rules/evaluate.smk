# Metrics of one folder of samples: rewards, FID/KID, IS, diversity.


rule evaluate:
    input:
        samples=f"{RESULTS}/samples/{{path}}/manifest.json",
        clf=classifier_inputs(),
        data=DATA_STAMPS["evaluate"],
    output:
        f"{RESULTS}/metrics/{{path}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{{path}}.log",
    params:
        pcpo=PCPO,
        samples=lambda w: f"{RESULTS}/samples/{w.path}",
        cfg=CONFIGFILE,
        flags=eval_flags(),
        settings=lambda w: settings("reward_options", ev={k: v for k, v in EVAL.items() if k in ("metrics", "rewards", "reference")}),
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("evaluate")
    resources:
        **res("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} evaluate --config {params.cfg} --samples {params.samples} --out {output} {params.flags} > {log} 2>&1"
