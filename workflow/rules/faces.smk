rule faces:
    input:
        video=lambda w: video_path(w.video),
        segments="results/data/segments.parquet",
    output:
        faces="results/faces/{video}.parquet",
        qc="results/faces/{video}.qc.csv",
    params:
        faces=config["faces"],
    log:
        "results/logs/faces/{video}.log",
    benchmark:
        "results/benchmarks/faces/{video}.tsv"
    # One core: OpenCV and dlib are kept single-threaded so videos run in parallel instead.
    threads: 1
    resources:
        mem_mb=1500,
        runtime=60,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/faces.py"


rule faces_qc:
    input:
        lambda w: expand("results/faces/{video}.qc.csv", video=videos()),
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
