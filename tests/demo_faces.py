"""Real faces files of short frame ranges of the demo clips, with their segments and splits, for the tests of the
stages that read faces (frame model, features, landmark baseline): built once per session by the real faces stage
(dlib HOG + landmarks, aligned, 64 px crops)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pandas as pd

from conftest import CLASSES, DEMO
from ferseq.faces import face_extraction as faces_stage

# video_id -> (file, subject, [(segment_id, label, start, end, split)]); frames 88-95 of
# man_after_title show the title card, so segment 11 has frames without a face.
SEGMENTS = {
    "woman": ("woman_sad_to_happy.mp4", "woman", [
        (1, "sad", 0, 16, "train"), (2, "sad", 100, 112, "val"), (3, "pensive", 144, 160, "train"),
        (4, "pensive", 200, 212, "val"), (5, "happy", 240, 256, "train"), (6, "happy", 400, 412, "val")]),
    "man1": ("man_neutral_to_happy.mp4", "man", [
        (7, "neutral", 0, 12, "train"), (8, "neutral", 12, 20, "val"), (9, "happy", 24, 40, "train"),
        (10, "happy", 60, 72, "test")]),
    "man2": ("man_after_title.mov", "man", [
        (11, "neutral", 88, 108, "train"), (12, "neutral", 108, 116, "test"), (13, "happy", 124, 140, "val")]),
}
ROWS_PER_GROUP = 16  # small row groups, so that readers meet several per file


@dataclass(frozen=True)
class DemoFaces:
    faces: dict[str, Path]  # video_id -> faces Parquet
    segments: Path
    splits: Path
    table: pd.DataFrame  # segments joined with their split

    def write_tables(self, folder: Path, table: pd.DataFrame) -> tuple[Path, Path]:
        """A segments and a splits file for a variant of :attr:`table`."""
        folder.mkdir(parents=True, exist_ok=True)
        table.drop(columns=["split"]).to_parquet(folder / "segments.parquet")
        splits = table[["segment_id", "video_id", "subject", "label", "split"]].assign(fold=0, unit="segment")
        splits.to_parquet(folder / "splits.parquet")
        return folder / "segments.parquet", folder / "splits.parquet"


@functools.cache
def demo_faces(root: Path) -> DemoFaces:
    """Faces files (64 px crops) of short ranges of the demo clips, with segments and fold-0 splits; built once."""
    rows = []
    faces = {}
    cfg = {**faces_stage.DEFAULTS, "crop_size": 64}
    for video_id, (file, subject, segments) in SEGMENTS.items():
        table = pd.DataFrame([s[:4] for s in segments], columns=["segment_id", "label", "start", "end"])
        faces[video_id] = root / "faces" / f"{video_id}.parquet"
        with mock.patch.object(faces_stage, "ROWS_PER_GROUP", ROWS_PER_GROUP):
            faces_stage.extract_faces(DEMO / "videos" / file, table, cfg, faces[video_id],
                                      root / "faces" / f"{video_id}.qc.csv")
        rows += [{"segment_id": sid, "row": sid, "video": file, "video_id": video_id, "subject": subject, "group": None,
                  "raw_label": label, "label": label, "start": start, "end": end, "frames": end - start, "split": split}
                 for sid, label, start, end, split in segments]
    table = pd.DataFrame(rows)
    demo = DemoFaces(faces, root / "segments.parquet", root / "splits.parquet", table)
    demo.write_tables(root, table)
    return demo


def make_config(tmp_path: Path, **frame_model_cfg) -> dict:
    """A full config: tiny resnet18 by default, MLflow in a sqlite file under ``tmp_path``."""
    cfg = {"backbone": "resnet18", "pretrained": False, "input_size": 32, "epochs": 2, "patience": 5, "lr": 1e-3, "batch_size": 16,
           "dropout": 0.2, "augment": False, "num_workers": 0, "inference_batch_size": 32}
    return {"experiment": "frame-test", "seed": 3, "classes": CLASSES,
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": None},
            "frame_model": {**cfg, **frame_model_cfg}}
