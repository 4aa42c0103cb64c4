"""The data stage on real clips: every bad-row kind is reported by row and column."""

from __future__ import annotations

import shutil

import cv2
import pandas as pd
import pytest

from conftest import CLASSES, DEMO, SCHEMAS
from ferseq.data import annotations
from ferseq.data.annotations import AnnotationError

SCHEMA = SCHEMAS / "annotations.schema.yaml"
HEADER = "video,subject,label,start_frame,end_frame\n"


@pytest.fixture
def videos(tmp_path):
    """A videos folder with two real clips, an image-sequence folder and a file that is no video."""
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(DEMO / "videos" / "man_neutral_to_happy.mp4", folder)  # 72 frames
    shutil.copy(DEMO / "videos" / "woman_sad_to_happy.mp4", folder)  # 472 frames
    frames = folder / "seq01"
    frames.mkdir()
    cap = cv2.VideoCapture(str(folder / "man_neutral_to_happy.mp4"))
    for i in range(12):
        ok, image = cap.read()
        assert ok
        cv2.imwrite(str(frames / f"{i:04d}.png"), image)
    cap.release()
    (folder / "broken.mp4").write_bytes(b"this is not a video")
    return folder


def load(tmp_path, videos, body, **kwargs):
    table = tmp_path / "annotations.csv"
    table.write_text(HEADER + body)
    return annotations.load_segments(table, videos, kwargs.pop("classes", CLASSES), SCHEMA, **kwargs)


def test_demo_table_loads_with_exact_frame_counts():
    segments, dropped, videos = annotations.load_segments(DEMO / "annotations.csv", DEMO / "videos", CLASSES, SCHEMA)
    assert len(segments) == 7 and dropped.empty
    assert segments["segment_id"].tolist() == list(range(1, 8))
    assert dict(zip(videos["video_id"], videos["frames"])) == {
        "man_after_title": 169, "man_neutral_to_happy": 72, "woman_sad_to_happy": 472}
    assert segments.groupby("label")["frames"].sum().to_dict() == {"happy": 333, "neutral": 40, "pensive": 86, "sad": 140}


BAD_ROWS = [
    # (row text, column, words in the reason)
    (",man,happy,0,10", "video", "missing value"),
    ("man_neutral_to_happy.mp4,,happy,0,10", "subject", "missing value"),
    ("man_neutral_to_happy.mp4,man,,0,10", "label", "missing value"),
    ("man_neutral_to_happy.mp4,man,happy,1.5,10", "start_frame", "not of type 'integer'"),
    ("man_neutral_to_happy.mp4,man,happy,-3,10", "start_frame", "less than the minimum"),
    ("man_neutral_to_happy.mp4,man,happy,30,20", "end_frame", "not after start_frame"),
    ("missing.mp4,man,happy,0,10", "video", "no such video"),
    ("broken.mp4,man,happy,0,10", "video", "cannot open"),
    ("man_neutral_to_happy.mp4,man,happy,60,80", "end_frame", "past the end"),
    ("seq01,man,happy,0,13", "end_frame", "past the end"),
]


@pytest.mark.parametrize("row,column,reason", BAD_ROWS)
def test_each_bad_row_kind_is_reported_by_row_and_column(tmp_path, videos, row, column, reason):
    body = "man_neutral_to_happy.mp4,man,neutral,0,20\n" + row + "\n"
    with pytest.raises(AnnotationError) as err:
        load(tmp_path, videos, body)
    message = str(err.value)
    assert f"row 2, column {column}" in message and reason in message
    assert "row 1" not in message


def test_all_bad_rows_are_reported_together_and_strict_false_drops_them(tmp_path, videos):
    body = "man_neutral_to_happy.mp4,man,neutral,0,20\n" + "\n".join(r for r, _, _ in BAD_ROWS) + "\n"
    with pytest.raises(AnnotationError) as err:
        load(tmp_path, videos, body)
    for number in range(2, len(BAD_ROWS) + 2):
        assert f"row {number}," in str(err.value)
    segments, dropped, _ = load(tmp_path, videos, body, strict=False)
    assert segments["row"].tolist() == [1]
    assert sorted(dropped["row"]) == list(range(2, len(BAD_ROWS) + 2))
    assert dropped["reason"].str.startswith("bad row").all()


def test_overlapping_segments_of_one_video_are_bad(tmp_path, videos):
    with pytest.raises(AnnotationError, match=r"row 2, column start_frame: frames 15-40 overlap row 1"):
        load(tmp_path, videos, "man_neutral_to_happy.mp4,man,neutral,0,20\nman_neutral_to_happy.mp4,man,happy,15,40\n")


def test_missing_column_names_it(tmp_path, videos):
    table = tmp_path / "annotations.csv"
    table.write_text("video,subject,label,start_frame\nman_neutral_to_happy.mp4,man,happy,0\n")
    with pytest.raises(AnnotationError, match="missing column.*end_frame"):
        annotations.load_segments(table, videos, CLASSES, SCHEMA)


def test_labels_are_mapped_unkept_and_short_segments_dropped_and_counted(tmp_path, videos):
    classes = {"names": ["neutral", "happy"], "map": {"joy": "happy"}}
    body = ("man_neutral_to_happy.mp4,man,neutral,0,20\n"
            "man_neutral_to_happy.mp4,man,joy,24,72\n"
            "woman_sad_to_happy.mp4,woman,sad,0,140\n"
            "woman_sad_to_happy.mp4,woman,happy,232,237\n")
    segments, dropped, videos_table = load(tmp_path, videos, body, classes=classes)
    assert segments[["row", "raw_label", "label"]].values.tolist() == [[1, "neutral", "neutral"], [2, "joy", "happy"]]
    assert dict(zip(dropped["row"], dropped["reason"])) == {
        3: "label 'sad' is not a kept class",
        4: "shorter than min_segment_frames (5 < 8)",
    }
    counts = annotations.class_counts(segments, dropped, classes)
    assert counts.set_index("class")["dropped_short"].to_dict() == {"neutral": 0, "happy": 1}
    assert videos_table["video_id"].tolist() == ["man_neutral_to_happy"]


def test_parquet_table_and_image_sequence_folder(tmp_path, videos):
    table = pd.DataFrame({"video": ["seq01", "man_neutral_to_happy.mp4"], "subject": ["man", "man"],
                          "label": ["neutral", "happy"], "start_frame": [0, 24], "end_frame": [12, 72],
                          "group": ["uk", "uk"]})
    path = tmp_path / "annotations.parquet"
    table.to_parquet(path)
    segments, _, videos_table = annotations.load_segments(path, videos, CLASSES, SCHEMA)
    assert segments["video_id"].tolist() == ["seq01", "man_neutral_to_happy"]
    assert segments["group"].tolist() == ["uk", "uk"]
    assert videos_table.set_index("video_id")["frames"].to_dict() == {"seq01": 12, "man_neutral_to_happy": 72}


def test_long_segments_are_cut_into_pieces():
    assert annotations.pieces(0, 140, 48) == [(0, 47), (47, 93), (93, 140)]
    assert annotations.pieces(5, 20, 48) == [(5, 20)]
    assert annotations.pieces(0, 96, 48) == [(0, 48), (48, 96)]
    segments, _, _ = annotations.load_segments(DEMO / "annotations.csv", DEMO / "videos", CLASSES, SCHEMA, max_segment_frames=48)
    assert segments["frames"].max() <= 48
    assert segments.groupby("row")["frames"].sum().tolist() == [140, 86, 240, 20, 48, 20, 45]
    assert segments["segment_id"].is_unique


def test_videos_that_would_share_an_output_name_are_an_error(tmp_path, videos):
    shutil.copy(videos / "man_neutral_to_happy.mp4", videos / "man_neutral_to_happy.avi")
    with pytest.raises(AnnotationError, match="would share the output name 'man_neutral_to_happy'"):
        load(tmp_path, videos, "man_neutral_to_happy.mp4,man,neutral,0,20\nman_neutral_to_happy.avi,man,happy,24,72\n")


def test_failed_data_stage_writes_nothing(tmp_path, videos):
    table = tmp_path / "annotations.csv"
    table.write_text(HEADER + "missing.mp4,man,happy,0,10\n")
    outs = [tmp_path / "out" / name for name in ("segments.parquet", "videos.parquet", "dropped.csv", "counts.csv")]
    with pytest.raises(AnnotationError):
        annotations.write_segments(table, videos, CLASSES, SCHEMA, *outs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_dags_plan_needs_no_probe(tmp_path):
    table = tmp_path / "annotations.csv"
    table.write_text(HEADER + "a/clip1.mp4,s1,happy,0,20\nb.mov,s2,sad,0,4\nc.mp4,s3,angry,0,40\nbad row,,,x,\n"
                     "gone.mp4,s4,happy,0,20\n")
    for name in ("a/clip1.mp4", "b.mov", "c.mp4"):  # empty files: nothing is probed
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    planned = annotations.plan_videos(annotations.plan_table(table, tmp_path, CLASSES, SCHEMA), tmp_path)
    assert list(planned) == ["a/clip1"] and planned["a/clip1"].video == "a/clip1.mp4"
    assert planned["a/clip1"].frames == 20 and planned["a/clip1"].segments == ((1, 0, 20, "happy"),)


def test_segment_ids_come_from_the_table_alone(tmp_path, videos):
    # Row 1's video is not there: with data.strict false the row is dropped once the videos are probed,
    # and the segments after it keep the ids the DAG planned from the table alone (no renumbering).
    table = tmp_path / "annotations.csv"
    table.write_text(HEADER + "gone.mp4,x,happy,0,20\nman_neutral_to_happy.mp4,man,happy,24,72\n"
                     "woman_sad_to_happy.mp4,woman,sad,0,20\n")
    segments, dropped, _ = annotations.load_segments(table, videos, CLASSES, SCHEMA, strict=False)
    assert segments["segment_id"].tolist() == [2, 3] and dropped["row"].tolist() == [1]
    planned = annotations.plan_videos(annotations.plan_table(table, videos, CLASSES, SCHEMA), videos)
    assert {vid: p.segments[0][0] for vid, p in planned.items()} == {"man_neutral_to_happy": 2,
                                                                     "woman_sad_to_happy": 3}


@pytest.mark.parametrize("content, expected", [
    (b"", r"annotations.csv: the file is empty; it needs a header line video,subject,label"),
    (b"\n  \n", r"the file is empty"),
    (HEADER.encode() + b"man_neutral_to_happy.mp4,man,happy,0,20\nman_neutral_to_happy.mp4,man,happy,24,72,uk,extra\n",
     r"1 malformed line\(s\):\n  line 3: 7 fields, the header has 5"),
    (HEADER.encode() + b"man_neutral_to_happy.mp4,man\n" + b"woman_sad_to_happy.mp4,woman,sad,0,20,x\n",
     r"2 malformed line\(s\):\n  line 2: 2 fields.*\n  line 3: 6 fields"),
    (HEADER.encode() + b'man_neutral_to_happy.mp4,man,"happy,0,20\n',
     r"line 2: unexpected end of data; a field with a comma or a quote must be quoted"),
    (HEADER.encode() + b'man_neutral_to_happy.mp4,man,"happy"x,0,20\n', r"line 2: .*quote"),
    (HEADER.encode() + "woman_sad_to_happy.mp4,Zoë,sad,0,20\n".encode("latin-1"),
     r"annotations.csv, line 2: not UTF-8 text \(byte 0xeb\); save the table as UTF-8"),
    (b"video,subject,label,label,start_frame,end_frame\n", r"line 1: header names column\(s\) label twice"),
])
def test_a_malformed_file_is_reported_by_line_without_a_traceback(tmp_path, videos, content, expected):
    table = tmp_path / "annotations.csv"
    table.write_bytes(content)
    with pytest.raises(AnnotationError, match=expected):
        annotations.load_segments(table, videos, CLASSES, SCHEMA)
    with pytest.raises(AnnotationError, match=expected):  # the DAG's planning reads the table too
        annotations.plan_table(table, videos, CLASSES, SCHEMA)


def test_a_byte_order_mark_and_blank_lines_are_fine(tmp_path, videos):
    table = tmp_path / "annotations.csv"
    table.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b"\nman_neutral_to_happy.mp4,man,happy,24,72\n\n")
    segments, dropped, _ = annotations.load_segments(table, videos, CLASSES, SCHEMA)
    assert segments["label"].tolist() == ["happy"] and dropped.empty
