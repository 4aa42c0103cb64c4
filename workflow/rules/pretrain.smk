# Pretraining (off unless frame_model.init is pretrain): the frame network trained on a static
# facial-expression image set before the folds, which then start from it. Two jobs: the images'
# faces found and aligned as the videos' are, then the training (the frame model's own loop).
if config["pretrain"].get("images"):

    rule pretrain_faces:
        input:
            # the image set (its folder or listing file; FERPlus's FER2013 pixels when named): a changed
            # set reruns the stage
            images=local(config["pretrain"]["images"]["path"]),
            fer2013=(
                [local(config["pretrain"]["images"]["fer2013_csv"])]
                if config["pretrain"]["images"].get("fer2013_csv")
                else []
            ),
        output:
            faces="results/pretrain/faces.parquet",
            images="results/pretrain/images.parquet",
        log:
            "results/logs/pretrain/faces.log",
        benchmark:
            "results/benchmarks/pretrain/faces.tsv"
        conda:
            "../../envs/ferseq.yaml"
        # processes that find the faces (OpenCV and dlib single-threaded in each)
        threads: config["pretrain"]["threads"]
        resources:
            mem_mb=4000,
            runtime=1440,
        params:
            images=config["pretrain"]["images"],
            # the study's faces settings, with the image set's own detection settings
            faces={**FACES_SETTINGS, **config["pretrain"]["faces"]},
            # finished chunks of images, reused by the next attempt
            partial=beside("faces", ".partial"),
        script:
            "../scripts/pretrain_faces.py"

    rule pretrain:
        input:
            faces="results/pretrain/faces.parquet",
            images="results/pretrain/images.parquet",
            # the study's test people, whom the image set must not show
            splits="results/data/splits.parquet",
            weights=initial_weights_file(PRETRAIN_INIT),
        output:
            model="results/pretrain/model.pt",
            summary="results/pretrain/model.json",
            metrics=report(
                "results/pretrain/metrics.csv",
                caption="../report/pretrain_metrics.rst",
                category="Pretraining",
            ),
        log:
            "results/logs/pretrain/pretrain.log",
        benchmark:
            "results/benchmarks/pretrain/pretrain.tsv"
        conda:
            "../../envs/ferseq.yaml"
        # the main process and its frame_model.num_workers loader workers, as rule frame_model
        threads: config["frame_model"]["num_workers"] + 1
        resources:
            mem_mb=8000,
            runtime=1440,
            gpu=1,
        params:
            # the training state between attempts (removed when the job succeeds)
            resume=beside("model", ".resume"),
        script:
            "../scripts/pretrain.py"
