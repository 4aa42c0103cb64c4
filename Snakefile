# ferseq's entry point for `snakemake --cores N` in the repository root: the workflow itself is
# workflow/Snakefile (where the Snakemake workflow catalog and `module` users find it).


include: "workflow/Snakefile"


localrules:
    default,


# An included file's default target does not carry over to the including one: name it here.
rule default:
    default_target: True
    input:
        rules.all.input,
