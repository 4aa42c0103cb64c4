"""Rule faces_qc: the faces batches' QC tables in one table for the report."""
from ferseq import faces, logs

with logs.step(snakemake.log[0]):
    faces.merge_qc(snakemake.input.tables, snakemake.output[0])
