# Faces: one job per batch of videos, so that Python and the models start once per batch
# instead of once per clip (public corpora are thousands of clips of a few dozen frames).
# The batches are planned once, when Snakemake starts (FACES_PLAN, common.smk), from the
# annotation table alone (ferseq.faces.batch_plan), so every batch is a rule that names its
# per-video outputs, results/faces/{video}.parquet, which later stages read.


for _batch in FACES_PLAN.batches if FACES_PLAN else []:

    # No input: the batch's plan (its videos, their files' stamps and segments) is a parameter,
    # by its digest, so the batch reruns exactly when its plan or the faces settings change,
    # whatever other videos do, and a dry run says so without writing anything. The plan itself
    # is a file that the run's start writes (common.smk) and the job reads.
    rule:
        name:
            f"faces_{_batch.name}"
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
            plan=ferseq.faces.batch_plan.plan_file(FACES_PLANS, _batch.name),
            faces=FACES_SETTINGS,
            videos_dir=config["data"]["videos"],
            partial=f"results/faces/.partial/{_batch.name}",
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
        plans=FACES_PLANS,
        partial="results/faces/.partial",
    script:
        "../scripts/faces_qc.py"
