"""Rule pretrained_weights (local): write the backbone's ImageNet weights once, from timm's cache or a download."""
from ferseq import logs, pretrained

with logs.step(snakemake.log[0]):
    pretrained.materialise(snakemake.wildcards.backbone, snakemake.output[0])
