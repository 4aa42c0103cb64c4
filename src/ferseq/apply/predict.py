"""Apply a trained ferseq model to new videos: per-frame CNN and CNN-LSTM predictions, segments, a timeline.

A model comes from a finished results folder (one fold's frame model and its
selected sequence model) or from a bundle written by :func:`export`. The run's
own faces settings (kept in the frame model's checkpoint), classes, window
length and sequence-model inputs are used; nothing is trained or downloaded.

Each video goes through the same code as the workflow: the faces stage
(:func:`ferseq.faces.face_extraction.extract_faces`) over every frame, the feature stage
(:func:`ferseq.features.feature_extraction.extract_video`) with the fold's frame model, then the
sequence model on the window of ``length`` frames that ends at each frame
(every ``stride`` frames), built with ``faces.missing_face`` as the windows
stage builds them. So predict's per-frame probabilities are the feature
store's, and its window probabilities the selected model's on those windows.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ferseq.apply import manifest, model_card
from ferseq.common import model_files
from ferseq.common.errors import FerseqError
from ferseq.common.outputs import atomic_path
from ferseq.data import videos
from ferseq.evaluation import landmark_baseline
from ferseq.faces import face_extraction
from ferseq.features import feature_extraction
from ferseq.finetune import cnn_lstm
from ferseq.sequence_model import grid_search
from ferseq.sequences import subject_medians, windows

log = logging.getLogger(__name__)

# A bundle's files (besides the faces detector files, under their own names); see ferseq.apply.manifest.
FRAME_FILE, SEQUENCE_FILE, BASELINE_FILE = "frame_model.pt", "sequence_model.pt", "landmark_baseline.json"
DETECTOR_KEYS = ("dnn_model", "dnn_prototxt", "mmod_model", "landmarks_model")


class ModelNotFound(FerseqError):
    """A results folder or bundle without the trained model that predict needs; the message names what is missing."""


@dataclass
class Bundle:
    """Everything predict needs from a trained run."""

    frame_model: Path
    sequence_model: Path
    classes: list[str]
    faces: dict[str, Any]
    window_length: int
    features: str
    fold: int
    metrics: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    source: str = ""
    landmark_baseline: Path | None = None
    # windows.normalise the sequence model was trained with; "subject": a video's own frames are its person's
    normalise: str = "none"
    # with --finetuned: the fold's fine-tuned CNN-LSTM (finetune/model.pt), which scores the windows
    finetuned: Path | None = None


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelNotFound(f"{path}: missing ({what})")
    return path


def _folds(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "folds").glob("*") if p.name.isdigit())


def is_bundle(run: str | Path) -> bool:
    """Whether ``run`` is a bundle (of any ferseq version) rather than a results folder."""
    return (Path(run) / manifest.MANIFEST).is_file() or (Path(run) / manifest.OLD_BUNDLE).is_file()


def load_run(run: str | Path, fold: int | None = None, finetuned: bool = False) -> Bundle:
    """The model of a results folder (``fold``, default the fold whose selected sequence model has the best val
    macro F1) or of an exported bundle (its checksums verified before any of its files is read).

    Every model file is read as data only (:mod:`ferseq.common.model_files`); one
    that is not is an error naming it.
    """
    bundle = _load(Path(run), fold)[0]
    return _with_finetuned(bundle, Path(run)) if finetuned else bundle


def _with_finetuned(bundle: Bundle, run: Path) -> Bundle:
    """``bundle`` with its fold's fine-tuned CNN-LSTM (``folds/{fold}/finetune/model.pt`` of a results folder)."""
    if is_bundle(run):
        raise ModelNotFound(f"--finetuned: {run} is a bundle, and bundles do not carry the fine-tuned CNN-LSTM; "
                            "predict with --run RESULTS (the results folder of a run with finetune.enabled)")
    path = _need(run / "folds" / str(bundle.fold) / "finetune" / "model.pt",
                 f"the fine-tuned CNN-LSTM of fold {bundle.fold}: run the workflow with finetune.enabled: true")
    bundle.finetuned, bundle.source = path, f"{bundle.source}, fine-tuned CNN-LSTM"
    return bundle


def _load(run: Path, fold: int | None) -> tuple[Bundle, dict[str, Any], dict[str, Any]]:
    """The bundle of ``run``, with its frame and sequence checkpoints' contents."""
    if is_bundle(run):
        info = manifest.verify(run)  # before anything of it is read
        missing = [name for name in (FRAME_FILE, SEQUENCE_FILE, BASELINE_FILE) if name not in info["files"]]
        faces_cfg = dict(info.get("faces") or {})
        for key in DETECTOR_KEYS:
            if faces_cfg.get(key):  # files copied into the bundle, named relative to it
                missing += [] if faces_cfg[key] in info["files"] else [f"{faces_cfg[key]} (faces.{key})"]
                faces_cfg[key] = str(run / faces_cfg[key])
        if missing:
            raise manifest.BundleError(f"{run / manifest.MANIFEST}: lists no {', '.join(missing)}; "
                                       "export the run again")
        if fold is not None and fold != info["fold"]:
            raise ModelNotFound(f"--fold {fold}: the bundle {run} holds the models of fold {info['fold']} only")
        frame_path, sequence_path, baseline = run / FRAME_FILE, run / SEQUENCE_FILE, run / BASELINE_FILE
        landmark_baseline.load(baseline)  # a pickle in its place is refused here, unread
        fold, source = int(info["fold"]), f"bundle {run}"
    else:
        frame_path, sequence_path, fold = _results_models(run, fold)
        baseline = run / "folds" / str(fold) / "landmark_baseline" / "model.json"
        baseline, faces_cfg, source = baseline if baseline.is_file() else None, None, f"{run} fold {fold}"
    checkpoint = model_files.read_torch(frame_path, "frame model")
    if "faces" not in checkpoint:
        raise ModelNotFound(f"{frame_path}: made by an older ferseq without its faces settings; retrain the frame "
                            "model (or export from a newer run)")
    _, sequence = grid_search.load_model(sequence_path)
    bundle = Bundle(frame_path, sequence_path, list(checkpoint["arch"]["classes"]),
                    faces_cfg if faces_cfg is not None else dict(checkpoint["faces"]),
                    int(sequence.get("window_length", 16)), sequence.get("features", "embedding"), fold,
                    {"sequence_model": sequence.get("metrics", {}), "frame_model": {
                        k: checkpoint.get(k) for k in ("best_epoch", "val_loss", "val_macro_f1")}},
                    checkpoint.get("config_hash"), source, baseline, sequence.get("normalise", "none"))
    return bundle, checkpoint, sequence


def _results_models(run: Path, fold: int | None) -> tuple[Path, Path, int]:
    """The frame model and selected sequence model of a results folder's ``fold`` (default: the best val macro F1)."""
    if not run.is_dir():
        raise ModelNotFound(f"{run}: no such results folder or bundle")
    folds = _folds(run)
    if not folds:
        raise ModelNotFound(f"{run}: no folds/ in it; give the results folder of a finished run (e.g. results) "
                            f"or a bundle from `ferseq export`")
    if fold is None:
        scored = {f: json.loads(p.read_text()) for f in folds
                  if (p := run / "folds" / str(f) / "sequence_model" / "best.json").is_file()}
        if not scored:
            raise ModelNotFound(f"{run}: no fold has a selected sequence model "
                                f"(folds/*/sequence_model/best.json); has the run finished?")
        fold = max(scored, key=lambda f: (scored[f]["val_macro_f1"], -scored[f]["val_loss"]))
    elif fold not in folds:
        raise ModelNotFound(f"{run}: no fold {fold} (folds: {folds})")
    base = run / "folds" / str(fold)
    frame_path = _need(base / "frame_model" / "model.pt", f"the frame model of fold {fold}")
    best = json.loads(_need(base / "sequence_model" / "best.json", f"the selected sequence model of fold {fold}")
                      .read_text())
    # best.json names the model as the run saw it (relative to its working directory): take {arch}/{point}.pt
    # below this fold's sequence_model/, so a moved or copied results folder still works.
    named = Path(best["model"])
    sequence_path = _need(base / "sequence_model" / named.parent.name / named.name,
                          f"the selected sequence model of fold {fold}")
    return frame_path, sequence_path, fold


def export(run: str | Path, out_dir: str | Path, fold: int | None = None) -> Path:
    """Write a self-contained bundle of one fold's models and settings, which :func:`load_run` reads anywhere.

    The bundle holds the frame model, the selected sequence model, the
    landmark baseline, the faces detector files the run used, ``MODEL_CARD.md``
    and ``manifest.json`` (:mod:`ferseq.apply.manifest`: what the model is, and the
    SHA-256 of every other file).
    """
    run, out_dir = Path(run), Path(out_dir)
    if is_bundle(run):
        raise FerseqError(f"--run: {run} is a bundle already; export reads a results folder (to move a bundle, "
                          "copy its folder)")
    bundle, frame, sequence = _load(run, fold)
    base = run / "folds" / str(bundle.fold) / "landmark_baseline"
    if bundle.landmark_baseline is None:
        if (base / "model.pkl").is_file():
            raise model_files.ModelFileError(
                f"{base / 'model.pkl'}: a pickled landmark baseline from an older ferseq, which ferseq never loads; "
                f"rebuild it as {base / 'model.json'} (run the workflow again: snakemake --cores N) and export again")
        raise ModelNotFound(f"{base / 'model.json'}: missing (the landmark baseline of fold {bundle.fold})")
    landmark_baseline.load(bundle.landmark_baseline)
    if out_dir.exists():
        raise FerseqError(f"-o: {out_dir} exists; give a new folder")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy2(bundle.frame_model, tmp / FRAME_FILE)
        shutil.copy2(bundle.sequence_model, tmp / SEQUENCE_FILE)
        shutil.copy2(bundle.landmark_baseline, tmp / BASELINE_FILE)
        faces_cfg = dict(bundle.faces)
        for key in DETECTOR_KEYS:
            if faces_cfg.get(key):  # detector files travel with the bundle
                source = Path(faces_cfg[key])
                if not source.is_file():
                    raise ModelNotFound(f"faces.{key}: {source} (used by this run) does not exist here")
                shutil.copy2(source, tmp / source.name)
                faces_cfg[key] = source.name
        info = manifest.new(
            exported_from=f"{run.resolve()} fold {bundle.fold}", fold=bundle.fold, classes=bundle.classes,
            window_length=bundle.window_length, features=bundle.features, faces=faces_cfg,
            models=_describe_models(frame, sequence, base / "metrics.json"),
            data=manifest.data_summary(run, bundle.fold), scores=manifest.evaluation_scores(run, bundle.fold),
            # the grid point records its config (ferseq's own runs since the manifest); older ones only a hash
            config=sequence.get("config"), config_hash=sequence.get("config_hash") or bundle.config_hash)
        (tmp / model_card.CARD_FILE).write_text(model_card.render(info))
        manifest.write(tmp, info)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _describe_models(frame: dict[str, Any], sequence: dict[str, Any], baseline_metrics: Path) -> dict[str, Any]:
    """What the manifest says of each model: its file, architecture and val scores (from its checkpoint)."""
    def pick(source: dict[str, Any], *keys: str) -> dict[str, Any]:
        return {k: source.get(k) for k in keys}

    baseline = json.loads(baseline_metrics.read_text()) if baseline_metrics.is_file() else {}
    return {"frame_model": {"file": FRAME_FILE, **pick(frame["arch"], "backbone", "input_size"),
                            **pick(frame, "best_epoch", "val_loss", "val_macro_f1", "epochs_run", "train_frames",
                                   "val_frames", "config_hash", "initialised_from")},
            "sequence_model": {"file": SEQUENCE_FILE, **pick(sequence, "arch", "hidden", "dropout", "input_dim", "normalise"),
                               **pick(sequence.get("metrics", {}), "lr", "best_epoch", "val_loss", "val_macro_f1",
                                      "epochs_run")},
            "landmark_baseline": {"file": BASELINE_FILE, **pick(baseline, "C", "val_macro_f1", "val_accuracy",
                                                                "train_frames", "val_frames")}}


def window_probs(per_frame: dict[str, np.ndarray], face_frames: np.ndarray, n_frames: int, length: int, stride: int,
                 policy: str, model: Any, feature_kind: str, batch: int = 512) -> np.ndarray:
    """CNN-LSTM probabilities (n_frames, C) of the window ending at each frame (NaN where there is none).

    The frames are one segment of the whole video: windows are built as the
    windows stage builds them (``missing_face``), end at every ``stride``-th
    position from the first full window on, and each is scored by ``model``,
    except, with ``repeat``, a window in which no frame has a face.
    """
    import torch

    classes = model.head.out_features
    out = np.full((n_frames, classes), np.nan, np.float32)
    rows, frames = windows.segment_frames(0, n_frames, face_frames, policy)
    if len(rows) < length:
        return out
    inputs = windows.inputs({name: per_frame[name] for name in windows.FEATURE_COLUMNS[feature_kind]}, feature_kind)
    ends = np.arange(length - 1, len(rows), stride)
    if policy == "repeat":
        # A window with no face frame of its own (the face gone for a whole window, or not seen yet) would only
        # repeat a face from outside it, labelling the video long after the face has left: it is not scored.
        # (The workflow's windows lie inside annotated segments, whose gaps are short.)
        last, first = frames[ends], frames[ends - length + 1]
        ends = ends[np.searchsorted(face_frames, last, side="right") > np.searchsorted(face_frames, first)]
    with torch.inference_mode():
        for start in range(0, len(ends), batch):
            chunk = ends[start:start + batch]
            picks = rows[chunk[:, None] - np.arange(length - 1, -1, -1)[None, :]]
            logits = model(torch.from_numpy(inputs[picks]))
            out[frames[chunk]] = logits.softmax(dim=1).numpy()
    return out


def held_windows(has_window: np.ndarray, face_frames: np.ndarray, n_frames: int, stride: int,
                 policy: str) -> np.ndarray:
    """For each frame, the frame whose window stands for it (-1: none): the window ending there, or with ``stride``
    > 1 the last window ending at most ``stride - 1`` sequence positions before it (positions as in
    :func:`window_probs`: every frame with ``repeat``, the face frames with ``drop``)."""
    held = np.where(has_window, np.arange(n_frames), -1)
    if stride == 1:
        return held
    _, frames = windows.segment_frames(0, n_frames, face_frames, policy)
    for i in np.flatnonzero(has_window[frames]):
        held[frames[i:i + stride]] = frames[i]
    return held


def segments_of(labels: np.ndarray, classes: list[str], min_length: int) -> list[tuple[str, int, int]]:
    """``(label, start_frame, end_frame)`` runs of one predicted class (index, -1 = none), half-open.

    Runs shorter than ``min_length`` frames are dropped, and runs of one class
    that only such a gap separated are joined.
    """
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start] >= 0 and i - start >= min_length:
                runs.append((int(labels[start]), start, i))
            start = i
    joined: list[tuple[int, int, int]] = []
    for label, s, e in runs:
        if joined and joined[-1][0] == label:
            joined[-1] = (label, joined[-1][1], e)
        else:
            joined.append((label, s, e))
    return [(classes[label], s, e) for label, s, e in joined]


@dataclass
class VideoResult:
    """What predicting one video gave."""

    video: str
    frames: int
    faces: int
    seconds: float
    outputs: list[Path]
    segments: list[tuple[str, int, int]]
    header_frames: int | None = None  # the frame count the file's header gives

    @property
    def cut_short(self) -> bool:
        """Whether decoding stopped before the header's frame count (a damaged file): the outputs cover the
        decoded frames only."""
        return self.header_frames is not None and self.frames < self.header_frames

    def cut_short_text(self) -> str:
        return (f"decoding stopped after {self.frames} of the {self.header_frames} frames its header gives: the file "
                f"looks damaged (or its header is wrong); its outputs cover the {self.frames} decoded frames")


def predict_video(video: Path, bundle: Bundle, out_dir: Path, *, stride: int = 1, min_segment: int = 8,
                  annotate: bool = False, model: Any = None, sequence: Any = None, device: str | None = None,
                  batch_size: int = 64, num_workers: int = 2, window_model: Any = None) -> VideoResult:
    """Predict one video; write ``{name}.parquet``, ``.csv``, ``.png`` (and ``.annotated.mp4``) into ``out_dir``.

    ``window_model``: a frame model whose embeddings ``sequence`` reads instead of ``model``'s (the fine-tuned
    CNN-LSTM's); the per-frame CNN columns stay ``model``'s.
    """
    from ferseq.frame_model.network import load_frame_model

    started = time.perf_counter()
    name = video.stem if video.is_file() else video.name
    info = videos.probe(video, count="header")  # fps and a readable file; the faces stage counts the frames
    model = model or load_frame_model(bundle.frame_model, device)
    sequence = sequence or grid_search.load_model(bundle.sequence_model)[0]
    cfg = {**face_extraction.DEFAULTS, **bundle.faces, "skip_faceless_videos": True}
    with tempfile.TemporaryDirectory(prefix="ferseq-predict-") as tmp:
        tmp = Path(tmp)
        whole = pd.DataFrame([{"segment_id": 0, "label": "", "start": 0, "end": info.frames}])
        face_extraction.extract_faces(video, whole, cfg, tmp / "faces.parquet", tmp / "qc.csv", name=name, to_end=True)
        feature_extraction.extract_video(model, tmp / "faces.parquet", {0: ""}, tmp / "features.parquet", video_id=name,
                               batch_size=batch_size, num_workers=num_workers)
        table = pq.read_table(tmp / "faces.parquet", columns=["frame", "face_found", "bbox"]).to_pandas()
        stored, per_frame = windows.read_features(tmp / "features.parquet")
        window_frames = None
        if window_model is not None:  # the same face rows, embedded by the fine-tuned CNN
            feature_extraction.extract_video(window_model, tmp / "faces.parquet", {0: ""}, tmp / "window.parquet",
                                             video_id=name, batch_size=batch_size, num_workers=num_workers)
            window_frames = windows.read_features(tmp / "window.parquet")[1]
    n, classes = len(table), bundle.classes  # every decoded frame has its row (a container's count can be off)
    face_frames = stored["frame"].to_numpy(np.int64)
    cnn = np.full((n, len(classes)), np.nan, np.float32)
    cnn[face_frames] = per_frame["probs"]
    if bundle.normalise == "subject" and len(face_frames):
        # transductive, as in training: the video's own face frames stand for its person's
        medians = subject_medians.frame_medians(per_frame)
        per_frame = {name: m - medians[name] if name in medians else m for name, m in per_frame.items()}
    lstm = window_probs(per_frame if window_frames is None else window_frames, face_frames, n, bundle.window_length,
                        stride, cfg["missing_face"], sequence, bundle.features)
    has_window = ~np.isnan(lstm[:, 0])
    lstm_label = np.where(has_window, np.nan_to_num(lstm, nan=-1).argmax(axis=1), -1)
    shown = held_windows(has_window, face_frames, n, stride, cfg["missing_face"])
    frame_table = pd.DataFrame({
        "frame": np.arange(n, dtype=np.int32),
        "time": np.arange(n) / info.fps if info.fps > 0 else np.nan,
        "face_found": table["face_found"].to_numpy(bool),
        "bbox": table["bbox"].tolist(),
        "window": has_window,
        "cnn_label": [classes[i] if ok else None for i, ok in zip(np.nan_to_num(cnn, nan=-1).argmax(axis=1),
                                                                  ~np.isnan(cnn[:, 0]))],
        "cnn_lstm_label": [classes[i] if i >= 0 else None for i in lstm_label],
        **{f"cnn_{c}": cnn[:, i] for i, c in enumerate(classes)},
        **{f"cnn_lstm_{c}": lstm[:, i] for i, c in enumerate(classes)},
    })
    # With --stride, each window's label stands for the frames up to the next window, so that segments are as
    # long as without it (not one-frame runs, which --min-segment would drop).
    segments = segments_of(np.where(shown >= 0, lstm_label[shown], -1), classes, min_segment)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [out_dir / f"{name}.parquet", out_dir / f"{name}.csv", out_dir / f"{name}.png"]
    with atomic_path(outputs[0]) as tmp:
        frame_table.to_parquet(tmp, index=False)
    with atomic_path(outputs[1]) as tmp:
        pd.DataFrame([{"video": video.name, "subject": name, "label": label, "start_frame": s, "end_frame": e}
                      for label, s, e in segments],
                     columns=["video", "subject", "label", "start_frame", "end_frame"]).to_csv(tmp, index=False)
    plot_timeline(frame_table, classes, segments, info.fps, f"{name}: {bundle.source}", outputs[2], shown)
    if annotate:
        outputs.append(out_dir / f"{name}.annotated.mp4")
        annotate_video(video, frame_table, info.fps, outputs[-1])
    faces_found = int(frame_table["face_found"].sum())
    if faces_found == 0:
        log.warning("%s: no face in any of its %d frames; its files say face_found false throughout", name, n)
    result = VideoResult(name, n, faces_found, time.perf_counter() - started, outputs, segments, info.header_frames)
    if result.cut_short:
        log.warning("%s: %s", video, result.cut_short_text())
    return result


def plot_timeline(frame_table: pd.DataFrame, classes: list[str], segments: list[tuple[str, int, int]], fps: float,
                  title: str, out_png: Path, held: np.ndarray | None = None) -> None:
    """Per-class probabilities over time (CNN above, CNN-LSTM below), predicted segments as bands, no-face spans grey.

    ``held`` (:func:`held_windows`): the frame whose window each frame shows, so that with ``--stride`` the
    CNN-LSTM lines run on between windows instead of being isolated points, which a line plot does not draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = frame_table["time"].to_numpy() if fps > 0 else frame_table["frame"].to_numpy()
    step = 1 / fps if fps > 0 else 1
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    no_face = ~frame_table["face_found"].to_numpy()
    for ax, prefix, name in ((axes[0], "cnn_", "per-frame CNN"), (axes[1], "cnn_lstm_", "CNN-LSTM")):
        for label, s, e in segments if prefix == "cnn_lstm_" else []:
            ax.axvspan(t[s], t[e - 1] + step, color=colours[label], alpha=0.15, lw=0)
        for s, e in _runs(no_face):
            ax.axvspan(t[s], t[e - 1] + step, color="0.6", alpha=0.5, lw=0)
        for c in classes:
            values = frame_table[f"{prefix}{c}"].to_numpy(float)
            if prefix == "cnn_lstm_" and held is not None:
                values = np.where(held >= 0, values[np.maximum(held, 0)], np.nan)
            ax.plot(t, values, color=colours[c], lw=1.2, label=c)
        ax.set(ylim=(0, 1), ylabel="probability", title=name)
    axes[0].legend(loc="upper right", ncols=len(classes), fontsize=8)
    axes[1].set_xlabel("seconds" if fps > 0 else "frame")
    fig.suptitle(title + "  (grey: no face; bands: predicted segments)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open (start, end) runs of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def annotate_video(video: Path, frame_table: pd.DataFrame, fps: float, out_mp4: Path) -> None:
    """The input frames with the face box and the current CNN and CNN-LSTM labels drawn, as MP4."""
    import cv2

    writer = None
    with atomic_path(out_mp4) as tmp:
        video_tmp = tmp.with_suffix(".mp4")  # OpenCV picks the container by the suffix
        try:
            for index, image in videos.iter_frames(video):
                if writer is None:
                    height, width = image.shape[:2]
                    writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                             fps if fps > 0 else 25.0, (width, height))
                row = frame_table.iloc[index] if index < len(frame_table) else None
                if row is not None and row["face_found"] and row["bbox"] is not None:
                    x0, y0, x1, y1 = (int(round(v)) for v in row["bbox"])
                    cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 0), 2)
                lines = [] if row is None else [f"CNN: {row['cnn_label'] or '-'}",
                                                f"CNN-LSTM: {row['cnn_lstm_label'] or '-'}"]
                for k, text in enumerate(lines):
                    cv2.putText(image, text, (10, 30 + 28 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4)
                    cv2.putText(image, text, (10, 30 + 28 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
                writer.write(image)
            if writer is not None:
                writer.release()
            video_tmp.replace(tmp)
        finally:
            video_tmp.unlink(missing_ok=True)


def predict_many(inputs: Iterable[str | Path], run: str | Path, out_dir: str | Path, *, fold: int | None = None,
                 stride: int = 1, min_segment: int = 8, annotate: bool = False, device: str | None = None,
                 batch_size: int = 64, num_workers: int = 2, finetuned: bool = False
                 ) -> tuple[list[VideoResult], list[str]]:
    """Predict every video of ``inputs`` (files, image folders, or folders of videos); return results and failures.

    A video that is missing or cannot be read is named and skipped; the others go on.
    """
    from ferseq.frame_model.network import load_frame_model

    bundle = load_run(run, fold, finetuned)
    if stride < 1 or min_segment < 1:
        raise FerseqError("--stride and --min-segment must be at least 1")
    model = load_frame_model(bundle.frame_model, device)
    sequence = grid_search.load_model(bundle.sequence_model)[0]
    window_model = None
    if bundle.finetuned:  # its CNN embeds the frames its LSTM reads; the CNN columns stay the frame model's
        joint = cnn_lstm.load(bundle.finetuned, device)[0]
        window_model, sequence = joint.frame, joint.sequence.cpu()
    log.info("model: %s (classes %s, windows of %d frames, sequence input %s)", bundle.source, bundle.classes,
             bundle.window_length, bundle.features)
    results, failed = [], []
    for video in expand_inputs(inputs):
        try:
            result = predict_video(video, bundle, Path(out_dir), stride=stride, min_segment=min_segment,
                                   annotate=annotate, model=model, sequence=sequence, batch_size=batch_size,
                                   num_workers=num_workers, window_model=window_model)
        except (FerseqError, OSError, ValueError) as err:
            log.error("%s: skipped: %s", video, err)
            failed.append(f"{video}: {err}")
            continue
        log.info("%s: %d frames, faces in %d, %.1f s, %.1f frames/s -> %s", result.video, result.frames, result.faces,
                 result.seconds, result.frames / result.seconds, ", ".join(p.name for p in result.outputs))
        results.append(result)
    return results, failed


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Videos named on the command line: a file or image folder is one video; a folder of videos gives each."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir() and not videos.image_files(item):
            found += sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            found.append(item)  # a missing path is reported when its turn comes
    return found


def summary_lines(results: list[VideoResult], failed: list[str]) -> list[str]:
    """One line per video (a video cut short says so first), then the failures."""
    lines = [f"{'CUT SHORT ' if r.cut_short else ''}{r.video}: {r.frames} frames, faces in {r.faces}, {len(r.segments)} segments "
             f"({', '.join(f'{label} {s}-{e}' for label, s, e in r.segments[:6])}{' ...' if len(r.segments) > 6 else ''}), "
             f"{r.frames / r.seconds:.1f} frames/s" + (f"; {r.cut_short_text()}" if r.cut_short else "") for r in results]
    lines += [f"FAILED {f}" for f in failed]
    return lines


def exit_status(results: list[VideoResult], failed: list[str]) -> int:
    """``ferseq predict``'s exit status: 1 when a video failed or was cut short (a damaged file), else 0."""
    return 1 if failed or any(r.cut_short for r in results) else 0
