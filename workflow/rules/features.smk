# One job per fold: the fold's model is loaded once and run over every video's face frames,
# writing results/folds/{fold}/features/{video}.parquet for each and stats.csv (the fold's
# MLflow run). The folder is the job's output: any change to the set of videos changes the
# splits and the fold's model, so per-video jobs would never rerun fewer videos, only start
# the model (and Python) once per video.
rule features:
    input:
        model="results/folds/{fold}/frame_model/model.pt",
        faces=faces_inputs,
        segments="results/data/segments.parquet",
    output:
        directory("results/folds/{fold}/features"),
    log:
        "results/logs/folds/{fold}/features.log",
    benchmark:
        "results/benchmarks/folds/{fold}/features.tsv"
    conda:
        "../../envs/ferseq.yaml"
    # the main process and its frame_model.num_workers loader workers (sbatch --cpus-per-task)
    threads: config["frame_model"]["num_workers"] + 1
    resources:
        mem_mb=4000,
        runtime=720,
        gpu=1,
    params:
        faces=faces_files,
    script:
        "../scripts/features.py"
