# Fixed evaluation prompts x fixed seeds, from each evaluated checkpoint and the base models.


def sample_flags():
    f = [f"--seed {EVAL.get('seed', 1234)}", f"--n-per-prompt {EVAL.get('n_per_prompt', 4)}"]
    if EVAL.get("prompts_per_digit") is not None:
        f.append(f"--prompts-per-digit {EVAL['prompts_per_digit']}")
    if EVAL.get("deterministic", True):
        f.append("--deterministic")
    return " ".join(f)


rule sample_base:
    input:
        lambda w: pretrained_inputs(w.model),
    output:
        f"{RESULTS}/samples/{{model}}/base/manifest.json",
    log:
        f"{RESULTS}/logs/sample/{{model}}/base.log",
    params:
        out=lambda w: f"{RESULTS}/samples/{w.model}/base",
        cfg=CONFIGFILE,
        kind=lambda w: base_model(w.model)["kind"],
        path=lambda w: base_model_path(w.model),
        flags=sample_flags(),
        settings=lambda w: settings("prompts", "sampling"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=lambda w: config.get("resources", {}).get("sample_gpus", 0),
    shell:
        "{PCPO} sample --config {params.cfg} --model-kind {params.kind} --model-path {params.path} "
        "--out {params.out} {params.flags} --no-progress > {log} 2>&1"


rule sample:
    input:
        f"{RESULTS}/runs/{RUN}/DONE",
    output:
        f"{RESULTS}/samples/{RUN}/epoch{{epoch}}/manifest.json",
    log:
        f"{RESULTS}/logs/sample/{RUN}/epoch{{epoch}}.log",
    params:
        out=lambda w: f"{RESULTS}/samples/{w.model}/{w.reward}/{w.algorithm}/seed{w.seed}/epoch{w.epoch}",
        ckpt=lambda w: f"{run_dir(w)}/checkpoints/epoch_{int(w.epoch):06d}",
        cfg=CONFIGFILE,
        flags=sample_flags(),
        settings=lambda w: settings("prompts", "sampling"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=lambda w: config.get("resources", {}).get("sample_gpus", 0),
    shell:
        "{PCPO} sample --config {params.cfg} --checkpoint {params.ckpt} --out {params.out} {params.flags} "
        "--no-progress > {log} 2>&1"
