"""The faces stage at corpus scale, on real clips: the batch plan, one job walking many videos, a failing video
named without losing the others' work, and Snakemake rerunning only the batch whose videos or segments changed."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from conftest import DEMO, FIXTURES, SCHEMAS, run_snakemake
from ferseq.data.videos import iter_frames
from ferseq.faces.batch_job import BatchError, read_plan, run_batch
from ferseq.common.errors import FerseqError
from ferseq.faces.batch_plan import plan_digest, plan_file, plan_from_config, write_plans
from ferseq.faces.face_extraction import merge_qc

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


def annotations(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["video", "subject", "label", "start_frame", "end_frame"]).to_csv(path, index=False)
    return path


def outputs(root: Path, ids: list[str]) -> list[Path]:
    return [root / "results" / "faces" / f"{video}.parquet" for video in ids]


def plan_json(tmp_path: Path, videos: list[tuple[str, str, list[tuple[int, int, int, str]]]]) -> Path:
    """A batch plan file, as :func:`ferseq.faces.batch_plan.write_plans` writes it: ``(video_id, video,
    [(segment_id, start, end, label), ...])`` per video."""
    path = tmp_path / "b1.plan.json"
    path.write_text(json.dumps({"batch": "b1", "videos": [
        {"video_id": vid, "video": video, "stamp": "", "segments": [list(s) for s in segments]}
        for vid, video, segments in videos]}))
    return path


def test_the_plan_then_one_job_writes_every_video(dataset, tmp_path):
    table = annotations(tmp_path / "annotations.csv", [
        ("clips/man.mp4", "p1", "neutral", 0, 8), ("clips/man.mp4", "p1", "happy", 24, 30),
        ("nested/folder/woman", "p2", "happy", 0, 6), ("clips/broken.mp4", "p3", "happy", 0, 10)])
    config = {"data": {"annotations": str(table), "videos": str(dataset / "videos"), "min_segment_frames": 2},
              "classes": CLASSES, "faces": {"batch_frames": 1000}}
    faces_plan = plan_from_config(config, SCHEMAS / "annotations.schema.yaml")
    (batch,) = faces_plan.batches
    assert write_plans(faces_plan, tmp_path / "plans") == 1
    name, videos = read_plan(plan_file(tmp_path / "plans", batch.name))
    assert name == batch.name and videos == {
        "clips/broken": ("clips/broken.mp4", [(0, 10, 4, "happy")]),
        "clips/man": ("clips/man.mp4", [(0, 8, 1, "neutral"), (24, 30, 2, "happy")]),
        "nested/folder/woman": ("nested/folder/woman", [(0, 6, 3, "happy")])}

    # The clip that is no video: with data.strict: false the data stage drops its row, and its faces file is empty.
    ids = list(batch.videos)
    files = outputs(tmp_path, ids)
    qc = pd.DataFrame(run_batch(plan_file(tmp_path / "plans", batch.name), dataset / "videos", {"detect_every": 5},
                                files, tmp_path / "qc.csv", tmp_path / "partial" / batch.name, strict=False))
    man, woman = pd.read_parquet(files[1]), pd.read_parquet(files[2])
    assert man["frame"].tolist() == [*range(8), *range(24, 30)] and man["segment_id"].tolist() == [1] * 8 + [2] * 6
    assert woman["frame"].tolist() == list(range(6)) and woman["face_found"].all()
    # The unreadable video gets an empty faces file with the same columns, and no QC rows.
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
    # Strict (the default), the unreadable video fails the batch, named.
    with pytest.raises(BatchError, match="broken.mp4: OpenCV cannot open it as a video"):
        run_batch(plan_file(tmp_path / "plans", batch.name), dataset / "videos", {}, files, tmp_path / "qc.csv",
                  tmp_path / "partial" / batch.name)


def test_failing_videos_are_named_and_the_others_work_is_reused(dataset, tmp_path, caplog):
    members = [("clips/man", "clips/man.mp4", [(1, 24, 40, "happy")]),
               ("clips/empty_room", "clips/empty_room.mp4", [(2, 0, 20, "happy")]),
               ("clips/broken", "clips/broken.mp4", [(3, 0, 8, "happy")]),
               ("nested/folder/woman", "nested/folder/woman", [(4, 0, 6, "happy")])]
    plan = plan_json(tmp_path, members)
    ids = [vid for vid, _, _ in members]
    files, partial = outputs(tmp_path, ids), tmp_path / "partial" / "b1"
    with pytest.raises(BatchError) as err, caplog.at_level(logging.INFO, logger="ferseq"):
        run_batch(plan, dataset / "videos", {}, files, tmp_path / "qc.csv", partial)
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
    plan = plan_json(tmp_path, [members[i] for i in keep])
    with caplog.at_level(logging.INFO, logger="ferseq"):
        qc = pd.DataFrame(run_batch(plan, dataset / "videos", {"skip_faceless_videos": True},
                                    [files[i] for i in keep], tmp_path / "qc.csv", partial))
    assert caplog.text.count("reused from an earlier run of this batch") == 3
    assert "frames in 1 segments" not in caplog.text  # no video decoded again
    assert all(files[i].exists() for i in keep) and not partial.exists()
    videos = qc[qc["label"] == "all"].set_index("video")
    assert videos["faces_found"].to_dict() == {"clips/man": 16, "clips/empty_room": 0, "nested/folder/woman": 6}


def test_a_video_replaced_after_a_failure_is_processed_again(dataset, tmp_path, caplog):
    plan = plan_json(tmp_path, [("clips/man", "clips/man.mp4", [(1, 24, 32, "happy")]),
                                ("clips/empty_room", "clips/empty_room.mp4", [(2, 0, 8, "happy")])])
    ids = ["clips/man", "clips/empty_room"]
    files, partial = outputs(tmp_path, ids), tmp_path / "partial" / "b1"
    with pytest.raises(BatchError, match="clips/empty_room"):
        run_batch(plan, dataset / "videos", {}, files, tmp_path / "qc.csv", partial)
    shutil.copy(DEMO / "videos" / "woman_sad_to_happy.mp4", dataset / "videos" / "clips" / "man.mp4")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ferseq"):
        run_batch(plan, dataset / "videos", {"skip_faceless_videos": True}, files, tmp_path / "qc.csv", partial)
    assert "clips/empty_room: reused" in caplog.text and "clips/man: reused" not in caplog.text
    assert "clips/man: 8 frames in 1 segments" in caplog.text  # the new file, decoded afresh


def test_a_segment_past_its_videos_end_and_a_changed_plan(dataset, tmp_path):
    # data.strict: false: the one segment of clips/man starts past the end of its video, so the data stage drops
    # its row; the video gets an empty faces file and no QC rows instead of failing its batch for having no face.
    plan = plan_json(tmp_path, [("clips/man", "clips/man.mp4", [(1, 5000, 5010, "happy")]),
                                ("nested/folder/woman", "nested/folder/woman", [(2, 0, 4, "happy")])])
    files = outputs(tmp_path, ["clips/man", "nested/folder/woman"])
    digest = plan_digest(plan.read_text())
    qc = run_batch(plan, dataset / "videos", {}, files, tmp_path / "qc.csv", tmp_path / "partial", strict=False,
                   digest=digest)
    assert pd.read_parquet(files[0]).empty and [r["video"] for r in qc] == ["nested/folder/woman"] * 2
    # A plan file that is not the plan of the run's DAG (rewritten by another snakemake since) is refused.
    plan.write_text(plan.read_text().replace("5010", "5011"))
    with pytest.raises(FerseqError, match="plan changed after this run planned it"):
        run_batch(plan, dataset / "videos", {}, files, tmp_path / "qc.csv", tmp_path / "partial", digest=digest)


# --- through Snakemake ------------------------------------------------------------------------------------

def corpus_config(root: Path, **faces) -> Path:
    config = {"experiment": "faces-batches", "data": {"videos": str(root / "videos"),
                                                      "annotations": str(root / "annotations.csv"),
                                                      "min_segment_frames": 2},
              "classes": CLASSES, "frame_model": {"pretrained": False}, "faces": {"batch_frames": 30, **faces}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def planned_batches(config: Path):
    """The faces batches the DAG plans for a test config (the schema's defaults where it is silent)."""
    settings = yaml.safe_load(config.read_text())
    settings["data"].setdefault("max_segment_frames", None)
    return plan_from_config(settings, SCHEMAS / "annotations.schema.yaml").batches


def batch_jobs(output: str) -> list[str]:
    """The faces batch jobs a Snakemake run finished."""
    return re.findall(r"Finished jobid: \d+ \(Rule: (faces_b[0-9a-f]+)\)", output)


@pytest.mark.workflow
def test_snakemake_reruns_only_the_batch_whose_videos_or_segments_changed(tmp_path):
    rows = []
    for i in range(6):  # six 3-frame clips as image folders, in per-subject folders
        frames_folder(tmp_path / "videos" / f"s{i % 2}" / f"clip{i}", MAN, 30 + 5 * i, 3)
        rows.append((f"s{i % 2}/clip{i}", f"s{i % 2}", "happy", 0, 3))
    annotations(tmp_path / "annotations.csv", rows)
    config = corpus_config(tmp_path)
    first = planned_batches(config)
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
    joined = next(b for b in planned_batches(config) if "s1/room" in b.videos)
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

    # One segment edited (a clip of another batch now starts a frame later): only that clip's batch runs.
    edited = next(b for b in planned_batches(config) if "s1/room" not in b.videos)
    clip = edited.videos[0]
    annotations(tmp_path / "annotations.csv", [(v, s, label, 1 if v.startswith(clip) else start, end)
                                               for v, s, label, start, end in [*rows, ("s1/room.mp4", "s1", "happy", 0, 6)]])
    done = run_snakemake(tmp_path, "--configfile", str(config), "--cores", "2", "results/faces/qc.csv")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert batch_jobs(done.stdout + done.stderr) == [f"faces_{edited.name}"]
    assert pd.read_parquet(tmp_path / "results/faces" / f"{clip}.parquet")["frame"].tolist() == [1, 2]
