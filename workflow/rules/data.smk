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


# One job, or the gather of one job per cell (TILE_CACHE_FANOUT, see common.smk).
rule tile_cache:
    input:
        code("tile_cache"),
        item_collection="data/stac/items.json",
        lock="data/stac/lock.json",
        cells=tile_cache_cells,
    output:
        directory("data/cache"),
    params:
        cfg=config["tile_cache"],
        gather=lambda wildcards, input: " --gather data/cache_cells" if input.cells else "",
    threads: TILE_CACHE_WORKERS
    resources:
        cpus_per_task=TILE_CACHE_WORKERS,
        mem_mb=2000 * TILE_CACHE_WORKERS,  # ~2 GB a thread (256 px cells, ~50 items a cell)
    conda:
        ENV
    log:
        "logs/tile_cache.log",
    shell:
        "geogfm tile_cache --items {input.item_collection} --out {output}{params.gather}"
        " --log {log}"


checkpoint tile_cache_plan:
    input:
        code("tile_cache"),
        item_collection="data/stac/items.json",
        lock="data/stac/lock.json",
    output:
        "data/cache_plan.json",
    params:
        cfg=config["tile_cache"],
    conda:
        ENV
    log:
        "logs/tile_cache_plan.log",
    shell:
        "geogfm tile_cache --items {input.item_collection} --plan --out {output} --log {log}"


rule tile_cache_cell:
    input:
        code("tile_cache"),
        item_collection="data/stac/items.json",
        lock="data/stac/lock.json",
        plan="data/cache_plan.json",
    output:
        directory("data/cache_cells/{cell,[^/]+}"),
    params:
        cfg=config["tile_cache"],
    threads: 1  # one cell is read by one thread
    resources:
        cpus_per_task=1,
        mem_mb=tile_cache_cell_mem_mb,
    conda:
        ENV
    log:
        "logs/tile_cache/{cell}.log",
    shell:
        "geogfm tile_cache --items {input.item_collection} --cell {wildcards.cell} --out {output}"
        " --log {log}"


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
