"""``MODEL_CARD.md`` of an exported bundle, written from its manifest (:mod:`ferseq.apply.manifest`) alone.

What the model predicts, the data it was trained and tested on, its scores
(with the evaluation's intervals when the run has them), the faces
settings, and the limits the run's summary states. Whatever the manifest
does not record (an older run, no evaluation) is said to be missing, never guessed.
"""

from __future__ import annotations

from typing import Any

from ferseq.common import initialisation

CARD_FILE = "MODEL_CARD.md"
UNIT_NOUNS = {"subject": "people", "video": "videos", "segment": "segments"}
METRICS = (("uar", "UAR"), ("war", "WAR"), ("macro_f1", "macro F1"))
ARCH_NAMES = {"lstm": "LSTM", "lstm2": "two-layer LSTM", "bilstm": "bidirectional LSTM", "gru": "GRU",
              "transformer": "temporal transformer"}
# The terms of the third-party models a bundle contains or needs (docs/licences.md lists them all).
LANDMARK_TERMS = (
    "dlib's 68-point shape predictor (`shape_predictor_68_face_landmarks.dat`: landmarks, tracking and alignment; "
    "the bundle's copy if `faces.landmarks_model` names one, else the face-recognition-models package's): released "
    "by dlib's author into the public domain, but trained on the iBUG 300-W dataset, whose licence excludes "
    "commercial use; at the dataset creators' request the model is not to be used in a commercial product. "
    "**This bundle is therefore for non-commercial use** unless that model is replaced by one whose terms allow "
    "your use.")
DETECTOR_TERMS = {
    "hog": "dlib's HOG frontal face detector, built into dlib (Boost Software License 1.0).",
    "mmod": "dlib's MMOD CNN face detector (`mmod_human_face_detector.dat`), released by dlib's author into the "
            "public domain.",
    "opencv_dnn": "OpenCV's ResNet-10 SSD face detector (`res10_300x300_ssd_iter_140000.caffemodel`, "
                  "`deploy.prototxt`), distributed with OpenCV's samples under OpenCV's licence (Apache 2.0 from "
                  "OpenCV 4.5, 3-clause BSD before); OpenCV does not document its training data.",
    "none": "no face detector (each frame is taken as the face).",
}
FEATURE_NAMES = {"embedding": "the frame CNN's 512-d embeddings", "landmarks": "the 68 pose-normalised landmarks",
                 "both": "the frame CNN's embeddings and the 68 pose-normalised landmarks"}


def render(manifest: dict[str, Any]) -> str:
    """The model card (Markdown) of a bundle's manifest."""
    frame, sequence = manifest["models"]["frame_model"], manifest["models"]["sequence_model"]
    baseline = manifest["models"].get("landmark_baseline") or {}
    classes, length = manifest["classes"], manifest["window_length"]
    arch = ARCH_NAMES.get(sequence.get("arch"), sequence.get("arch", "sequence model"))
    lines = [
        f"# Model card: {arch} over {length}-frame windows, fold {manifest['fold']}",
        "",
        f"Exported by ferseq {manifest['ferseq_version']} (bundle format {manifest['format_version']}) on "
        f"{manifest['created']} from `{manifest.get('exported_from', '?')}`; config hash "
        f"`{manifest.get('config_hash') or 'not recorded'}`. `manifest.json` holds the SHA-256 of every file and "
        "`ferseq predict --run THIS_FOLDER` checks them before it loads anything.",
        "",
        "## What it predicts",
        "",
        f"For every frame of a video, the probability of each of {len(classes)} classes: "
        f"{', '.join(classes)}. Two models give them: a per-frame CNN ({frame.get('backbone', '?')}, "
        f"{frame.get('input_size', '?')} px aligned face crops"
        f"{', initialised from ' + frame['initialised_from'] if frame.get('initialised_from') else ''}), "
        f"and a sequence model ({arch}, hidden size "
        f"{sequence.get('hidden', '?')}) over the window of the last {length} frames of "
        f"{FEATURE_NAMES.get(manifest['features'], manifest['features'])}. Runs of one CNN-LSTM class become the "
        "predicted segments. A face showing anything else still gets one of these classes.",
        "",
        "Use: `ferseq predict VIDEO --run THIS_FOLDER -o OUT`.",
        "",
        "## Faces",
        "",
        "New videos' faces are found and cropped exactly as in training:",
        "",
        *[f"- `{key}`: {value}" for key, value in manifest["faces"].items() if value is not None],
        "",
        "## Data",
        "",
        *_data(manifest.get("data"), classes),
        "",
        "## Scores",
        "",
        *_scores(manifest, frame, sequence, baseline),
        "",
        "## Known limits",
        "",
        *_limits(manifest, frame),
        "",
        "## Licences and terms",
        "",
        *terms(manifest),
        "",
    ]
    return "\n".join(lines)


def _data(data: dict[str, Any] | None, classes: list[str]) -> list[str]:
    if not data:
        return ["Not recorded: the results folder had no `data/splits.parquet` and `data/segments.parquet`."]
    splits = ("train", "val", "test")
    lines = ["This fold's annotated data: the models learnt from train; val chose the epochs, the grid point and "
             "the landmark baseline's C; test is what the test scores below were computed on.", "",
             "| split | videos | subjects | segments | frames |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {data[s]['videos']} | {data[s]['subjects']} | {sum(data[s]['segments'].values())} | "
              f"{sum(data[s]['frames'].values())} |" for s in splits]
    lines += ["", "Segments (frames) per class:", "", "| class | " + " | ".join(splits) + " |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | " + " | ".join(f"{data[s]['segments'].get(name, 0)} ({data[s]['frames'].get(name, 0)})"
                                         for s in splits) + " |" for name in classes]
    return lines


def _interval(row: dict[str, Any]) -> str:
    if row.get("value") is None:
        return "–"
    text = f"{row['value']:.2f}"
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return text


def _scores(manifest: dict[str, Any], frame: dict, sequence: dict, baseline: dict) -> list[str]:
    def f1(value: Any) -> str:
        return "not recorded" if value is None else f"{100 * value:.2f}"

    lines = ["Validation (this fold's val split; it chose what was kept, so it is optimistic), macro F1 in percent:",
             "",
             f"- frame CNN: {f1(frame.get('val_macro_f1'))} (best epoch {frame.get('best_epoch', '?')})",
             f"- {ARCH_NAMES.get(sequence.get('arch'), sequence.get('arch', '?'))}: {f1(sequence.get('val_macro_f1'))} "
             "(best epoch "
             f"{sequence.get('best_epoch', '?')}, lr {sequence.get('lr', '?')}, "
             f"dropout {sequence.get('dropout', '?')})"]
    if baseline:
        lines.append(f"- landmark baseline: {f1(baseline.get('val_macro_f1'))} (C = {baseline.get('C', '?')})")
    scores = manifest.get("scores") or {}
    run_rows, fold_rows = scores.get("run") or [], scores.get("fold") or []
    if run_rows:
        table: dict[str, dict[str, dict]] = {}
        for row in run_rows:
            table.setdefault(row.get("name") or row["method"], {})[row["metric"]] = row
        unit = (scores.get("limits") or {}).get("split_unit")
        confidence = (scores.get("limits") or {}).get("confidence")
        level = f"{100 * confidence:g}% intervals" if confidence else "intervals (of a level not recorded)"
        lines += ["", f"Test, every fold of the run pooled ({run_rows[0].get('folds', '?')} fold(s), each fold's "
                  f"models on its own test part), segment level, percent, with {level} from a bootstrap over the "
                  f"test {UNIT_NOUNS.get(unit, 'units')}:", "",
                  "| method | " + " | ".join(name for _, name in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
        lines += [f"| {name} | " + " | ".join(_interval(by.get(key, {})) for key, _ in METRICS) + " |"
                  for name, by in table.items()]
    names = {row["method"]: row.get("name") or row["method"] for row in run_rows}
    if fold_rows and not (run_rows and run_rows[0].get("folds") == 1):  # one fold: the run's table is this fold's
        levels = {row["level"] for row in fold_rows}
        shown = [r for r in fold_rows if r["level"] == "segment"] if "segment" in levels else fold_rows
        lines += ["", "Test, this fold's models on its own test split, percent (no intervals):", "",
                  "| method | level | " + " | ".join(name for _, name in METRICS) + " | items |",
                  "|---|---|" + "---:|" * (len(METRICS) + 1)]
        lines += [f"| {names.get(r['method'], r['method'])} | {r['level'] or 'not recorded'} | "
                  + " | ".join("–" if r[key] is None else f"{r[key]:.2f}" for key, _ in METRICS)
                  + f" | {r['support'] if r['support'] is not None else '–'} |" for r in shown]
    if not run_rows and not fold_rows:
        lines += ["", "No test scores: the results folder it was exported from had no evaluation (an older run, or "
                  "the evaluation had not run). Run the workflow to the end and export again for them."]
    elif not run_rows:
        lines += ["", "No intervals: the run's `evaluation/summary.csv` is missing or from an older ferseq."]
    return lines


def _limits(manifest: dict[str, Any], frame: dict) -> list[str]:
    limits = (manifest.get("scores") or {}).get("limits") or {}
    data = manifest.get("data") or {}
    config = manifest.get("config") or {}
    lines = []
    unit = limits.get("split_unit") or (config.get("split") or {}).get("unit")
    shared = data.get("shared_subjects")
    if limits.get("identity_leak") or shared:
        how = f"the split is by {unit}, not by subject" if unit and unit != "subject" else "the split lets people leak"
        who = f": this fold's test subjects also in its train or val split: {len(shared)} ({', '.join(shared[:3])}" \
              f"{', ...' if len(shared) > 3 else ''})" if shared else ""
        lines.append(f"- **Identity leak**: {how}{who}. The test scores are optimistic for people the model has "
                     "never seen.")
    elif shared is not None:
        lines.append(f"- The split is by {unit or 'subject'}: no test subject of this fold is in its train or val "
                     "split.")
    init = initialisation.choice(config) if config else None
    if init == "none":
        lines.append(f"- **From-scratch CNN**: the frame CNN ({frame.get('backbone', '?')}) was trained from random "
                     "weights (frame_model.init: none), not from ImageNet weights as the reference protocol is.")
    elif not config:
        lines.append("- The config was not recorded (an older run): whether the frame CNN started from ImageNet "
                     "weights is not known.")
    below, folds = limits.get("cnn_below_landmarks_folds"), limits.get("folds")
    if below:
        lines.append(f"- **CNN below the landmark floor**: the frame CNN scored below the landmark baseline on {below} "
                     f"of {folds or '?'} fold(s) of the test data; a sound frame model clears it, so read its and the "
                     "CNN-LSTM's scores with care.")
    elif below is None:
        lines.append("- Whether the frame CNN clears the landmark baseline is not recorded (no run summary).")
    if ((manifest.get("models") or {}).get("sequence_model") or {}).get("normalise") == "subject":
        lines.append("- **Per-person normalisation** (windows.normalise: subject): the sequence model reads each "
                     "frame's features minus its person's median over all of their frames, test people included "
                     "(transductive); `ferseq predict` takes a video's own face frames as its person's, so a short "
                     "video or one with a single expression shifts its inputs.")
    lines.append(f"- It knows {len(manifest['classes'])} classes only, and faces found by the `faces` settings above; "
                 "a frame without a face gets no CNN probabilities.")
    return lines


def terms(manifest: dict[str, Any]) -> list[str]:
    """The licences and terms of the third-party models the bundle contains or needs, and of its training data."""
    detector = (manifest.get("faces") or {}).get("detector")
    config = manifest.get("config") or {}
    frame = config.get("frame_model") or {}
    backbone = frame.get("backbone") or manifest["models"]["frame_model"].get("backbone", "?")
    init = initialisation.choice(config) if config else None
    lines = ["ferseq itself is MIT-licensed; the models below keep their own terms, and the model is bound by the "
             "terms of the data it was trained on.", "",
             f"- Landmarks: {LANDMARK_TERMS}",
             f"- Face detector: {DETECTOR_TERMS.get(detector, f'`{detector}`: terms not recorded by ferseq.')}"]
    if init == "imagenet":
        lines.append(f"- Frame CNN: `{backbone}` started from timm's ImageNet weights. timm's code is Apache 2.0; "
                     "the weights carry the terms of their source and of ImageNet, whose terms of access allow "
                     "non-commercial research and educational use.")
    elif init == "none":
        lines.append(f"- Frame CNN: `{backbone}` trained from random weights: no third-party weights.")
    elif init == "pretrain":
        images = (config.get("pretrain") or {}).get("images") or {}
        lines.append(f"- Frame CNN: `{backbone}` started from {initialisation.describe(config)}, itself started "
                     f"from {initialisation.describe(config, 'pretrain')}: the image set's licence or agreement "
                     f"({images.get('format', '?')}; the public sets allow non-commercial research use) and those "
                     "weights' terms apply.")
    elif init:
        lines.append(f"- Frame CNN: `{backbone}` started from the checkpoint `{init}`: its terms apply.")
    else:
        lines.append(f"- Frame CNN: `{backbone}`; whether it started from ImageNet weights is not recorded (an "
                     "older run), so their terms may apply.")
    lines.append("- Training data: the videos and annotations of the run it was exported from (see Data above): "
                 "their licence or agreement binds this model and its use.")
    return lines
