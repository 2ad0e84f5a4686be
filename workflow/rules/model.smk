# Model stages: MAE pretraining and its figures.


# How `geogfm pretrain` is launched: train.devices x train.nodes processes, through torchrun when
# more than one; several nodes of a SLURM allocation get one torchrun each (srun), meeting on the
# allocation's first node.
_DEVICES, _NODES = config["train"].get("devices", 1), config["train"].get("nodes", 1)
PRETRAIN_LAUNCH = (
    "geogfm"
    if _DEVICES * _NODES == 1
    else f"torchrun --standalone --nproc-per-node {_DEVICES} -m geogfm"
    if _NODES == 1
    else (
        f"srun --ntasks-per-node 1 torchrun --nnodes {_NODES} --nproc-per-node {_DEVICES}"
        " --rdzv-backend c10d --rdzv-id $SLURM_JOB_ID"
        " --rdzv-endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1):29500"
        " -m geogfm"
    )
)
# GPUs per job (none when training on the CPU), for executors and `--resources gpu=N`; the
# profiles in workflow/profiles/ may set their own.
PRETRAIN_GPUS = 0 if config["train"].get("device") == "cpu" else _DEVICES


# Training checkpoints (results/pretrain/checkpoints/) are deliberately not an output: Snakemake
# deletes the outputs of a failed or incomplete job, and a rerun resumes from them.
rule pretrain_mae:
    input:
        code("pretrain"),
        cache="data/cache",
        manifest="data/manifests/patches.parquet",
        stats="results/stats/channel_stats.json",
    output:
        checkpoint="results/pretrain/checkpoint.pt",
        meta="results/pretrain/meta.json",
        metrics="results/pretrain/metrics.json",
        plots=directory("results/pretrain/live/plots/metrics"),
    params:
        model=config["model"],
        data=config["data"],
        train=config["train"],
        launch=lambda wildcards: PRETRAIN_LAUNCH,
    resources:
        gpu=PRETRAIN_GPUS,
        mem_mb=16000 if PRETRAIN_GPUS else 4000,
    conda:
        ENV
    log:
        "logs/pretrain.log",
    shell:
        "{params.launch} pretrain --cache {input.cache} --manifest {input.manifest}"
        " --stats {input.stats} --out results/pretrain --log {log}"


rule figures:
    input:
        code("figures"),
        checkpoint="results/pretrain/checkpoint.pt",
        plots="results/pretrain/live/plots/metrics",
        cache="data/cache",
        manifest="data/manifests/patches.parquet",
    output:
        reconstructions="results/figures/reconstructions.png",
        loss_curve="results/figures/loss_curve.png",
    params:
        cfg=config["figures"],
    conda:
        ENV
    log:
        "logs/figures.log",
    shell:
        "geogfm figures --checkpoint {input.checkpoint} --cache {input.cache}"
        " --manifest {input.manifest} --out results/figures --log {log}"


rule pretrain:
    # The main target: a trained checkpoint and its reconstruction figures.
    input:
        rules.pretrain_mae.output.checkpoint,
        rules.figures.output,
