# geogfm: the DAG from a STAC query to a pretrained masked autoencoder and its figures.
#
#   snakemake --cores 8 pretrain      # the main job: data stages, pretraining, reconstruction figures
#   snakemake --cores 8               # everything (rule all)
#
# Path convention (the same in dvc.yaml):
#   data/<stage>/...      what is fetched or cached: demo catalog, STAC lock, tile cache, manifests
#   results/<stage>/...   what is produced: statistics, checkpoints, metrics, figures
#   logs/<stage>.log      each stage's log
#
# Every rule runs `geogfm <stage>` with the same command line as the dvc.yaml stage of that name
# (tests/test_orchestration.py checks it), and receives through `params:` only the params.yaml
# sections its stage reads, so a params change reruns exactly the stages it concerns.

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.pretrain.input,
        rules.evaluate.output,
        rules.model_card.output,
