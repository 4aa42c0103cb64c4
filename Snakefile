# ferseq: raw face videos -> aligned faces -> frame CNN -> windows -> LSTMs -> evaluation.
# One rule file per stage, named as the package's stage (src/ferseq/<stage>/); the rules are
# thin and call it.
from snakemake.utils import min_version

min_version("9.0")


# The demo config, unless `--configfile` names one: that one then stands alone on the
# schema's defaults instead of being merged into the demo's settings.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/faces.smk"
include: "workflow/rules/frame_model.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/sequences.smk"
include: "workflow/rules/sequence_model.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluation.smk"


localrules:
    all,
    pretrained_weights,


rule all:
    default_target: True
    input:
        final_outputs,
