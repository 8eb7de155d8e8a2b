# One RL run per (base model, reward, algorithm, seed); resumes from its last checkpoint.
# resources.train: gpus > 1 starts torchrun (one process per GPU); nodes > 1 starts one torchrun
# agent per node through srun with a c10d rendezvous (pcpo/launch.py train_launcher).


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
        launcher=TRAIN_LAUNCHER,
        omp=lambda w, threads: omp_threads("train", threads),
        settings=lambda w: settings(*TRAINER_SECTIONS, base=base_model(w.model), reward_options=reward_options(w.reward)),
    conda:
        "../envs/pcpo.yaml"
    threads: cpus("train")
    resources:
        **res("train"),
    shell:
        "OMP_NUM_THREADS={params.omp} {params.launcher} train --config {params.cfg} --algorithm {wildcards.algorithm} --seed {wildcards.seed} "
        "--out {params.out} {params.flags} --no-progress > {log} 2>&1"
