# The tiny world's base models and its held-out-trained classifier.


rule pretrain_classifier:
    output:
        f"{RESULTS}/base/classifier/config.json",
    log:
        f"{RESULTS}/logs/pretrain/classifier.log",
    params:
        pcpo=PCPO,
        out=lambda w, output: str(Path(output[0]).parent),
        cfg=CONFIGFILE,
        settings=lambda w: settings(classifier=config.get("pretrain", {}).get("classifier")),
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("pretrain")
    resources:
        **res("pretrain"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} pretrain --config {params.cfg} --model classifier --out {params.out} > {log} 2>&1"


rule pretrain:
    output:
        f"{RESULTS}/base/{{pretrained}}/pcpo_model.json",
    log:
        f"{RESULTS}/logs/pretrain/{{pretrained}}.log",
    params:
        pcpo=PCPO,
        out=lambda w, output: str(Path(output[0]).parent),
        cfg=CONFIGFILE,
        settings=lambda w: settings(model=config.get("pretrain", {}).get(w.pretrained)),
    wildcard_constraints:
        pretrained="eps|flow",
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("pretrain")
    resources:
        **res("pretrain"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} pretrain --config {params.cfg} --model {wildcards.pretrained} --out {params.out} > {log} 2>&1"
