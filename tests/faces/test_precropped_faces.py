"""``faces.detector: none`` on pre-cropped frames: each frame is the face box, landmarks and alignment as usual.

The crops are real: frames of a demo clip cut to their dlib HOG face box and
resized to 224 x 224, as DFEW's ``clip_224x224`` ships its frames, written as
an image-sequence folder.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import DEMO
from ferseq.common.errors import ConfigError
from ferseq.data.videos import iter_frames
from ferseq.faces import alignment
from ferseq.faces.detection import central_face, make_detector
from ferseq.faces.face_extraction import DEFAULTS, METADATA_KEY, extract_faces, landmark_model

VIDEO = DEMO / "videos" / "man_neutral_to_happy.mp4"  # 72 frames, one face throughout
SIZE = 224


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Every third frame of the clip cut to its HOG face box (squared) at 224 x 224, as PNG frames of one folder."""
    folder = tmp_path_factory.mktemp("precropped") / "clip"
    folder.mkdir()
    hog = make_detector({"detector": "hog"})
    for index, frame in iter_frames(VIDEO, range(0, 72, 3)):
        height, width = frame.shape[:2]
        found = central_face(hog(frame), width, height)
        assert found is not None, f"frame {index}: the demo clip shows its face in every frame"
        x0, y0, x1, y1 = found.box
        side = int(round(max(x1 - x0, y1 - y0)))
        left = int(round(min(max((x0 + x1 - side) / 2, 0), width - side)))
        top = int(round(min(max((y0 + y1 - side) / 2, 0), height - side)))
        crop = cv2.resize(frame[top:top + side, left:left + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        assert cv2.imwrite(str(folder / f"{index:04d}.png"), crop)
    return folder


def test_detector_none_takes_the_whole_frame_as_the_face_box_unless_it_is_blank():
    detector = make_detector({"detector": "none"})
    frame = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)  # no face: still the face box
    [found] = detector(frame)
    assert found.box == (0.0, 0.0, 240.0, 180.0) and found.score == 1.0
    # blank frames have none: one grey level (FER2013's empty images), or a fade to black with a little noise
    assert detector(np.zeros((180, 240, 3), np.uint8)) == [] and detector(np.full((48, 48, 3), 128, np.uint8)) == []
    dark = np.random.default_rng(1).integers(0, 4, (180, 240, 3), dtype=np.uint8)
    assert 0.5 < dark.std() < 2 and detector(dark) == []
    edge = np.zeros((180, 240, 3), np.uint8)
    edge[:, 120:] = 5  # two grey levels 5 apart: std 2.5, not blank
    assert len(detector(edge)) == 1
    with pytest.raises(ConfigError, match="not one of hog, mmod, opencv_dnn, none"):
        make_detector({"detector": "haar"})


def test_detector_none_keeps_every_pre_cropped_frame(crops, tmp_path):
    n = len(list(crops.iterdir()))
    segments = pd.DataFrame({"segment_id": [1, 2], "label": ["neutral", "happy"], "start": [0, 12], "end": [12, n]})
    cfg = {**DEFAULTS, "detector": "none"}
    qc = extract_faces(crops, segments, cfg, tmp_path / "faces.parquet", tmp_path / "qc.csv")
    table = pd.read_parquet(tmp_path / "faces.parquet")
    assert table["frame"].tolist() == list(range(n)) and table["face_found"].all()
    assert qc["detection_rate"].tolist() == [1.0, 1.0, 1.0]
    assert not table["tracked"].any()  # every frame gets its landmarks in its own frame box, nothing is followed
    assert np.allclose(np.stack(table["bbox"].to_numpy()), [0, 0, SIZE, SIZE])
    note = json.loads(pq.read_schema(tmp_path / "faces.parquet").metadata[METADATA_KEY])
    assert note["detector"] == "none"

    # Landmarks as usual: where HOG finds the face in a crop, the landmarks in the frame box are those in HOG's box
    # within a few pixels; and the aligned crop, measured again from scratch, has its eyes on the template.
    hog, predictor = make_detector({"detector": "hog", "detect_scale": 1.0}), landmark_model(DEFAULTS)
    compared = remeasured = 0
    for (_, image), points, crop in zip(iter_frames(crops), table["landmarks"], table["crop"]):
        points = np.asarray(points, np.float32).reshape(68, 2)
        found = central_face(hog(image), SIZE, SIZE)
        if found is not None:
            in_hog_box = predictor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), found.box)
            assert np.linalg.norm(points - in_hog_box, axis=1).mean() < 6.0
            compared += 1
        aligned = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)
        again = central_face(hog(aligned), SIZE, SIZE)
        if again is not None:
            eyes = alignment.keypoints(predictor(cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY), again.box))[:2]
            assert np.linalg.norm(eyes - alignment.template(SIZE)[:2], axis=1).max() < 8.0
            remeasured += 1
    assert compared >= n // 2 and remeasured >= n // 2
