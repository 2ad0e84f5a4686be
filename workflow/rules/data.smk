# Data stages: demo catalog -> STAC query -> tile cache -> patch manifest -> channel statistics.


rule demo_catalog:
    input:
        code("demo_catalog"),
    output:
        directory("data/demo"),
    params:
        cfg=config["demo_catalog"],
    conda:
        ENV
    log:
        "logs/demo_catalog.log",
    shell:
        "geogfm demo_catalog --out {output} --log {log}"


rule stac_query:
    input:
        code("stac_query"),
        catalog_dir="data/demo",
    output:
        item_collection="data/stac/items.json",
        lock="data/stac/lock.json",
    params:
        cfg=config["stac_query"],
    conda:
        ENV
    log:
        "logs/stac_query.log",
    shell:
        "geogfm stac_query --catalog-dir {input.catalog_dir} --out data/stac --log {log}"


rule tile_cache:
    input:
        code("tile_cache"),
        item_collection="data/stac/items.json",
        lock="data/stac/lock.json",
    output:
        directory("data/cache"),
    params:
        cfg=config["tile_cache"],
    conda:
        ENV
    log:
        "logs/tile_cache.log",
    shell:
        "geogfm tile_cache --items {input.item_collection} --out {output} --log {log}"


rule patch_manifest:
    input:
        code("patch_manifest"),
        cache="data/cache",
    output:
        manifest="data/manifests/patches.parquet",
        audit="data/manifests/split_audit.json",
    params:
        cfg=config["patch_manifest"],
        image_size=config["model"]["image_size"],
    conda:
        ENV
    log:
        "logs/patch_manifest.log",
    shell:
        "geogfm patch_manifest --cache {input.cache} --out data/manifests --log {log}"


rule channel_stats:
    input:
        code("channel_stats"),
        cache="data/cache",
        manifest="data/manifests/patches.parquet",
    output:
        "results/stats/channel_stats.json",
    params:
        cfg=config["channel_stats"],
    conda:
        ENV
    log:
        "logs/channel_stats.log",
    shell:
        "geogfm channel_stats --cache {input.cache} --manifest {input.manifest} --out {output}"
        " --log {log}"
