# Model stages: MAE pretraining and its figures.


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
    conda:
        ENV
    log:
        "logs/pretrain.log",
    shell:
        "geogfm pretrain --cache {input.cache} --manifest {input.manifest} --stats {input.stats}"
        " --out results/pretrain --log {log}"


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
