# The landmark baseline of a fold: a per-frame classifier on the faces stage's normalised
# landmarks, trained on the fold's train frames (C chosen on val); the floor for the frame CNN.
rule landmark_baseline:
    input:
        faces=faces_inputs,
        segments="results/data/segments.parquet",
        splits="results/data/splits.parquet",
    output:
        model="results/folds/{fold}/landmark_baseline/model.json",
        metrics="results/folds/{fold}/landmark_baseline/metrics.json",
    log:
        "results/logs/folds/{fold}/landmark_baseline.log",
    benchmark:
        "results/benchmarks/folds/{fold}/landmark_baseline.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        faces=faces_files,
    script:
        "../scripts/landmark_baseline.py"


# Every method's predictions on the fold's test data (frames, windows, segments) first, then every
# score computed from that file.
rule evaluate:
    input:
        test="results/folds/{fold}/windows/test.parquet",
        # read beside the test windows when the sequence models were trained with windows.normalise: subject
        medians="results/folds/{fold}/windows/subject_medians.parquet",
        best="results/folds/{fold}/sequence_model/best.json",
        baseline="results/folds/{fold}/landmark_baseline/model.json",
        splits="results/data/splits.parquet",
        # the fine-tuned CNN-LSTM's test window probabilities, when the finetune stage runs
        finetuned=FINETUNE_TEST_WINDOWS if FINETUNE else [],
    output:
        predictions="results/folds/{fold}/evaluation/predictions.parquet",
        tables=expand(
            "results/folds/{{fold}}/evaluation/{method}.csv", method=EVAL_METHODS
        ),
        plots=report(
            expand(
                "results/folds/{{fold}}/evaluation/{method}.png", method=EVAL_METHODS
            ),
            caption="../report/confusion.rst",
            category="Evaluation",
            subcategory="fold {fold}",
        ),
    log:
        "results/logs/folds/{fold}/evaluate.log",
    benchmark:
        "results/benchmarks/folds/{fold}/evaluate.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/evaluate.py"


# The folds' predictions pooled: scores with subject-bootstrap intervals, paired differences, the verdict.
rule summary:
    input:
        predictions=expand(
            "results/folds/{fold}/evaluation/predictions.parquet", fold=FOLDS
        ),
        splits="results/data/split_summary.csv",
    output:
        csv=report(
            "results/evaluation/summary.csv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        md=report(
            "results/evaluation/summary.md",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        per_person=report(
            "results/evaluation/per_person.csv",
            caption="../report/per_person.rst",
            category="Evaluation",
        ),
        per_person_png=report(
            "results/evaluation/per_person.png",
            caption="../report/per_person.rst",
            category="Evaluation",
        ),
        differences_png=report(
            "results/evaluation/differences.png",
            caption="../report/differences.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/evaluation/summary.log",
    benchmark:
        "results/benchmarks/evaluation/summary.tsv"
    conda:
        "../../envs/ferseq.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        resamples=config["evaluation"]["resamples"],
        confidence=config["evaluation"]["confidence"],
        normalise=config["windows"]["normalise"],
        seed=config["seed"],
        # where the frame CNN started, said in summary.md and summary.csv
        frame_init=FRAME_INIT_TEXT,
    script:
        "../scripts/summary.py"
