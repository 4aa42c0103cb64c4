# Faces: one job per batch of videos, so that Python and the models start once per batch
# instead of once per clip (public corpora are thousands of clips of a few dozen frames).
# The batches are planned when Snakemake starts, from the annotation table alone (stable,
# content-defined cuts of the sorted videos, about faces.batch_frames frames each; see
# ferseq.batches), so every batch is a rule that names its per-video outputs,
# results/faces/{video}.parquet, which later stages read as before.


include: "faces_plan.smk"


if FACES_BATCHES is not None:

    # One small CSV per batch: its videos' paths and kept segments (ferseq.faces_batch). A
    # checkpoint: Snakemake then re-evaluates the batches once it has run, and a batch whose CSV
    # is the same as when it last ran (checksum) is not rerun although the file is newer.
    checkpoint faces_segments:
        input:
            segments="results/data/segments.parquet",
            annotations=config["data"]["annotations"],
        output:
            [f"results/faces/batches/{batch.name}.segments.csv" for batch in FACES_BATCHES],
        params:
            videos=config["data"]["videos"],
            classes=config["classes"],
            min_segment_frames=config["data"]["min_segment_frames"],
            batch_frames=config["faces"]["batch_frames"],
        log:
            "results/logs/faces/segments.log",
        benchmark:
            "results/benchmarks/faces/segments.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../../envs/ferseq.yaml"
        script:
            "../scripts/faces_segments.py"

    for _batch in FACES_BATCHES:

        # The videos are not declared inputs: Snakemake keeps per output file the list of its
        # job's inputs, which for a batch would grow with the square of its size. A replaced
        # video changes the batch's stamp instead (a parameter); the segments CSV carries the rest.
        rule:
            name:
                f"faces_{_batch.name}"
            input:
                segments=lambda w, name=_batch.name: batch_segments(name),
            output:
                faces=[f"results/faces/{video}.parquet" for video in _batch.videos],
                qc=f"results/faces/batches/{_batch.name}.qc.csv",
            params:
                faces=FACES_SETTINGS,
                stamp=_batch.stamp,
                videos_dir=config["data"]["videos"],
                partial=f"results/faces/.partial/{_batch.name}",
            log:
                f"results/logs/faces/{_batch.name}.log",
            benchmark:
                f"results/benchmarks/faces/{_batch.name}.tsv"
            # One core: OpenCV and dlib are kept single-threaded so batches run in parallel instead.
            threads: 1
            resources:
                mem_mb=1500,
                runtime=ferseq.batches.runtime_minutes(_batch, config["faces"]["detector"]),
            conda:
                "../../envs/ferseq.yaml"
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
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/faces_qc.py"
