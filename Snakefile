# ferseq: raw face videos -> aligned faces -> frame CNN -> windows -> LSTMs -> evaluation.
# One include per stage; the rules are thin and call the ferseq package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/faces.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
