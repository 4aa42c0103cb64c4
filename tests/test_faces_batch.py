"""The faces stage at corpus scale, on real clips: batch segment tables, one job walking many videos,
a failing video named without losing the others' work, and Snakemake rerunning only the batch that changed."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from conftest import DEMO, FIXTURES, run_snakemake
from ferseq.annotations import planned_frames
from ferseq.batches import plan
from ferseq.faces import DEFAULTS, merge_qc
from ferseq.faces_batch import BatchError, read_batch_segments, run_batch, video_ids, write_batch_segments
from ferseq.videos import iter_frames

CLASSES = {"names": ["neutral", "happy"], "map": {}}
MAN = DEMO / "videos" / "man_neutral_to_happy.mp4"


def frames_folder(folder: Path, video: Path, start: int, count: int) -> Path:
    """An image-sequence video: ``count`` PNG frames of ``video`` from ``start``."""
    folder.mkdir(parents=True)
    for index, image in iter_frames(video, range(start, start + count)):
        cv2.imwrite(str(folder / f"{index:04d}.png"), image)
    return folder


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Videos with ids holding '/': a video file, an image folder, a clip without a face, an unreadable file."""
    videos = tmp_path / "videos"
    (videos / "clips").mkdir(parents=True)
    shutil.copy(MAN, videos / "clips" / "man.mp4")
    frames_folder(videos / "nested" / "folder" / "woman", DEMO / "videos" / "woman_sad_to_happy.mp4", 300, 6)
    shutil.copy(FIXTURES / "no_face.mp4", videos / "clips" / "empty_room.mp4")
    (videos / "clips" / "broken.mp4").write_bytes(b"not a video")
    return tmp_path


def segments_table(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["segment_id", "video_id", "label", "start", "end"]).to_parquet(path)
    return path


def annotations(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["video", "subject", "label", "start_frame", "end_frame"]).to_csv(path, index=False)
    return path


def outputs(root: Path, ids: list[str]) -> list[Path]:
    return [root / "results" / "faces" / f"{video}.parquet" for video in ids]


def test_batch_segment_tables_then_one_job_writes_every_video(dataset, tmp_path):
    table = annotations(tmp_path / "annotations.csv", [
        ("clips/man.mp4", "p1", "neutral", 0, 8), ("clips/man.mp4", "p1", "happy", 24, 30),
        ("nested/folder/woman", "p2", "happy", 0, 6), ("clips/empty_room.mp4", "p3", "happy", 0, 10)])
    # The data stage kept man's and woman's segments and dropped the empty room's row (data.strict: false).
    segments = segments_table(tmp_path / "segments.parquet", [
        (1, "clips/man", "neutral", 0, 8), (2, "clips/man", "happy", 24, 30), (3, "nested/folder/woman", "happy", 0, 6)])
    planned = planned_frames(table, dataset / "videos", CLASSES, 2)
    assert {v: p.frames for v, p in planned.items()} == {"clips/empty_room": 10, "clips/man": 14,
                                                        "nested/folder/woman": 6}
    (batch,) = plan({v: p.frames for v, p in planned.items()}, 1000)
    csv_path = tmp_path / "results" / "faces" / "batches" / f"{batch.name}.segments.csv"
    write_batch_segments(segments, table, dataset / "videos", CLASSES, 2, 1000, [csv_path], tmp_path / "partial")
    assert read_batch_segments(csv_path) == {
        "clips/empty_room": ("clips/empty_room.mp4", []),
        "clips/man": ("clips/man.mp4", [(0, 8, 1, "neutral"), (24, 30, 2, "happy")]),
        "nested/folder/woman": ("nested/folder/woman", [(0, 6, 3, "happy")])}

    ids = list(batch.videos)
    files = outputs(tmp_path, ids)
    assert video_ids([f.relative_to(tmp_path).as_posix() for f in files]) == ids
    qc = pd.DataFrame(run_batch(ids, csv_path, dataset / "videos", {"detect_every": 5}, files, tmp_path / "qc.csv",
                                tmp_path / "partial" / batch.name))
    man, woman = pd.read_parquet(files[1]), pd.read_parquet(files[2])
    assert man["frame"].tolist() == [*range(8), *range(24, 30)] and man["segment_id"].tolist() == [1] * 8 + [2] * 6
    assert woman["frame"].tolist() == list(range(6)) and woman["face_found"].all()
    # A video without any kept segment gets an empty faces file with the same columns, and no QC rows.
    assert pd.read_parquet(files[0]).empty and list(pd.read_parquet(files[0]).columns) == list(man.columns)
    assert qc["label"].tolist() == ["neutral", "happy", "all", "happy", "all"]
    assert qc[qc["label"] == "all"]["video"].tolist() == ["clips/man", "nested/folder/woman"]
    written = pd.read_csv(tmp_path / "qc.csv", dtype={"video": str})
    assert written["faces_found"].tolist() == qc["faces_found"].tolist()
    assert written["segment_id"].isna().tolist() == [False, False, True, False, True]  # empty cells, as pandas writes
    assert not (tmp_path / "partial" / batch.name).exists()  # nothing left over once the batch succeeded
    merged = merge_qc([tmp_path / "qc.csv", tmp_path / "qc.csv"], tmp_path / "merged.csv")
    assert merged["label"].tolist() == qc["label"].tolist() * 2
    assert merged["video"].tolist() == qc["video"].tolist() * 2
    assert merged["frames"].tolist() == qc["frames"].tolist() * 2 and merged["segment_id"].dtype == "Int64"


def test_failing_videos_are_named_and_the_others_work_is_reused(dataset, tmp_path, caplog):
    csv_path = tmp_path / "batch.segments.csv"
    pd.DataFrame([("clips/man", "clips/man.mp4", 1, "happy", 24, 40),
                  ("clips/empty_room", "clips/empty_room.mp4", 2, "happy", 0, 20),
                  ("clips/broken", "clips/broken.mp4", 3, "happy", 0, 8),
                  ("nested/folder/woman", "nested/folder/woman", 4, "happy", 0, 6)],
                 columns=["video_id", "video", "segment_id", "label", "start", "end"]).to_csv(csv_path, index=False)
    ids = ["clips/man", "clips/empty_room", "clips/broken", "nested/folder/woman"]
    files, partial = outputs(tmp_path, ids), tmp_path / "partial" / "b1"
    with pytest.raises(BatchError) as err, caplog.at_level(logging.INFO, logger="ferseq"):
        run_batch(ids, csv_path, dataset / "videos", {}, files, tmp_path / "qc.csv", partial)
    message = str(err.value)
    assert message.startswith("2 of 4 videos of this faces batch failed")
    assert "clips/empty_room: no face found in any of its 20 frames" in message and "skip_faceless_videos" in message
    assert "broken.mp4: OpenCV cannot open it as a video" in message and "kept in" in message
    assert not any(f.exists() for f in files) and not (tmp_path / "qc.csv").exists()  # no output until all succeed
    assert len(list(partial.glob("*.parquet"))) == 3  # man, woman, and the faceless room's rows

    # The unreadable clip leaves the batch (the user fixes the table); the faceless one is kept: only the
    # settings that do not shape the faces changed, so nothing is processed again.
    caplog.clear()
    keep = [0, 1, 3]
    with caplog.at_level(logging.INFO, logger="ferseq"):
        qc = pd.DataFrame(run_batch([ids[i] for i in keep], csv_path, dataset / "videos",
                                    {"skip_faceless_videos": True}, [files[i] for i in keep], tmp_path / "qc.csv",
                                    partial))
    assert caplog.text.count("reused from an earlier run of this batch") == 3
    assert "frames in 1 segments" not in caplog.text  # no video decoded again
    assert all(files[i].exists() for i in keep) and not partial.exists()
    videos = qc[qc["label"] == "all"].set_index("video")
    assert videos["faces_found"].to_dict() == {"clips/man": 16, "clips/empty_room": 0, "nested/folder/woman": 6}


def test_a_video_replaced_after_a_failure_is_processed_again(dataset, tmp_path, caplog):
    csv_path = tmp_path / "batch.segments.csv"
    pd.DataFrame([("clips/man", "clips/man.mp4", 1, "happy", 24, 32),
                  ("clips/empty_room", "clips/empty_room.mp4", 2, "happy", 0, 8)],
                 columns=["video_id", "video", "segment_id", "label", "start", "end"]).to_csv(csv_path, index=False)
    ids = ["clips/man", "clips/empty_room"]
    files, partial = outputs(tmp_path, ids), tmp_path / "partial" / "b1"
    with pytest.raises(BatchError, match="clips/empty_room"):
        run_batch(ids, csv_path, dataset / "videos", {}, files, tmp_path / "qc.csv", partial)
    shutil.copy(DEMO / "videos" / "woman_sad_to_happy.mp4", dataset / "videos" / "clips" / "man.mp4")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ferseq"):
        run_batch(ids, csv_path, dataset / "videos", {"skip_faceless_videos": True}, files, tmp_path / "qc.csv",
                  partial)
    assert "clips/empty_room: reused" in caplog.text and "clips/man: reused" not in caplog.text
    assert "clips/man: 8 frames in 1 segments" in caplog.text  # the new file, decoded afresh


# --- through Snakemake ------------------------------------------------------------------------------------

def corpus_config(root: Path, **faces) -> Path:
    config = {"experiment": "faces-batches", "data": {"videos": str(root / "videos"),
                                                      "annotations": str(root / "annotations.csv"),
                                                      "min_segment_frames": 2},
              "classes": CLASSES, "frame_model": {"pretrained": False}, "faces": {"batch_frames": 30, **faces}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def batch_jobs(output: str) -> list[str]:
    """The faces batch jobs a Snakemake run finished."""
    return re.findall(r"Finished jobid: \d+ \(Rule: (faces_b[0-9a-f]+)\)", output)


@pytest.mark.workflow
def test_snakemake_reruns_only_the_batch_a_new_video_joins(tmp_path):
    rows = []
    for i in range(6):  # six 3-frame clips as image folders, in per-subject folders
        frames_folder(tmp_path / "videos" / f"s{i % 2}" / f"clip{i}", MAN, 30 + 5 * i, 3)
        rows.append((f"s{i % 2}/clip{i}", f"s{i % 2}", "happy", 0, 3))
    annotations(tmp_path / "annotations.csv", rows)
    config = corpus_config(tmp_path)
    frames = {v: p.frames for v, p in planned_frames(tmp_path / "annotations.csv", tmp_path / "videos", CLASSES,
                                                      2).items()}
    first = plan(frames, 30)
    assert len(first) >= 2
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "results/faces/qc.csv")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(batch_jobs(done.stdout + done.stderr)) == sorted(f"faces_{b.name}" for b in first)
    qc = pd.read_csv(tmp_path / "results/faces/qc.csv")
    assert (qc[qc["label"] == "all"]["faces_found"] == 3).all() and len(qc) == 12
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "results/faces").rglob("clip*.parquet")}

    # A new clip without any face, appended to the table: only the batch it joins runs, and fails naming it.
    shutil.copy(FIXTURES / "no_face.mp4", tmp_path / "videos" / "s1" / "room.mp4")
    annotations(tmp_path / "annotations.csv", [*rows, ("s1/room.mp4", "s1", "happy", 0, 6)])
    joined = next(b for b in plan({**frames, "s1/room": 6}, 30) if "s1/room" in b.videos)
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "results/faces/qc.csv")
    assert done.returncode != 0
    assert batch_jobs(done.stdout + done.stderr) == []
    log = (tmp_path / "results/logs/faces" / f"{joined.name}.log").read_text()
    assert "s1/room: no face found in any of its 6 frames" in log and "Traceback" not in log

    # Told to keep faceless videos, the batch runs again reusing its other videos' work; no other batch runs.
    config = corpus_config(tmp_path, skip_faceless_videos=True)
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "results/faces/qc.csv")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert batch_jobs(done.stdout + done.stderr) == [f"faces_{joined.name}"]
    log = (tmp_path / "results/logs/faces" / f"{joined.name}.log").read_text()
    assert log.count("reused from an earlier run") == len(joined.videos)
    untouched = [p for p in stamps if p.relative_to(tmp_path / "results/faces").with_suffix("").as_posix()
                 not in joined.videos]
    assert untouched and all(p.stat().st_mtime_ns == stamps[p] for p in untouched)
    qc = pd.read_csv(tmp_path / "results/faces/qc.csv")
    assert qc.set_index("video").loc["s1/room", "faces_found"].tolist() == [0, 0]
    again = run_snakemake(tmp_path, "--configfile", str(config), "-n", "results/faces/qc.csv")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
