"""Rule faces_qc: the faces batches' QC tables in one table for the report; the files of batches no longer
planned are removed."""
from ferseq.common import logs
from ferseq.faces import batch_job, face_extraction

with logs.step(snakemake.log[0]):
    face_extraction.merge_qc(snakemake.input.tables, snakemake.output[0])
    batch_job.prune(snakemake.params.batches, snakemake.params.plans, snakemake.params.partial)
