"""Rule pretrained_weights (local): write the backbone's ImageNet weights once, from timm's cache or a download."""
from ferseq.common import logs
from ferseq.frame_model import pretrained_weights

with logs.step(snakemake.log[0]):
    pretrained_weights.materialise(snakemake.wildcards.backbone, snakemake.output[0])
