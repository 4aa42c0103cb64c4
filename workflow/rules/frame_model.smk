rule frame_model:
    input:
        faces=lambda w: expand("results/faces/{video}.parquet", video=videos()),
        segments="results/data/segments.parquet",
        splits="results/data/splits.parquet",
    output:
        model="results/folds/{fold}/frame_model/model.pt",
        metrics=report(
            "results/folds/{fold}/frame_model/metrics.csv",
            caption="../report/frame_model_metrics.rst",
            category="Frame model",
            subcategory="fold {fold}",
        ),
    params:
        faces=lambda w: {v: f"results/faces/{v}.parquet" for v in videos()},
    log:
        "results/logs/folds/{fold}/frame_model.log",
    benchmark:
        "results/benchmarks/folds/{fold}/frame_model.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/ferseq.yaml"
    script:
        "../scripts/frame_model.py"
