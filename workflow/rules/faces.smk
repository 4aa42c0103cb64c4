# Faces: one job per batch of videos, so that Python and the models start once per batch
# instead of once per clip (public corpora are thousands of clips of a few dozen frames).
# The batches are planned once, when Snakemake starts (FACES_PLAN, common.smk), from the
# annotation table alone (ferseq.faces.batch_plan), so every batch is a rule that names its
# per-video outputs, results/faces/{video}.parquet, which later stages read.


# Each batch's plan file (its videos, their files' stamps and planned segments), written by a
# local job. No input: the plan's digest is a parameter, so the job reruns exactly when its
# batch's plan changes (and then its batch, which reads the file), whatever other videos or the
# data stage do. A job rather than a start hook: Snakemake runs no hook of a module.
rule faces_plan:
    output:
        "results/faces/batches/{batch}.plan.json",
    log:
        "results/logs/faces/{batch}.plan.log",
    benchmark:
        "results/benchmarks/faces/{batch}.plan.tsv"
    # A few lines of JSON, written in Snakemake's own process (a local `run:` job: no conda env).
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        digest=lambda w: FACES_PLAN.digest(FACES_BATCHES[w.batch]),
    run:
        ferseq.faces.batch_plan.write_plan(
            FACES_PLAN, FACES_BATCHES[wildcards.batch], output[0]
        )


for _batch in FACES_PLAN.batches if FACES_PLAN else []:

    # The batch's plan file its only input (rule faces_plan), its digest a parameter: the batch
    # reruns exactly when its plan or the faces settings change, whatever other videos do.
    rule:
        name:
            f"faces_{_batch.name}"
        input:
            plan=f"results/faces/batches/{_batch.name}.plan.json",
        output:
            faces=[f"results/faces/{video}.parquet" for video in _batch.videos],
            qc=f"results/faces/batches/{_batch.name}.qc.csv",
        log:
            f"results/logs/faces/{_batch.name}.log",
        benchmark:
            f"results/benchmarks/faces/{_batch.name}.tsv"
        conda:
            "../../envs/ferseq.yaml"
        # One core: OpenCV and dlib are kept single-threaded so batches run in parallel instead.
        threads: 1
        resources:
            mem_mb=1500,
            runtime=ferseq.faces.batch_plan.runtime_minutes(
                _batch, config["faces"]["detector"]
            ),
        params:
            digest=FACES_PLAN.digest(_batch),
            faces=FACES_SETTINGS,
            videos_dir=config["data"]["videos"],
            partial=beside("qc", "..", ".partial", _batch.name),
        script:
            "../scripts/faces.py"


rule faces_qc:
    input:
        tables=faces_qc_tables,
        # Also the segment table: when it changes after a batch failed (a video added or its rows
        # fixed), this reruns, and through it the batch, even when the old qc.csv is still there.
        segments="results/data/segments.parquet",
    output:
        report(
            "results/faces/qc.csv",
            caption="../report/faces_qc.rst",
            category="Faces",
        ),
    log:
        "results/logs/faces/qc.log",
    benchmark:
        "results/benchmarks/faces/qc.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        batches=[batch.name for batch in FACES_PLAN.batches] if FACES_PLAN else [],
        plans=beside(0, "batches"),
        partial=beside(0, ".partial"),
    script:
        "../scripts/faces_qc.py"
