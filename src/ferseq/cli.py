"""The ``ferseq`` command (also ``python -m ferseq``).

``ferseq import <format> <path> -o annotations.csv`` turns a public dataset's
own layout into the annotation table (see :mod:`ferseq.data.importers`);
``ferseq ui`` opens the MLflow UI on a config's runs; ``ferseq mlflow sync`` sends
what jobs kept while their tracking server was away; ``ferseq predict`` applies
a trained model to new videos and ``ferseq export`` bundles one for another
machine (see :mod:`ferseq.apply.predict`); ``ferseq compare A B`` sets two
runs side by side, paired by person (:mod:`ferseq.evaluation.run_comparison`).
Errors a user can cause print one message, no traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ferseq.common import logs
from ferseq.common.errors import FerseqError
from ferseq.data import importers

EXIT_USER_ERROR = 2

LAYOUTS = {
    "ckplus": ("CK+ (Extended Cohn-Kanade)",
               "cohn-kanade-images/Sxxx/yyy/*.png image sequences, Emotion/Sxxx/yyy/*_emotion.txt labels; "
               "one sequence folder = one video, subject = Sxxx; unlabelled sequences are skipped"),
    "ravdess": ("RAVDESS",
                "Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4; full audio-video (01) and video-only (02) clips, "
                "audio-only (03) skipped; subject = actor AA, group = sex (odd male, even female)"),
    "cremad": ("CREMA-D",
               "VideoFlash/AAAA_SSS_EEE_LL.flv; subject = actor AAAA; group = sex from VideoDemographics.csv when present"),
    "folders": ("class folders (AFEW/DFEW style)",
                "<label>/<clip>, a clip being a video file or an image-sequence folder; subjects from "
                "--subject-regex, --subjects or --subject-from-clip"),
    "dfew": ("DFEW, its 5 official folds (single-labelled clips)",
             "EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv (or (single_labeled); video_name,label "
             "1-7), frame folders "
             "Clip/clip_224x224/NNNNN/ (or Clip/jpg_256, or --clips); folds = each clip's test fold"),
    "mafw": ("MAFW, its 5 official folds (single-expression clips, 11 classes)",
             "split/single/no_caption/set_{1..5}/{train,test}.txt (or Train & Test Set/single/no_caption/...; clip "
             "name and label word), frame folders data/frames/NNNNN/ (or videos data/clips/, clips/, or --clips); "
             "folds = each clip's test fold"),
    "ferv39k": ("FERV39k, its official train/test split",
                "4_setups/All_scenes/{train_All,test_All}.csv (clip path and label word), frame folders "
                "2_ClipsforFaceCrop/<scene>/<label>/NNNN/ (or --clips); split = train or test, group = scene"),
}


def _onset_apex(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ferseq", description="ferseq: video facial-emotion recognition with sequence models")
    commands = top.add_subparsers(dest="command", required=True, metavar="command")
    imp = commands.add_parser(
        "import", help="write the annotation table of a public dataset from its own layout",
        description="Turn a dataset's own layout into ferseq's annotation table (video, subject, label, start_frame, "
                    "end_frame, group). Video paths are relative to the dataset folder: use it as data.videos. "
                    "Every path not used is listed, with the reason, in <output>.skipped.csv and on stderr.")
    formats = imp.add_subparsers(dest="format", required=True, metavar="format")
    for name, (title, layout) in LAYOUTS.items():
        sub = formats.add_parser(name, help=f"{title}: {layout}", description=f"{title}. Layout: {layout}.")
        sub.add_argument("path", help="the dataset's root folder (becomes data.videos)")
        sub.add_argument("-o", "--output", required=True, help="annotation table to write, .csv or .parquet")
        sub.add_argument("--count-frames", choices=["decode", "header"], default="decode",
                         help="decode counts each clip's frames exactly (default); header trusts the container (faster)")
        sub.add_argument("--workers", type=int, default=4, help="clips probed in parallel (default 4)")
        if name == "ckplus":
            sub.add_argument("--onset-apex", nargs=2, type=_onset_apex, metavar=("N", "M"),
                             help="label the first N frames neutral and the last M frames with the sequence's emotion "
                                  "(default: the whole sequence is one segment with the emotion)")
        if name in ("dfew", "mafw", "ferv39k"):
            sub.add_argument("--clips", metavar="FOLDER",
                             help="the folder below the dataset root that holds the clips (frame folders or video "
                                  "files), when it is not the release's own")
        if name == "folders":
            who = sub.add_mutually_exclusive_group()
            who.add_argument("--subject-regex", metavar="REGEX",
                             help="regular expression with a named group 'subject', searched in each clip name, "
                                  "e.g. '^(?P<subject>[^_]+)_'")
            who.add_argument("--subjects", metavar="CSV", help="table with columns clip,subject (clip: path below the root, name, or name without suffix)")
            who.add_argument("--subject-from-clip", action="store_true", help="each clip is its own subject (identity may leak across splits)")
    ui = commands.add_parser(
        "ui", help="start the MLflow UI on a config's tracking store and print the page of its runs",
        description="Start `mlflow ui` on the config's local store (mlflow.tracking_uri) and print the address of the "
                    "experiment's runs table, opened as model training (MLflow 3 otherwise opens it on GenAI traces). "
                    "With an http(s) tracking server, print its runs page instead.")
    ui.add_argument("--config", default="config.yaml", help="the workflow config (default config.yaml)")
    ui.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")

    pred = commands.add_parser(
        "predict", help="apply a trained model to new videos: per-frame table, segments CSV, timeline PNG",
        description="Run a trained run's faces settings, frame CNN and selected sequence model over new videos. Per "
                    "video, OUT gets {video}.parquet (one row per frame), {video}.csv (predicted segments in the "
                    "annotation table's format), {video}.png (timeline) and with --annotate {video}.annotated.mp4. "
                    "Exit status 1 when any video failed or was cut short (decoding stopped before the frame count "
                    "of its header: a damaged file; named on stderr), 2 on a usage error.")
    pred.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER",
                      help="video files, image-sequence folders, or folders of videos")
    pred.add_argument("--run", required=True, help="a finished results folder (e.g. results) or a bundle from `ferseq export`")
    pred.add_argument("--fold", type=int, help="the fold's models (default: the fold with the best val macro F1)")
    pred.add_argument("-o", "--output", required=True, help="folder for the outputs")
    pred.add_argument("--stride", type=int, default=1, help="frames between scored windows (default 1: every frame)")
    pred.add_argument("--min-segment", type=int, default=8, help="shortest predicted segment kept, frames (default 8)")
    pred.add_argument("--annotate", action="store_true", help="also write the video with the face box and labels drawn")
    pred.add_argument("--device", help="torch device for the frame CNN (default: cuda if available, else cpu)")
    pred.add_argument("--batch-size", type=int, default=64, help="frames per CNN batch (default 64)")
    pred.add_argument("--workers", type=int, default=2, help="crop-decoding workers (default 2)")
    pred.add_argument("--finetuned", action="store_true",
                      help="score the windows with the fold's fine-tuned CNN-LSTM (folds/N/finetune/model.pt of a run "
                           "with finetune.enabled; a results folder only) instead of its selected sequence model")

    tracking = commands.add_parser("mlflow", help="MLflow housekeeping: send what jobs could not deliver")
    tracking_commands = tracking.add_subparsers(dest="mlflow_command", required=True, metavar="command")
    sync = tracking_commands.add_parser(
        "sync", help="send the MLflow calls that jobs kept while their tracking server was unreachable",
        description="Jobs log MLflow runs through a journal beside their log file (results/logs/.../*.mlflow/); "
                    "what a job could not deliver stays there. This sends it, in order, to the tracking server "
                    "each journal names, and removes the journals that are complete. Exit status 1 when something "
                    "is still pending.")
    sync.add_argument("folders", nargs="*", default=["results/logs"], metavar="FOLDER",
                      help="folders (searched recursively) or journal files (default results/logs)")
    sync.add_argument("--wait", type=float, default=0.0,
                      help="seconds to keep retrying an unreachable server (default 0: one try)")

    cmp = commands.add_parser(
        "compare", help="two finished runs on the same test people: each method's A − B, paired by person",
        description="Compare two finished runs of one study that differ in a setting (e.g. frame_model.init: pretrain "
                    "against imagenet): for every method both scored, at segment level and at its own level, each "
                    "run's pooled UAR, WAR and macro F1, the difference A − B with a bootstrap interval over the "
                    "test people (the same resamples for both runs) and the sign-flip p-value of that difference. "
                    "The runs must have scored the same test segments (same annotations and split). Prints the "
                    "comparison; -o also writes comparison.md and comparison.csv.")
    cmp.add_argument("run_a", metavar="A", help="results folder of run A (e.g. results, or the run's working directory)")
    cmp.add_argument("run_b", metavar="B", help="results folder of run B")
    cmp.add_argument("-o", "--output", help="folder for comparison.md and comparison.csv")
    cmp.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    cmp.add_argument("--confidence", type=float, default=0.95, help="interval confidence (default 0.95)")
    cmp.add_argument("--seed", type=int, default=42, help="seed of the resamples and sign patterns (default 42)")

    exp = commands.add_parser(
        "export", help="bundle one fold's trained models and settings into a folder that predict reads anywhere",
        description="Copy one fold's frame model, selected sequence model, landmark baseline and faces detector "
                    "files into a new folder with manifest.json (ferseq and format versions, classes, window length, "
                    "data summary, val and test scores, config, the SHA-256 of every file) and MODEL_CARD.md. "
                    "`ferseq predict --run BUNDLE` checks every checksum before it loads anything.")
    exp.add_argument("--run", required=True, help="a finished results folder (e.g. results)")
    exp.add_argument("--fold", type=int, help="the fold (default: the best val macro F1)")
    exp.add_argument("-o", "--output", required=True, help="the bundle folder to create")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(None)
    try:
        if args.command == "import":
            return _import(args)
        if args.command == "ui":
            return _ui(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "mlflow":
            return _mlflow_sync(args)
        if args.command == "compare":
            from ferseq.evaluation import run_comparison

            print(run_comparison.run(args.run_a, args.run_b, args.output, args.resamples, args.seed, args.confidence),
                  end="")
            return 0
        if args.command == "export":
            from ferseq.apply import predict

            out = predict.export(args.run, args.output, args.fold)
            print(f"bundle written to {out} (what it is: {out / 'MODEL_CARD.md'})", file=sys.stderr)
            return 0
    except FerseqError as err:
        print(f"ferseq: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0  # pragma: no cover - argparse requires a command


def _import(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in importers.OPTIONS[args.format]}
    result = importers.import_dataset(args.format, args.path, args.output, count_frames=args.count_frames,
                                      workers=args.workers, **options)
    print(result.report(args.output), file=sys.stderr)
    return 0


def _ui(args: argparse.Namespace) -> int:
    import subprocess

    import yaml

    from ferseq.common import mlflow_runs

    path = Path(args.config)
    if not path.is_file():
        raise FerseqError(f"--config: {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    uri = config.get("mlflow", {}).get("tracking_uri", mlflow_runs.DEFAULT_URI)
    if not mlflow_runs.is_local_store(config):
        print(f"runs of {config.get('experiment', 'ferseq')}: {mlflow_runs.runs_url(config, uri)}")
        return 0
    if not mlflow_runs._sqlite_path(uri).is_file():
        raise FerseqError(f"mlflow.tracking_uri: {uri} has no store yet; run the workflow first")
    print(f"runs of {config.get('experiment', 'ferseq')}: {mlflow_runs.runs_url(config, f'http://{args.host}:{args.port}')}",
          flush=True)
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                            "--host", args.host, "--port", str(args.port)])


def _mlflow_sync(args: argparse.Namespace) -> int:
    from ferseq.common import mlflow_outbox

    sent, pending = mlflow_outbox.sync(args.folders, wait=args.wait)
    print(f"MLflow: {len(sent)} run journal(s) sent in full, {len(pending)} still pending", file=sys.stderr)
    return 1 if pending else 0


def _predict(args: argparse.Namespace) -> int:
    from ferseq.apply import predict

    results, failed = predict.predict_many(args.videos, args.run, args.output, fold=args.fold, stride=args.stride,
                                           min_segment=args.min_segment, annotate=args.annotate, device=args.device,
                                           batch_size=args.batch_size, num_workers=args.workers,
                                           finetuned=args.finetuned)
    for line in predict.summary_lines(results, failed):
        print(line, file=sys.stderr)
    return predict.exit_status(results, failed)
