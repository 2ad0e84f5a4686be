# Evaluation: probes, kNN, retrieval and reconstruction metrics of the pretrained encoder against a
# randomly initialised one, on the held-out spatial blocks, with land-cover labels from the catalog.


rule evaluate:
    input:
        code("evaluate"),
        checkpoint="results/pretrain/checkpoint.pt",
        cache="data/cache",
        manifest="data/manifests/patches.parquet",
        stats="results/stats/channel_stats.json",
        labels="data/demo",
    output:
        metrics="results/evaluate/metrics.json",
        report="results/evaluate/report.json",
        probe_scores="results/evaluate/probe_scores.png",
        confusion="results/evaluate/confusion_matrix.png",
        embedding_map="results/evaluate/embedding_map.png",
        error_maps="results/evaluate/error_maps.png",
        psnr="results/evaluate/reconstruction_psnr.png",
    params:
        cfg=config["evaluate"],
        data=config["data"],
    conda:
        ENV
    log:
        "logs/evaluate.log",
    shell:
        "geogfm evaluate --checkpoint {input.checkpoint} --cache {input.cache}"
        " --manifest {input.manifest} --stats {input.stats} --labels {input.labels}"
        " --out results/evaluate --log {log}"
