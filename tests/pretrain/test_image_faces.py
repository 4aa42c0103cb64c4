"""Pretraining faces on real images: the crops the faces stage makes, in a seeded random order, chunked, parallel,
resumable.

The images are the test stills (tests/fixtures), frames of the demo clips (a title frame without a face among
them) and a plain grey image, in small :class:`ImageSet` s built here over images in memory or PNG files in
tmp_path; the real dlib and OpenCV models run on them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import DEMO, FIXTURES, ferseq_log
from ferseq.common.errors import FerseqError
from ferseq.data.videos import iter_frames
from ferseq.faces import alignment
from ferseq.faces.detection import central_face, make_detector
from ferseq.faces.face_extraction import DEFAULTS, ROWS_PER_GROUP, find_face, parquet_schema
from ferseq.faces.face_tracking import Face
from ferseq.frame_model.crops import ParquetCrops, decode, index_face_rows
from ferseq.pretrain.image_faces import extract_image_faces, file_order
from ferseq.pretrain.image_sets import ImageSet, ImageSetError

VIDEOS = DEMO / "videos"
GREY = np.full((360, 480, 3), 128, np.uint8)  # nothing to detect


@functools.cache
def frames(video: str, wanted: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return tuple(image for _, image in iter_frames(VIDEOS / video, wanted))


def still(name: str) -> np.ndarray:
    return cv2.imread(str(FIXTURES / name))


def table_of(labels: list[str]) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"image_id": np.arange(n, dtype=np.int64), "name": [f"img/{i:03d}.png" for i in range(n)],
                         "label": labels, "subject": [f"s{i % 3}" for i in range(n)], "split": "train"})


class MemorySet:
    """An :class:`ImageSet` over images in memory that records which images it loads (and, in ``journal``, which
    process loads them: workers' loads do not reach ``loaded``) and fails on ``bad`` ones."""

    def __init__(self, images: list[np.ndarray], labels: list[str], bad: frozenset[int] = frozenset(),
                 journal: Path | None = None):
        self.images, self.bad, self.journal, self.loaded = images, bad, journal, []
        self.set = ImageSet(table_of(labels), self.load, format="folder", root=Path("memory"))

    def load(self, image_id: int) -> np.ndarray:
        self.loaded.append(image_id)
        if self.journal is not None:
            with open(self.journal, "a") as journal:
                journal.write(f"{os.getpid()} {image_id}\n")
        if image_id in self.bad:
            raise ImageSetError("cannot be decoded")  # without the name: the stage adds it
        return self.images[image_id].copy()


def file_set(folder: Path, images: list[np.ndarray], labels: list[str]) -> ImageSet:
    """An :class:`ImageSet` over PNG files written to ``folder``, read back as a reader would."""
    table = table_of(labels)
    for name, image in zip(table["name"], images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / name), image)

    def load(image_id: int) -> np.ndarray:
        path = folder / table["name"][image_id]
        image = cv2.imread(str(path))
        if image is None:
            raise ImageSetError(f"{path}: cannot be read as an image")
        return image

    return ImageSet(table, load, format="folder", root=folder)


def run(images: ImageSet, cfg: dict, folder: Path, **kwargs) -> tuple[pd.DataFrame, Path, Path]:
    out_faces, out_table = folder / "faces.parquet", folder / "images.parquet"
    table = extract_image_faces(images, cfg, out_faces, out_table, **kwargs)
    return table, out_faces, out_table


def row_groups(path: Path) -> list[int]:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]


def assert_same_file(path: Path, other: Path) -> None:
    """Two faces files with the same rows, row groups and schema (metadata included)."""
    table, other_table = pq.read_table(path), pq.read_table(other)
    assert table.schema.equals(other_table.schema, check_metadata=True)
    assert row_groups(path) == row_groups(other)
    for name in table.column_names:
        if name == "det_score":  # NaN without a face, which Arrow's equals does not match
            np.testing.assert_array_equal(table[name].to_numpy(), other_table[name].to_numpy())
        else:
            assert table[name].equals(other_table[name]), name


def expected_crop(image: np.ndarray, cfg: dict) -> tuple[Face | None, bytes | None]:
    """The face that find_face gives and the crop the faces stage makes of it."""
    face = find_face(image, cfg)
    if face is None:
        return None, None
    return face, alignment.encode(alignment.align(image, face.landmarks, cfg["crop_size"]), "jpg", 95)


# Woman, man, man after the title: every one shows a face with hog (checked below), 12 images for the chunk tests.
def twelve_frames() -> list[np.ndarray]:
    return [*frames("woman_sad_to_happy.mp4", (0, 60, 120, 180, 240, 300, 360, 420)),
            *frames("man_neutral_to_happy.mp4", (0, 35, 70)), *frames("man_after_title.mov", (130,))]


TWELVE_LABELS = ["sadness", "happiness", "neutral"] * 4


# --- what the stage writes ------------------------------------------------------------------------------------

def test_hog_finds_the_faces_and_makes_the_faces_stage_crops(tmp_path):
    title = frames("man_after_title.mov", (10,))[0]  # the title animation: no face
    images = [still("single_face.jpg"), GREY, still("multi_face.jpg"), *frames("man_neutral_to_happy.mp4", (30,)),
              title, *frames("woman_sad_to_happy.mp4", (300,))]
    labels = ["happiness", "neutral", "happiness", "neutral", "neutral", "happiness"]
    cfg = {**DEFAULTS, "detect_scale": 1.0}  # multi_face's faces are about 100 px wide
    with ferseq_log() as messages:
        table, out_faces, out_table = run(file_set(tmp_path / "set", images, labels), cfg, tmp_path, chunk=4)

    faces = pq.read_table(out_faces).to_pandas()
    assert pq.read_schema(out_faces).equals(parquet_schema(cfg), check_metadata=False)
    assert faces["segment_id"].tolist() == file_order(table)["image_id"].tolist() != list(range(6))
    faces = faces.sort_values("segment_id").reset_index(drop=True)
    assert faces["segment_id"].tolist() == list(range(6)) and faces["frame"].tolist() == [0] * 6
    assert faces["face_found"].tolist() == [True, False, True, True, False, True]
    for row, image in zip(faces.itertuples(), images):  # each row is its own image's face and crop
        face, crop = expected_crop(image, cfg)
        assert row.face_found == (face is not None) and not row.tracked
        if face is None:
            assert row.crop is None and row.bbox is None and row.landmarks is None and np.isnan(row.det_score)
            continue
        assert row.crop == crop and decode(row.crop, 224).shape == (224, 224, 3)
        np.testing.assert_array_equal(row.landmarks, face.landmarks.reshape(-1))
        np.testing.assert_allclose(row.bbox, face.box)
        assert row.det_score == np.float32(face.score)

    pd.testing.assert_frame_equal(table, pd.read_parquet(out_table))
    assert table.columns.tolist() == ["image_id", "name", "label", "subject", "split", "face_found", "det_score"]
    assert table["name"].tolist() == [f"img/{i:03d}.png" for i in range(6)]
    assert table["face_found"].tolist() == faces["face_found"].tolist()
    np.testing.assert_array_equal(table["det_score"], faces["det_score"])
    # neutral: a face in 1 of 3 images (the grey and the title have none) is warned about; happiness is not
    assert "label neutral: faces found in only 33.3% of the images (pretrain.faces.detector is hog; for images " \
           "that are already face crops, pretrain.faces.detector: none takes each whole image as the face box)" \
           in messages
    assert "label happiness: faces in 3 of 3 images (100.0%)" in messages
    assert "all images: faces in 4 of 6 images (66.7%)" in messages
    assert not (tmp_path / ".faces.parquet.partial").exists()


def test_training_reads_the_faces_by_image_id(tmp_path):
    images = MemorySet([GREY, *twelve_frames()[:5]], ["neutral"] * 6)
    _, out_faces, _ = run(images.set, DEFAULTS, tmp_path)
    rows = index_face_rows([out_faces])
    assert sorted(rows.segment_id.tolist()) == [1, 2, 3, 4, 5] and rows.frame.tolist() == [0] * 5
    _, data, offsets = ParquetCrops(rows).read(0)
    read = {int(image_id): bytes(data[offsets[i]:offsets[i + 1]]) for i, image_id in enumerate(rows.segment_id)}
    assert read == {i: expected_crop(image, DEFAULTS)[1] for i, image in enumerate(twelve_frames()[:5], start=1)}


def precropped(count: int, side: int = 112) -> list[np.ndarray]:
    """The woman clip's first ``count`` frames cut to her HOG face box of frame 0, as face-crop sets ship them."""
    clip = frames("woman_sad_to_happy.mp4", tuple(range(count)))
    x0, y0, x1, y1 = (int(round(v)) for v in central_face(make_detector(DEFAULTS)(clip[0]), 640, 360).box)
    return [cv2.resize(frame[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA) for frame in clip]


def test_detector_none_keeps_every_pre_cropped_face_in_row_groups_of_256(tmp_path):
    images = precropped(300)
    cfg = {**DEFAULTS, "detector": "none", "crop_size": 64}
    table, out_faces, _ = run(MemorySet(images, ["sadness"] * 300).set, cfg, tmp_path / "a", chunk=100)
    assert table["face_found"].all() and (table["det_score"] == 1.0).all()
    # parts of 100 rows merged into whole row groups, as one part gives them
    assert row_groups(out_faces) == [ROWS_PER_GROUP, 300 - ROWS_PER_GROUP]
    _, one_part, _ = run(MemorySet(images, ["sadness"] * 300).set, cfg, tmp_path / "b", chunk=1000)
    assert_same_file(out_faces, one_part)
    faces = pq.read_table(out_faces, columns=["segment_id", "crop"])
    ids, crops = faces["segment_id"].to_pylist(), faces["crop"].to_pylist()
    assert sorted(ids) == list(range(300))
    for i in (0, 99, 100, 255, 256, 299):  # each row its own image's crop, across parts and row groups
        assert crops[i] == expected_crop(images[ids[i]], cfg)[1]
    assert decode(crops[0], 64).shape == (64, 64, 3)


def test_hog_misses_a_tight_crop_that_detector_none_keeps(tmp_path):
    crop = precropped(1, side=96)[0]  # a face filling a small image: too small for hog at scale 0.5
    with pytest.raises(FerseqError, match="no face found in any of the 1 images"):
        run(MemorySet([crop], ["sadness"]).set, DEFAULTS, tmp_path)
    table, _, _ = run(MemorySet([crop], ["sadness"]).set, {**DEFAULTS, "detector": "none"}, tmp_path)
    assert table["face_found"].tolist() == [True]


def test_the_file_order_is_a_seeded_shuffle_that_mixes_the_classes_in_every_row_group():
    # A set listed by class, as the public releases are: 300 of one class, then 300 of another.
    listed = table_of(["anger"] * 300 + ["happiness"] * 300)
    order = file_order(listed)
    assert sorted(order["image_id"]) == list(range(600))
    pd.testing.assert_frame_equal(order, file_order(listed.iloc[::-1]))  # whatever order the set listed them in
    for start in range(0, 600 - ROWS_PER_GROUP + 1, ROWS_PER_GROUP):  # each whole row group: both classes, mixed
        share = (order["label"].iloc[start:start + ROWS_PER_GROUP] == "anger").mean()
        assert 0.35 < share < 0.65, (start, share)


# --- parallel and resumed -------------------------------------------------------------------------------------

def test_two_workers_write_the_same_file_as_one(tmp_path):
    images = [*twelve_frames()[:4], GREY, *twelve_frames()[4:]]  # 13 images, a blank among them: 5 chunks of 3
    labels = [*TWELVE_LABELS, "neutral"]
    one, out_one, _ = run(MemorySet(images, labels).set, DEFAULTS, tmp_path / "one", chunk=3)
    journal = tmp_path / "loads.txt"
    two, out_two, _ = run(MemorySet(images, labels, journal=journal).set, DEFAULTS, tmp_path / "two", chunk=3,
                          workers=2)
    loads = [line.split() for line in journal.read_text().splitlines()]
    assert sorted(int(image_id) for _, image_id in loads) == list(range(13))  # each image once ...
    pids = {int(pid) for pid, _ in loads}
    assert os.getpid() not in pids and len(pids) <= 2  # ... by the two workers
    assert one["face_found"].tolist() == [True] * 4 + [False] + [True] * 8
    pd.testing.assert_frame_equal(one, two)
    assert_same_file(out_one, out_two)
    assert row_groups(out_one) == [13]


def chunks_of(labels: list[str], size: int) -> list[list[int]]:
    """The image ids of each chunk of ``size``: consecutive slices of the file's order."""
    order = file_order(table_of(labels))["image_id"].tolist()
    return [order[start:start + size] for start in range(0, len(order), size)]


def test_a_rerun_computes_only_the_chunks_that_failed(tmp_path):
    images, cfg = twelve_frames(), {**DEFAULTS, "jpeg_quality": 90}
    _, reference, _ = run(MemorySet(images, TWELVE_LABELS).set, cfg, tmp_path / "reference", chunk=3)
    out, partial = tmp_path / "out", tmp_path / "out" / ".faces.parquet.partial"
    chunks = chunks_of(TWELVE_LABELS, 3)
    bad = next(index for index, chunk in enumerate(chunks) if 7 in chunk)  # the chunk holding image 7
    # each chunk's images in the file's order; the bad chunk's until image 7
    loads = [image for chunk in chunks for image in (chunk[:chunk.index(7) + 1] if 7 in chunk else chunk)]
    kept = [f"{index:06d}" for index in range(4) if index != bad]

    failing = MemorySet(images, TWELVE_LABELS, bad=frozenset({7}))
    with pytest.raises(ImageSetError, match=r"1 chunk\(s\) of 3 images stopped .*\n  img/007.png: cannot be decoded"):
        run(failing.set, DEFAULTS, out, chunk=3)
    assert failing.loaded == loads  # the chunk stopped at image 7, the others still ran
    assert not (out / "faces.parquet").exists() and not (out / "images.parquet").exists()
    first = sorted(p.name for p in partial.iterdir())
    assert [name[:6] for name in first] == kept

    # other settings (jpeg_quality): none of those parts is theirs; they are replaced, not reused
    failing = MemorySet(images, TWELVE_LABELS, bad=frozenset({7}))
    with pytest.raises(ImageSetError, match="img/007.png"):
        run(failing.set, cfg, out, chunk=3)
    assert failing.loaded == loads
    second = sorted(p.name for p in partial.iterdir())
    assert [name[:6] for name in second] == kept and not set(first) & set(second)

    (partial / f"{bad:06d}-0123456789abcdef.parquet").write_bytes(b"not a part")  # another digest's: never read
    (partial / f".{bad:06d}-x.parquet.tmp123").write_bytes(b"")  # what a killed run leaves
    fixed = MemorySet(images, TWELVE_LABELS)
    with ferseq_log() as messages:
        table, out_faces, _ = run(fixed.set, cfg, out, chunk=3)
    assert fixed.loaded == chunks[bad]
    assert "12 images in 4 chunks of 3, detector hog, 1 worker(s); 3 chunks reused from an earlier run" in messages
    assert_same_file(out_faces, reference)
    assert table["face_found"].all() and not partial.exists()


def test_a_failed_parallel_run_keeps_its_chunks_for_the_next(tmp_path):
    images = twelve_frames()
    with pytest.raises(ImageSetError, match="img/004.png: cannot be decoded"):
        run(MemorySet(images, TWELVE_LABELS, bad=frozenset({4})).set, DEFAULTS, tmp_path, chunk=3, workers=2)
    assert not (tmp_path / "faces.parquet").exists() and not (tmp_path / "images.parquet").exists()
    with ferseq_log() as messages:
        _, out_faces, _ = run(MemorySet(images, TWELVE_LABELS).set, DEFAULTS, tmp_path, chunk=3, workers=2)
    assert "12 images in 4 chunks of 3, detector hog, 2 worker(s); 3 chunks reused from an earlier run" in messages
    assert "12/12 images" in " ".join(messages)
    _, reference, _ = run(MemorySet(images, TWELVE_LABELS).set, DEFAULTS, tmp_path / "reference", chunk=12)
    assert_same_file(out_faces, reference)


# --- errors ---------------------------------------------------------------------------------------------------

def test_an_unreadable_file_fails_naming_it(tmp_path):
    images = file_set(tmp_path / "set", [*twelve_frames()[:3]], ["neutral"] * 3)
    (images.root / "img/001.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ImageSetError, match=r"img/001.png: cannot be read as an image"):
        run(images, DEFAULTS, tmp_path / "out")
    assert not (tmp_path / "out" / "faces.parquet").exists()


def test_an_empty_set_fails(tmp_path):
    with pytest.raises(ImageSetError, match="the folder set in memory has no images"):
        run(MemorySet([], []).set, DEFAULTS, tmp_path)
    assert not any(tmp_path.iterdir())


def test_no_face_in_any_image_fails_naming_the_detector_setting(tmp_path):
    title = frames("man_after_title.mov", (10, 50))
    with pytest.raises(FerseqError, match=r"no face found in any of the 3 images .*pretrain\.faces\.detector is hog"
                                          r".*pretrain\.faces\.detector: none"):
        run(MemorySet([GREY, *title], ["neutral"] * 3).set, DEFAULTS, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".faces.parquet.partial"]  # no output, the parts kept
