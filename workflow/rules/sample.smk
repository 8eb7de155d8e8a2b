# Fixed evaluation prompts x fixed seeds, from each evaluated checkpoint and the base models.


rule sample_base:
    input:
        lambda w: pretrained_inputs(w.model),
        data=DATA_STAMPS["sample"],
    output:
        f"{RESULTS}/samples/{{model}}/base/manifest.json",
    log:
        f"{RESULTS}/logs/sample/{{model}}/base.log",
    params:
        pcpo=PCPO,
        out=lambda w, output: str(Path(output[0]).parent),
        cfg=CONFIGFILE,
        kind=lambda w: base_model(w.model)["kind"],
        path=lambda w: base_model_path(w.model),
        flags=sample_flags(),
        settings=lambda w: settings("prompts", "sampling"),
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("sample")
    resources:
        **res("sample"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} sample --config {params.cfg} --model-kind {params.kind} --model-path {params.path} "
        "--out {params.out} {params.flags} --no-progress > {log} 2>&1"


rule sample:
    input:
        f"{RESULTS}/runs/{RUN}/DONE",
        data=DATA_STAMPS["sample"],
    output:
        f"{RESULTS}/samples/{RUN}/epoch{{epoch}}/manifest.json",
    log:
        f"{RESULTS}/logs/sample/{RUN}/epoch{{epoch}}.log",
    params:
        pcpo=PCPO,
        out=lambda w, output: str(Path(output[0]).parent),
        ckpt=lambda w: f"{run_dir(w)}/checkpoints/epoch_{int(w.epoch):06d}",
        cfg=CONFIGFILE,
        flags=sample_flags(),
        settings=lambda w: settings("prompts", "sampling"),
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("sample")
    resources:
        **res("sample"),
    shell:
        "OMP_NUM_THREADS={threads} {params.pcpo} sample --config {params.cfg} --checkpoint {params.ckpt} --out {params.out} {params.flags} "
        "--no-progress > {log} 2>&1"
