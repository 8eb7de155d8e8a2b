# One RL run per (base model, reward, algorithm, seed); resumes from its last checkpoint.
# With resources.train_gpus > 1 the run is started by torchrun (one process per GPU; see train_launcher).


rule train:
    input:
        lambda w: pretrained_inputs(w.model) + classifier_inputs(),
        data=DATA_STAMPS["train"],
    output:
        metrics=f"{RESULTS}/runs/{RUN}/metrics.csv",
        done=f"{RESULTS}/runs/{RUN}/DONE",
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    params:
        pcpo=PCPO,
        out=run_dir,
        cfg=CONFIGFILE,
        flags=lambda w: train_flags(w.model, w.reward),
        launcher=train_launcher(),
        settings=lambda w: settings(*TRAINER_SECTIONS, base=base_model(w.model), reward_options=reward_options(w.reward)),
    conda:
        "../envs/pcpo.yaml"
    threads: 1
    resources:
        mem_mb=lambda w: config.get("resources", {}).get("train_mem_mb", 3000),
        runtime=lambda w: config.get("resources", {}).get("train_runtime", 60),
        gpu=lambda w: config.get("resources", {}).get("train_gpus", 0),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train --config {params.cfg} --algorithm {wildcards.algorithm} --seed {wildcards.seed} "
        "--out {params.out} {params.flags} --no-progress > {log} 2>&1"
