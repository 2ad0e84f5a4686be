# Reports: the model card, written from the artifacts it describes (all of them inputs, so that it
# is regenerated whenever one changes).


rule model_card:
    input:
        code("model_card"),
        lock="data/stac/lock.json",
        cache="data/cache",
        audit="data/manifests/split_audit.json",
        stats="results/stats/channel_stats.json",
        meta="results/pretrain/meta.json",
        metrics="results/pretrain/metrics.json",
        evaluation="results/evaluate/metrics.json",
        figures=rules.figures.output,
    output:
        "results/model_card.md",
    conda:
        ENV
    log:
        "logs/model_card.log",
    shell:
        "geogfm model_card --lock {input.lock} --cache {input.cache} --audit {input.audit}"
        " --stats {input.stats} --meta {input.meta} --metrics {input.metrics}"
        " --evaluation {input.evaluation} --figures results/figures --out {output}"
        " --log {log}"
