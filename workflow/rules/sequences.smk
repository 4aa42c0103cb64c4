rule windows:
    input:
        # the fold's feature store: one {video}.parquet per video, written by one job
        features="results/folds/{fold}/features",
        segments="results/data/segments.parquet",
        splits="results/data/splits.parquet",
    output:
        train="results/folds/{fold}/windows/train.parquet",
        val="results/folds/{fold}/windows/val.parquet",
        test="results/folds/{fold}/windows/test.parquet",
        # each person's median features, for windows.normalise: subject (written whatever the setting)
        medians="results/folds/{fold}/windows/subject_medians.parquet",
        counts=report(
            "results/folds/{fold}/windows/counts.csv",
            caption="../report/window_counts.rst",
            category="Windows",
            subcategory="fold {fold}",
        ),
    log:
        "results/logs/folds/{fold}/windows.log",
    benchmark:
        "results/benchmarks/folds/{fold}/windows.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        length=config["windows"]["length"],
        overlap=windows_overlap(config["windows"], config["classes"]["names"]),
        missing_face=config["faces"]["missing_face"],
        classes=config["classes"]["names"],
        sampling=config["windows"]["sampling"],
        # only uniform sampling draws; with consecutive windows a change of draws reruns nothing
        draws=(
            config["windows"]["draws"]
            if config["windows"]["sampling"] == "uniform"
            else 1
        ),
        seed=config["seed"],
    script:
        "../scripts/windows.py"
