"""Faces stage on real clips and stills: detection, tracking, the central-face rule, alignment, outputs and errors.

Everything runs the real dlib and OpenCV models on the demo clips and the test
fixtures (tests/fixtures), on short frame ranges to stay fast; the SSD tests read
OpenCV's ResNet-10 SSD files from $FERSEQ_SSD_MODELS (the ``ssd_models`` fixture).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from pathlib import Path

import cv2
import dlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import DEMO, FIXTURES, REPO, SSD_FILES
from ferseq.common.errors import ConfigError
from ferseq.data.videos import VideoError, iter_frames, probe
from ferseq.faces import alignment
from ferseq.faces.detection import Detection, SsdDetector, central_face, make_detector, model_path
from ferseq.faces.face_extraction import DEFAULTS, METADATA_KEY, NoFaceError, extract_faces, find_face

VIDEOS = DEMO / "videos"

# Eye centres of an aligned crop must land this close (pixels, in a 224 px crop)
# to the template: through the alignment matrix, and when dlib measures them
# again on the decoded crop.
EYE_TOLERANCE = 6.0
EYE_TOLERANCE_REMEASURED = 8.0


def faces_defaults() -> dict:
    """The ``faces`` config with every schema default, as the Snakemake rule passes it."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return {key: spec["default"] for key, spec in schema["properties"]["faces"]["properties"].items()}


@pytest.fixture
def cfg() -> dict:
    return faces_defaults()


def test_package_defaults_are_the_schema_defaults():
    assert DEFAULTS == faces_defaults()


def segments(*rows: tuple[int, str, int, int]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["segment_id", "label", "start", "end"])


def run(video: Path, segs: pd.DataFrame, cfg: dict, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path]:
    out_parquet, out_qc = folder / "faces.parquet", folder / "qc.csv"
    qc = extract_faces(video, segs, cfg, out_parquet, out_qc)
    return qc, pd.read_parquet(out_parquet), out_parquet, out_qc


def eye_centres(points: np.ndarray) -> np.ndarray:
    return alignment.keypoints(points)[:2]


@functools.cache
def dlib_models() -> tuple:
    landmarks = model_path({}, "landmarks_model", "shape_predictor_68_face_landmarks.dat")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmarks))


def remeasured_landmarks(crop: np.ndarray) -> np.ndarray:
    """dlib's landmarks of the face in an aligned crop, found again from scratch."""
    detector, predictor = dlib_models()
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    rects = detector(gray, 0)
    assert len(rects) == 1, "the aligned crop should show exactly one face"
    return np.array([(p.x, p.y) for p in predictor(gray, rects[0]).parts()], np.float32)


def decode(crop: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)


# --- a face that leaves: face_then_no_face.mov, face in frames 0-71, title animation after ---------------

@pytest.fixture(scope="module")
def face_then_no_face(tmp_path_factory):
    folder = tmp_path_factory.mktemp("face_then_no_face")
    segs = segments((1, "neutral", 0, 40), (2, "happy", 40, 76), (3, "neutral", 76, 110))
    qc, table, out_parquet, out_qc = run(FIXTURES / "face_then_no_face.mov", segs, faces_defaults(), folder)
    return qc, table, out_parquet, out_qc


def test_every_frame_of_the_segments_has_a_row_in_order(face_then_no_face):
    _, table, _, _ = face_then_no_face
    assert table["frame"].tolist() == list(range(110))
    assert table["segment_id"].tolist() == [1] * 40 + [2] * 36 + [3] * 34


def test_face_is_found_while_it_is_there(face_then_no_face):
    _, table, _, _ = face_then_no_face
    assert table.loc[table["frame"] < 70, "face_found"].mean() >= 0.9
    # Most frames are tracked, not detected: a full detection at least every detect_every frames.
    face = table[table["face_found"]]
    assert face["tracked"].any() and (~face["tracked"]).sum() >= len(face) // 10


def test_frames_without_a_face_are_rows_with_face_found_false(face_then_no_face):
    _, table, _, _ = face_then_no_face
    gone = table[table["frame"] >= 76]
    assert len(gone) == 34 and not gone["face_found"].any()
    assert gone["det_score"].isna().all()
    assert gone["bbox"].isna().all() and gone["landmarks"].isna().all() and gone["crop"].isna().all()
    assert not gone["tracked"].any()


def test_face_rows_hold_box_landmarks_and_crop(face_then_no_face):
    _, table, _, _ = face_then_no_face
    for row in table[table["face_found"]].itertuples():
        x0, y0, x1, y1 = row.bbox
        assert 0 <= x0 < x1 <= 960 and 0 <= y0 < y1 <= 540
        points = np.asarray(row.landmarks).reshape(68, 2)
        centre = points.mean(axis=0)
        assert x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1
        assert not math.isnan(row.det_score)
        assert decode(row.crop).shape == (224, 224, 3)


def test_aligned_crops_put_the_eyes_on_the_template(face_then_no_face):
    _, table, _, _ = face_then_no_face
    template_eyes = alignment.template(224)[:2]
    for row in table[table["face_found"]].itertuples():
        points = np.asarray(row.landmarks, np.float32).reshape(68, 2)
        through_matrix = alignment.transform(eye_centres(points), alignment.matrix(points, 224))
        assert np.linalg.norm(through_matrix - template_eyes, axis=1).max() <= EYE_TOLERANCE, row.frame
    for row in table[table["face_found"]].itertuples():  # dlib again on the decoded crop
        remeasured = eye_centres(remeasured_landmarks(decode(row.crop)))
        assert np.linalg.norm(remeasured - template_eyes, axis=1).max() <= EYE_TOLERANCE_REMEASURED, row.frame


def test_qc_reports_segments_and_video(face_then_no_face):
    qc, table, _, out_qc = face_then_no_face
    written = pd.read_csv(out_qc)
    assert list(written["label"]) == ["neutral", "happy", "neutral", "all"]
    segment_rows, video = written.iloc[:3], written.iloc[3]
    assert list(segment_rows["frames"]) == [40, 36, 34]
    assert segment_rows["faces_found"].iloc[2] == 0 and segment_rows["detection_rate"].iloc[2] == 0
    assert segment_rows["detection_rate"].iloc[0] >= 0.9
    assert pd.isna(video["segment_id"]) and video["frames"] == 110
    assert video["faces_found"] == table["face_found"].sum()
    assert video["frames_per_second"] > 0 and video["seconds_per_frame"] > 0
    assert qc["faces_found"].tolist() == written["faces_found"].tolist()


def test_parquet_schema_and_note(face_then_no_face):
    _, _, out_parquet, _ = face_then_no_face
    schema = pq.read_schema(out_parquet)
    assert str(schema.field("frame").type) == "int32"
    assert str(schema.field("det_score").type) == "float"
    assert str(schema.field("crop").type) == "binary"
    note = yaml.safe_load(schema.metadata[METADATA_KEY])  # JSON is YAML
    assert note["crop_size"] == 224 and note["crop_format"] == "jpg" and note["detector"] == "hog"
    assert note["template_pixels"]["left_eye"] == pytest.approx([0.34 * 224, 0.36 * 224])
    assert pq.ParquetFile(out_parquet).metadata.num_rows == 110


# --- other clips -------------------------------------------------------------------------------------------

def test_detection_rate_on_a_face_clip_and_a_gap_between_segments(cfg, tmp_path):
    segs = segments((1, "neutral", 0, 20), (2, "happy", 24, 72))
    qc, table, _, _ = run(VIDEOS / "man_neutral_to_happy.mp4", segs, cfg, tmp_path)
    assert table["frame"].tolist() == list(range(20)) + list(range(24, 72))
    assert (qc["detection_rate"] >= 0.9).all()
    # After a gap in frame numbers the face is detected afresh, not tracked.
    assert not table.set_index("frame").loc[24, "tracked"]


def test_png_crops_of_another_size(cfg, tmp_path):
    cfg.update(crop_format="png", crop_size=96)
    _, table, out_parquet, _ = run(VIDEOS / "man_neutral_to_happy.mp4", segments((1, "neutral", 0, 8)), cfg, tmp_path)
    assert table["face_found"].all()
    crop = table["crop"].iloc[0]
    assert crop.startswith(b"\x89PNG") and decode(crop).shape == (96, 96, 3)
    note = yaml.safe_load(pq.read_schema(out_parquet).metadata[METADATA_KEY])
    assert note["crop_size"] == 96 and note["template_pixels"]["right_eye"] == pytest.approx([0.66 * 96, 0.36 * 96])


def test_a_segment_without_a_face_is_named_in_a_warning(cfg, tmp_path, caplog):
    segs = segments((1, "happy", 60, 70), (7, "neutral", 80, 90))
    with caplog.at_level(logging.WARNING, logger="ferseq.faces.face_extraction"):
        qc, _, _, _ = run(FIXTURES / "face_then_no_face.mov", segs, cfg, tmp_path)
    assert "segment 7 (neutral, frames 80-90) has no face" in caplog.text
    assert qc.set_index("label").loc["neutral", "faces_found"] == 0


def test_a_video_without_any_face_fails_and_writes_nothing(cfg, tmp_path):
    video = FIXTURES / "no_face.mp4"
    with pytest.raises(NoFaceError, match="no_face.mp4"):
        extract_faces(video, segments((1, "neutral", 0, 30)), cfg, tmp_path / "f.parquet", tmp_path / "qc.csv")
    assert list(tmp_path.iterdir()) == []


def test_skip_faceless_videos_keeps_rows_without_faces(cfg, tmp_path, caplog):
    cfg["skip_faceless_videos"] = True
    with caplog.at_level(logging.WARNING, logger="ferseq.faces.face_extraction"):
        qc, table, _, _ = run(FIXTURES / "no_face.mp4", segments((1, "neutral", 0, 30)), cfg, tmp_path)
    assert len(table) == 30 and not table["face_found"].any() and table["crop"].isna().all()
    assert qc["faces_found"].sum() == 0
    assert "no_face.mp4" in caplog.text


def test_frames_past_the_end_of_the_video_fail_and_write_nothing(cfg, tmp_path):
    with pytest.raises(VideoError, match="man_neutral_to_happy.mp4"):
        extract_faces(VIDEOS / "man_neutral_to_happy.mp4", segments((1, "happy", 60, 90)), cfg,
                      tmp_path / "f.parquet", tmp_path / "qc.csv")
    assert list(tmp_path.iterdir()) == []


def test_to_end_runs_the_last_segment_to_where_the_video_ends(cfg, tmp_path):
    # The same rows as a last segment that ends exactly where the video does.
    video = VIDEOS / "man_neutral_to_happy.mp4"
    n = probe(video).frames
    segs = segments((1, "neutral", 0, 20), (2, "happy", 50, n))
    exact = extract_faces(video, segs, cfg, tmp_path / "exact.parquet", tmp_path / "exact.csv")
    segs.loc[1, "end"] = 1000
    open_ended = extract_faces(video, segs, cfg, tmp_path / "to_end.parquet", tmp_path / "to_end.csv", to_end=True)
    assert pd.read_parquet(tmp_path / "to_end.parquet").equals(pd.read_parquet(tmp_path / "exact.parquet"))
    assert open_ended.drop(columns=["seconds_per_frame", "frames_per_second"]).equals(
        exact.drop(columns=["seconds_per_frame", "frames_per_second"]))
    # only the last segment may be cut short
    segs = segments((1, "neutral", 60, n + 10), (2, "happy", n + 20, n + 30))
    with pytest.raises(VideoError, match=f"before frame {n} of segment 1"):
        extract_faces(video, segs, cfg, tmp_path / "f.parquet", tmp_path / "qc.csv", to_end=True)


def test_iter_frames_reads_wanted_frames_lazily_and_in_order():
    video = VIDEOS / "man_neutral_to_happy.mp4"
    n = probe(video).frames
    # an open-ended range stops where the video does, without being materialised
    assert [i for i, _ in iter_frames(video, itertools.chain([3, 5], itertools.count(n - 2)))] == [3, 5, n - 2, n - 1]
    with pytest.raises(ValueError, match="frames must increase: 2 after 5"):
        list(iter_frames(video, [5, 2]))


def test_overlapping_segments_are_refused(cfg, tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        extract_faces(VIDEOS / "man_neutral_to_happy.mp4", segments((1, "a", 0, 10), (2, "b", 5, 15)), cfg,
                      tmp_path / "f.parquet", tmp_path / "qc.csv")


# --- stills --------------------------------------------------------------------------------------------------

def test_several_faces_keep_the_central_one(cfg):
    image = cv2.imread(str(FIXTURES / "multi_face.jpg"))
    cfg["detect_scale"] = 1.0  # the faces are about 100 px wide
    detections = make_detector(cfg)(image)
    assert len(detections) >= 3
    height, width = image.shape[:2]
    nearest = min(detections, key=lambda d: math.dist(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2),
                                                      (width / 2, height / 2)))
    face = find_face(image, cfg)
    assert face is not None and face.box == nearest.box


def test_central_face_rule():
    left = Detection((0, 0, 100, 100), 3.0)
    middle = Detection((450, 250, 550, 350), 0.1)  # lower score, but in the middle of a 1000x600 frame
    assert central_face([left, middle], 1000, 600) is middle
    assert central_face([], 1000, 600) is None


def test_single_face_landmarks_and_alignment(cfg):
    image = cv2.imread(str(FIXTURES / "single_face.jpg"))
    face = find_face(image, cfg)
    assert face is not None and not face.tracked
    x0, y0, x1, y1 = face.box
    points = face.landmarks
    assert points.shape == (68, 2)
    left_eye, right_eye, mouth = alignment.keypoints(points)
    assert left_eye[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < mouth[1]
    assert x0 <= mouth[0] <= x1 and y0 <= mouth[1] <= y1
    crop = alignment.align(image, points, 224)
    remeasured = eye_centres(remeasured_landmarks(crop))
    assert np.linalg.norm(remeasured - alignment.template(224)[:2], axis=1).max() <= EYE_TOLERANCE_REMEASURED


def test_mmod_detector_finds_the_same_face(cfg):
    image = cv2.imread(str(FIXTURES / "single_face.jpg"))
    hog = find_face(image, cfg)
    mmod = find_face(image, {**cfg, "detector": "mmod"})
    assert mmod is not None
    # The two boxes overlap mostly: intersection over union.
    (a0, b0, a1, b1), (c0, d0, c1, d1) = hog.box, mmod.box
    inter = max(0, min(a1, c1) - max(a0, c0)) * max(0, min(b1, d1) - max(b0, d0))
    union = (a1 - a0) * (b1 - b0) + (c1 - c0) * (d1 - d0) - inter
    assert inter / union > 0.5


# --- configuration errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,detector", [("landmarks_model", "hog"), ("mmod_model", "mmod")])
def test_a_missing_model_file_names_its_key_and_path(cfg, tmp_path, key, detector):
    missing = tmp_path / "nowhere" / "model.dat"
    cfg.update({key: str(missing), "detector": detector})
    with pytest.raises(ConfigError, match=f"faces.{key}") as err:
        extract_faces(VIDEOS / "man_neutral_to_happy.mp4", segments((1, "happy", 0, 10)), cfg,
                      tmp_path / "f.parquet", tmp_path / "qc.csv")
    assert str(missing) in str(err.value)
    assert not (tmp_path / "f.parquet").exists() and not (tmp_path / "qc.csv").exists()


def test_opencv_dnn_needs_both_model_paths(cfg, tmp_path):
    cfg.update(detector="opencv_dnn", dnn_model=str(tmp_path / "res10.caffemodel"))
    with pytest.raises(ConfigError, match="faces.dnn_model.*faces.dnn_prototxt"):
        make_detector(cfg)
    cfg["dnn_prototxt"] = str(tmp_path / "deploy.prototxt")
    with pytest.raises(ConfigError, match="faces.dnn_model"):  # configured, but no such file
        make_detector(cfg)
    (tmp_path / "res10.caffemodel").write_bytes(b"not a model")
    (tmp_path / "deploy.prototxt").write_text("not a prototxt")
    with pytest.raises(ConfigError, match="faces."):  # unreadable, or no Caffe importer (OpenCV 5)
        make_detector(cfg)


# --- OpenCV's ResNet-10 SSD with its real files ($FERSEQ_SSD_MODELS; skipped without them, failed in CI) --------

@pytest.fixture
def ssd_cfg(cfg, ssd_models) -> dict:
    model, prototxt = SSD_FILES
    cfg.update(detector="opencv_dnn", dnn_model=str(ssd_models / model), dnn_prototxt=str(ssd_models / prototxt))
    return cfg


def test_ssd_finds_the_face_of_a_still_where_hog_does(cfg, ssd_cfg):
    image = cv2.imread(str(FIXTURES / "single_face.jpg"))
    detections = make_detector(ssd_cfg)(image)
    assert isinstance(make_detector(ssd_cfg), SsdDetector) and len(detections) == 1
    assert ssd_cfg["confidence"] <= detections[0].score <= 1
    ssd, hog = find_face(image, ssd_cfg), find_face(image, faces_defaults())
    (a0, b0, a1, b1), (c0, d0, c1, d1) = ssd.box, hog.box
    inter = max(0, min(a1, c1) - max(a0, c0)) * max(0, min(b1, d1) - max(b0, d0))
    assert inter / ((a1 - a0) * (b1 - b0) + (c1 - c0) * (d1 - d0) - inter) > 0.5  # the same face


def test_ssd_keeps_the_central_face_of_several(ssd_cfg):
    image = cv2.imread(str(FIXTURES / "multi_face.jpg"))
    detections = make_detector(ssd_cfg)(image)
    assert len(detections) >= 2 and all(d.score >= ssd_cfg["confidence"] for d in detections)
    height, width = image.shape[:2]
    face = find_face(image, ssd_cfg)
    assert face is not None and face.box == central_face(detections, width, height).box


# Measured with these files on the demo clips (the figures): every frame of both face clips, and in
# man_after_title exactly frames 96-167 (none of the title animation before, none in the last frame).
@pytest.mark.parametrize("video,frames,found", [
    ("woman_sad_to_happy.mp4", 472, range(472)),
    ("man_neutral_to_happy.mp4", 72, range(72)),
    ("man_after_title.mov", 169, range(96, 168)),
])
def test_ssd_on_the_demo_clips_finds_the_faces_and_none_in_the_title(ssd_cfg, tmp_path, video, frames, found):
    qc, table, out_parquet, _ = run(VIDEOS / video, segments((1, "all", 0, frames)), ssd_cfg, tmp_path)
    assert len(table) == frames and table.loc[table["face_found"], "frame"].tolist() == list(found)
    assert qc.iloc[-1]["faces_found"] == len(found)
    detected = table[table["face_found"] & ~table["tracked"]]
    assert (detected["det_score"] >= ssd_cfg["confidence"]).all() and (detected["det_score"] <= 1).all()
    assert yaml.safe_load(pq.read_schema(out_parquet).metadata[METADATA_KEY])["detector"] == "opencv_dnn"
