"""The image-set readers on tiny sets laid out in each release's own files, written into a temporary folder.

Pictures are crops of the real face still (tests/fixtures/single_face.jpg), turned a quarter further each time
so that no two are alike, and written as the releases ship them (JPEG for RAF-DB and AffectNet, 48x48 grey
pixel strings in a CSV for FER2013 and FERPlus). Every test spells out the labels it expects code by code, so a
swapped code in a reader's mapping fails it; pixels are compared exactly where the format is lossless.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES, ferseq_log
from ferseq.pretrain.image_sets import EMOTIONS, FORMATS, ImageSet, ImageSetError, read_image_set

FER_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
                    "arousal")


# --------------------------------------------------------------------------- real pictures and release files


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    image = cv2.imread(str(FIXTURES / "single_face.jpg"))
    assert image is not None and image.shape == (562, 572, 3)
    return image


def _pictures(face: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    """n different size x size BGR pictures of the face: crops at other places, each turned a quarter further."""
    return [np.ascontiguousarray(np.rot90(cv2.resize(face[20 * i:400 + 20 * i, 30 * i:400 + 30 * i], (size, size)), i))
            for i in range(n)]


def _which(image: np.ndarray, sources: list[np.ndarray]) -> int:
    """The source closest to ``image``: JPEG is lossy, so a loaded JPEG is only near the picture written."""
    return int(np.argmin([np.abs(image.astype(int) - source).mean() for source in sources]))


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _check_table(image_set: ImageSet, n: int) -> pd.DataFrame:
    """The columns and types every reader promises; gives the table."""
    table = image_set.table
    assert list(table.columns) == ["image_id", "name", "label", "subject", "split"]
    assert table["image_id"].dtype == np.int64 and table["image_id"].tolist() == list(range(n))
    assert isinstance(table["subject"].dtype, pd.StringDtype) and isinstance(table["split"].dtype, pd.StringDtype)
    assert table["subject"].dtype.na_value is pd.NA and table["split"].dtype.na_value is pd.NA
    assert set(table["split"].dropna()) <= {"train", "val", "test"}
    return table


def _pixel_text(pixels: np.ndarray) -> str:
    return " ".join(map(str, pixels.ravel()))


def _fer_pixels(face: np.ndarray, n: int) -> list[np.ndarray]:
    """n grey 48x48 images: the face first, then noise over the whole 0-255 range."""
    rng = np.random.default_rng(7)
    grey = cv2.resize(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), (48, 48))
    return [grey] + [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n - 1)]


def _write_fer2013(path: Path, rows: list[tuple[object, str, str]]) -> Path:
    """fer2013.csv (emotion, pixels as text, Usage) as the release writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    return path


# --------------------------------------------------------------------------- format and path


def test_an_unknown_format_or_a_missing_path_names_its_key(tmp_path):
    with pytest.raises(ImageSetError, match=r"pretrain\.images\.format: unknown format 'raf'; choose one of folder, "
                                            r"csv, rafdb, fer2013, ferplus, affectnet"):
        read_image_set("raf", tmp_path)
    here = re.escape(str(tmp_path))
    for format in FORMATS:
        with pytest.raises(ImageSetError, match=rf"pretrain\.images\.path: {here}/nowhere does not exist"):
            read_image_set(format, tmp_path / "nowhere")


# --------------------------------------------------------------------------- folder


def test_folder_of_class_folders_in_name_order_other_files_ignored(tmp_path, face):
    pictures = _pictures(face, 4, 64)
    root = tmp_path / "set"
    _write(root / "sad" / "b.png", pictures[0])
    _write(root / "happy" / "z.PNG", pictures[1])
    _write(root / "happy" / "a.bmp", pictures[2])
    _write(root / "sad" / "grey.png", cv2.cvtColor(pictures[3], cv2.COLOR_BGR2GRAY))
    (root / "happy" / "notes.txt").write_text("not an image")
    (root / "happy" / "._a.bmp").write_bytes(b"macOS resource fork")  # the shadow files of a zip made on a Mac
    with ferseq_log() as messages:
        image_set = read_image_set("folder", root)
    table = _check_table(image_set, 4)
    assert table["name"].tolist() == ["happy/a.bmp", "happy/z.PNG", "sad/b.png", "sad/grey.png"]
    assert table["label"].tolist() == ["happy", "happy", "sad", "sad"]
    assert table["subject"].isna().all() and table["split"].isna().all()
    for image_id, picture in enumerate([pictures[2], pictures[1], pictures[0]]):
        assert np.array_equal(image_set.load(image_id), picture)  # lossless formats: the very pixels
    grey = image_set.load(3)
    assert grey.shape == (64, 64, 3) and grey.dtype == np.uint8
    assert np.array_equal(grey[..., 0], cv2.cvtColor(pictures[3], cv2.COLOR_BGR2GRAY))
    assert np.array_equal(grey[..., 0], grey[..., 2])
    assert "folder: ignored 2 entries of the class folders that are not image files" in " ".join(messages)
    assert "folder:   no split: 4 (happy 2, sad 2)" in messages
    with pytest.raises(IndexError):
        image_set.load(-1)


def test_folder_with_split_folders_takes_the_split_from_them(tmp_path, face):
    pictures = _pictures(face, 3, 32)
    root = tmp_path / "set"
    _write(root / "train" / "anger" / "1.jpg", pictures[0])
    _write(root / "train" / "neutral" / "2.jpeg", pictures[1])
    _write(root / "test" / "neutral" / "3.webp", pictures[2])
    table = _check_table(image_set := read_image_set("folder", root), 3)
    assert table["name"].tolist() == ["test/neutral/3.webp", "train/anger/1.jpg", "train/neutral/2.jpeg"]
    assert table["label"].tolist() == ["neutral", "anger", "neutral"]
    assert table["split"].tolist() == ["test", "train", "train"]
    assert [_which(image_set.load(i), pictures) for i in range(3)] == [2, 0, 1]
    # A folder beside the split folders makes them class folders like any other, their subfolders too deep to read.
    _write(root / "other" / "4.png", pictures[0])
    with ferseq_log() as messages:
        table = read_image_set("folder", root).table
    assert table["name"].tolist() == ["other/4.png"] and table["split"].isna().all()
    assert "folder: ignored 3 entries of the class folders that are not image files" in " ".join(messages)


def test_folder_errors_name_the_folder_and_a_bad_file_at_load(tmp_path, face):
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    (tmp_path / "empty" / "happy" / "readme.txt").write_text("no image here")
    here = re.escape(str(tmp_path))
    with pytest.raises(ImageSetError, match=rf"pretrain\.images\.path: no image \(.jpg, .*\) in {here}/empty"):
        read_image_set("folder", tmp_path / "empty")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ImageSetError, match=r"is not a folder"):
        read_image_set("folder", tmp_path / "file.jpg")
    root = tmp_path / "set"
    (root / "happy").mkdir(parents=True)
    (root / "happy" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "happy" / "empty.png").write_bytes(b"")
    gone = _write(root / "sad" / "gone.png", _pictures(face, 1, 16)[0])
    image_set = read_image_set("folder", root)
    gone.unlink()
    with pytest.raises(ImageSetError, match=r"image .*happy/broken\.jpg cannot be decoded"):
        image_set.load(0)
    with pytest.raises(ImageSetError, match=r"image .*happy/empty\.png cannot be decoded"):
        image_set.load(1)
    with pytest.raises(ImageSetError, match=r"image .*sad/gone\.png cannot be read"):
        image_set.load(2)


# --------------------------------------------------------------------------- csv


def test_csv_of_paths_labels_subjects_and_splits(tmp_path, face):
    pictures = _pictures(face, 3, 40)
    _write(tmp_path / "sets" / "img" / "a.png", pictures[0])
    _write(tmp_path / "sets" / "img" / "b.png", pictures[1])
    elsewhere = _write(tmp_path / "elsewhere" / "c.png", pictures[2])
    csv = tmp_path / "sets" / "labels.csv"
    # Row 2 is cut short: no subject, no split.
    csv.write_text(f"path,label,subject,split\nimg/b.png, happy ,s1,train\n{elsewhere},sad\nimg/a.png,happy,s2,val\n")
    image_set = read_image_set("csv", csv)
    table = _check_table(image_set, 3)
    assert table["name"].tolist() == ["img/b.png", str(elsewhere), "img/a.png"]  # the CSV's order, as written
    assert table["label"].tolist() == ["happy", "sad", "happy"]
    assert table["subject"].tolist() == ["s1", pd.NA, "s2"] and table["split"].tolist() == ["train", pd.NA, "val"]
    assert image_set.root == tmp_path / "sets"
    for image_id, picture in enumerate([pictures[1], pictures[2], pictures[0]]):
        assert np.array_equal(image_set.load(image_id), picture)
    # Only the two required columns: no subject, no split.
    csv.write_text("label,path\nhappy,img/a.png\n")
    table = read_image_set("csv", csv).table
    assert table["subject"].isna().all() and table["split"].isna().all()


@pytest.mark.parametrize("text, message", [
    ("path,subject\na.png,s1\n", r"labels\.csv: no column 'label'"),
    ("file,label\na.png,happy\n", r"labels\.csv: no column 'path'"),
    ("path,label\na.png,happy\na.png,\n", r"labels\.csv line 3: empty label"),
    ("path,label\n,happy\n", r"labels\.csv line 2: empty path"),
    ("path,label,split\na.png,happy,train\na.png,happy,validation\n", r"labels\.csv line 3: split 'validation' is not "
                                                                      r"one of train, val, test"),
    ("path,label\n" + "".join(f"m{i}.png,happy\na.png,sad\n" for i in range(7)),
     r"labels\.csv: 7 image file\(s\) not found: line 2: .*m0\.png; line 4: .*m1\.png; .*; line 10: .*m4\.png "
     r"and 2 more$"),
    ("path,label\n", r"csv: no image left in"),
])
def test_csv_errors_name_the_file_and_the_line(tmp_path, face, text, message):
    _write(tmp_path / "a.png", _pictures(face, 1, 16)[0])
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(ImageSetError, match=message):
        read_image_set("csv", tmp_path / "labels.csv")


# --------------------------------------------------------------------------- RAF-DB

# One line per code, in the release's own numbering, and what each must read as.
RAFDB_LINES = [("train_00001.jpg", 1, "surprise"), ("train_00002.jpg", 2, "fear"), ("train_00003.jpg", 3, "disgust"),
               ("train_00004.jpg", 4, "happiness"), ("test_0001.jpg", 5, "sadness"), ("test_0002.jpg", 6, "anger"),
               ("test_0003.jpg", 7, "neutral")]


def _rafdb(root: Path, face: np.ndarray, lines: list[str] | None = None) -> list[np.ndarray]:
    """RAF-DB's basic folder: the labels file and both image folders; gives the aligned pictures in line order."""
    aligned = _pictures(face, len(RAFDB_LINES), 100)
    for (name, _, _), picture in zip(RAFDB_LINES, aligned):
        _write(root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), picture)
        _write(root / "Image" / "original" / name, cv2.resize(picture, (150, 120)))
    lines = lines or [f"{name} {code}" for name, code, _ in RAFDB_LINES]
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return aligned


def test_rafdb_codes_splits_and_both_image_folders(tmp_path, face):
    root = tmp_path / "basic"
    aligned = _rafdb(root, face)
    with ferseq_log() as messages:
        image_set = read_image_set("rafdb", root)
    table = _check_table(image_set, 7)
    assert table["label"].tolist() == [label for _, _, label in RAFDB_LINES]
    assert set(table["label"]) == set(EMOTIONS) - {"contempt"}
    assert table["split"].tolist() == ["train"] * 4 + ["test"] * 3 and table["subject"].isna().all()
    assert table["name"].tolist()[:2] == ["Image/aligned/train_00001_aligned.jpg",
                                          "Image/aligned/train_00002_aligned.jpg"]
    assert [_which(image_set.load(i), aligned) for i in range(7)] == list(range(7))
    assert image_set.load(0).shape == (100, 100, 3)
    assert "rafdb:   train: 4 (disgust 1, fear 1, happiness 1, surprise 1)" in messages
    original = read_image_set("rafdb", root, rafdb_images="original")
    assert original.table["name"].tolist()[-1] == "Image/original/test_0003.jpg"
    assert original.table["label"].tolist() == table["label"].tolist()
    assert original.load(6).shape == (120, 150, 3)


@pytest.mark.parametrize("lines, message", [
    (["train_00001.jpg 1", "", "train_00002.jpg 8"], r"list_patition_label\.txt line 3: 'train_00002\.jpg 8' is not "
                                                     r"'<image> <code>' with a code of 1-7"),
    (["train_00001.jpg"], r"list_patition_label\.txt line 1: 'train_00001\.jpg' is not '<image> <code>'"),
    (["val_0001.jpg 1"], r"list_patition_label\.txt line 1: image 'val_0001\.jpg' starts with neither train_ nor "
                         r"test_"),
    (["train_00001.jpg 1", "train_09999.jpg 2"], r"list_patition_label\.txt: 1 image file\(s\) not found: "
                                                 r"train_09999\.jpg: .*train_09999_aligned\.jpg"),
])
def test_rafdb_errors_name_the_labels_file_and_line(tmp_path, face, lines, message):
    _rafdb(tmp_path, face, lines)
    with pytest.raises(ImageSetError, match=message):
        read_image_set("rafdb", tmp_path)


def test_rafdb_without_its_files_or_with_an_unknown_image_choice(tmp_path, face):
    with pytest.raises(ImageSetError, match=r"rafdb: no labels file .*EmoLabel/list_patition_label\.txt"):
        read_image_set("rafdb", tmp_path)
    _rafdb(tmp_path, face)
    with pytest.raises(ImageSetError, match=r"pretrain\.images\.rafdb_images: 'cropped' is not one of aligned, "
                                            r"original"):
        read_image_set("rafdb", tmp_path, rafdb_images="cropped")
    for image in (tmp_path / "Image" / "original").iterdir():
        image.unlink()
    (tmp_path / "Image" / "original").rmdir()
    with pytest.raises(ImageSetError, match=r"rafdb: no image folder .*Image/original"):
        read_image_set("rafdb", tmp_path, rafdb_images="original")


# --------------------------------------------------------------------------- FER2013

# FER2013's codes 0-6 in order, and the three Usage values.
FER2013_LABELS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
FER2013_USAGE = ["Training", "Training", "PublicTest", "PrivateTest", "Training", "PublicTest", "PrivateTest"]


def test_fer2013_codes_usage_and_an_exact_pixel_round_trip(tmp_path, face):
    pixels = _fer_pixels(face, 7)
    file = _write_fer2013(tmp_path / "fer2013" / "fer2013.csv",
                          [(code, _pixel_text(p), usage) for code, (p, usage) in enumerate(zip(pixels, FER2013_USAGE))])
    for path in (file, file.parent):  # the CSV itself, or the folder holding it
        with ferseq_log() as messages:
            image_set = read_image_set("fer2013", path)
        table = _check_table(image_set, 7)
        assert table["label"].tolist() == FER2013_LABELS
        assert table["split"].tolist() == ["train", "train", "val", "test", "train", "val", "test"]
        assert table["name"].tolist() == [f"fer2013.csv row {row}" for row in range(1, 8)]
        assert table["subject"].isna().all()
        for image_id, grey in enumerate(pixels):
            image = image_set.load(image_id)
            assert image.shape == (48, 48, 3) and image.dtype == np.uint8
            assert all(np.array_equal(image[..., channel], grey) for channel in range(3))
        assert "fer2013:   val: 2 (fear 1, surprise 1)" in messages


@pytest.mark.parametrize("row, message", [
    ((3, "1 2 3", "Training"), r"fer2013\.csv line 3 \(fer2013\.csv row 2\): 3 pixel values, expected 2304 \(48x48\)"),
    ((3, "", "Training"), r"fer2013\.csv line 3 \(fer2013\.csv row 2\): 0 pixel values"),
    ((3, " ".join(["256"] * 2304), "Training"), r"line 3 \(fer2013\.csv row 2\): pixel values must be integers 0-255"),
    ((3, " ".join(["-1"] * 2304), "Training"), r"line 3 \(fer2013\.csv row 2\): pixel values must be integers 0-255"),
    ((7, " ".join(["0"] * 2304), "Training"), r"fer2013\.csv line 3: emotion '7' is not one of 0, 1, 2, 3, 4, 5, 6"),
    ((0, " ".join(["0"] * 2304), "Validation"), r"fer2013\.csv line 3: Usage 'Validation' is not one of Training, "
                                                r"PublicTest, PrivateTest"),
])
def test_fer2013_errors_name_the_row(tmp_path, row, message):
    good = (0, " ".join(["9"] * 2304), "Training")
    file = _write_fer2013(tmp_path / "fer2013.csv", [good, row, good])
    with pytest.raises(ImageSetError, match=message):
        read_image_set("fer2013", file)


def test_fer2013_without_its_columns_or_its_file(tmp_path):
    (tmp_path / "fer2013.csv").write_text("emotion,pixels\n0,1 2\n")
    with pytest.raises(ImageSetError, match=r"fer2013\.csv: no column 'Usage'"):
        read_image_set("fer2013", tmp_path)
    (tmp_path / "fer2013.csv").unlink()
    with pytest.raises(ImageSetError, match=rf"pretrain\.images\.path: no fer2013\.csv in the folder "
                                            rf"{re.escape(str(tmp_path))}$"):
        read_image_set("fer2013", tmp_path)


# --------------------------------------------------------------------------- FERPlus

# (Image name, votes in FERPlus's column order, what the paper's majority rule makes of it). Every emotion wins once.
FERPLUS_ROWS = [
    ("fer0000000.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0], "happiness"),
    ("fer0000001.png", [6, 0, 4, 0, 0, 0, 0, 0, 0, 0], "neutral"),
    ("", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "no image name"),
    ("fer0000003.png", [0, 0, 0, 4, 0, 0, 0, 0, 6, 0], "majority unknown or not a face"),
    ("fer0000004.png", [0, 0, 0, 0, 4, 0, 0, 0, 0, 6], "majority unknown or not a face"),
    ("fer0000005.png", [0, 0, 0, 0, 0, 5, 5, 0, 0, 0], "no majority"),  # a tie
    ("fer0000006.png", [0, 0, 0, 0, 0, 0, 4, 0, 4, 2], "no majority"),  # unknown as many votes as the top emotion
    ("fer0000007.png", [0, 0, 0, 1, 3, 2, 0, 4, 0, 0], "no majority"),  # 4 of 9 votes left: argmax alone would keep
    ("fer0000008.png", [0, 0, 5, 1, 1, 0, 2, 0, 1, 0], "surprise"),  # 5 of 10, but of 7 once single votes are out
    ("fer0000009.png", [1, 0, 0, 9, 0, 0, 0, 0, 0, 0], "sadness"),
    ("fer0000010.png", [0, 0, 0, 0, 8, 0, 0, 2, 0, 0], "anger"),
    ("fer0000011.png", [0, 0, 0, 0, 4, 6, 0, 0, 0, 0], "disgust"),
    ("fer0000012.png", [0, 0, 3, 0, 0, 0, 7, 0, 0, 0], "fear"),
    ("fer0000013.png", [3, 0, 0, 0, 0, 0, 0, 7, 0, 0], "contempt"),
]
FERPLUS_USAGE = ["Training"] * 6 + ["PublicTest"] * 4 + ["PrivateTest"] * 4


def _ferplus(folder: Path, face: np.ndarray, fer2013: Path | None = None) -> list[np.ndarray]:
    """fer2013new.csv in ``folder`` and the FER2013 CSV it labels (default beside it); gives FER2013's pixels."""
    pixels = _fer_pixels(face, len(FERPLUS_ROWS))
    # FER2013's own emotion codes say nothing here: FERPlus relabels the rows.
    _write_fer2013(fer2013 or folder / "fer2013.csv", [(0, _pixel_text(p), u) for p, u in zip(pixels, FERPLUS_USAGE)])
    lines = [f"{u},{name},{','.join(map(str, votes))}" for (name, votes, _), u in zip(FERPLUS_ROWS, FERPLUS_USAGE)]
    (folder / "fer2013new.csv").write_text(FER_HEADER + "\n" + "\n".join(lines) + "\n")
    return pixels


def test_ferplus_majority_votes_and_the_rows_it_drops(tmp_path, face):
    pixels = _ferplus(tmp_path, face)
    with ferseq_log() as messages:
        image_set = read_image_set("ferplus", tmp_path / "fer2013new.csv")
    kept = [row for row, (_, _, outcome) in enumerate(FERPLUS_ROWS) if outcome in EMOTIONS]
    table = _check_table(image_set, len(kept))
    assert table["label"].tolist() == [FERPLUS_ROWS[row][2] for row in kept]
    assert set(table["label"]) == set(EMOTIONS)
    assert table["name"].tolist() == [FERPLUS_ROWS[row][0] for row in kept]
    assert table["split"].tolist() == ["train", "train", "val", "val", "test", "test", "test", "test"]
    for image_id, row in enumerate(kept):  # each kept label sits on its own FER2013 row's pixels
        assert np.array_equal(image_set.load(image_id)[..., 1], pixels[row])
    assert image_set.dropped == {"no image name": 1, "majority unknown or not a face": 2, "no majority": 3}
    assert "ferplus: dropped 6 row(s): no image name 1, majority unknown or not a face 2, no majority 3" in messages


def test_ferplus_finds_fer2013_beside_it_one_folder_up_or_where_told(tmp_path, face):
    folder = tmp_path / "FERPlus"
    folder.mkdir()
    _ferplus(folder, face, fer2013=tmp_path / "fer2013.csv")
    assert len(read_image_set("ferplus", folder).table) == 8  # fer2013new.csv's folder; FER2013 one level up
    (tmp_path / "fer2013.csv").rename(tmp_path / "kaggle.csv")
    here = re.escape(str(tmp_path))
    with pytest.raises(ImageSetError, match=rf"fer2013\.csv is neither at {here}/FERPlus/fer2013\.csv nor at "
                                            rf"{here}/fer2013\.csv; set pretrain\.images\.fer2013_csv"):
        read_image_set("ferplus", folder)
    assert len(read_image_set("ferplus", folder, fer2013_csv=tmp_path / "kaggle.csv").table) == 8
    with pytest.raises(ImageSetError, match=r"pretrain\.images\.fer2013_csv: .*missing\.csv does not exist"):
        read_image_set("ferplus", folder, fer2013_csv=tmp_path / "missing.csv")


def test_ferplus_and_fer2013_that_do_not_match_row_by_row(tmp_path, face):
    _ferplus(tmp_path, face)
    fer2013 = tmp_path / "fer2013.csv"
    lines = fer2013.read_text().splitlines()
    fer2013.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ImageSetError, match=r"fer2013new\.csv has 14 rows and .*fer2013\.csv 13"):
        read_image_set("ferplus", tmp_path)
    fer2013.write_text("\n".join(lines[:3] + [lines[3].replace("Training", "PublicTest")] + lines[4:]) + "\n")
    with pytest.raises(ImageSetError, match=r"ferplus: line 4 is 'Training' in .*fer2013new\.csv but 'PublicTest' in "
                                            r".*fer2013\.csv"):
        read_image_set("ferplus", tmp_path)
    fer2013.write_text("\n".join(lines) + "\n")
    new = tmp_path / "fer2013new.csv"
    new.write_text(new.read_text().replace("fer0000001.png,6,", "fer0000001.png,six,"))
    with pytest.raises(ImageSetError, match=r"fer2013new\.csv line 3: neutral 'six' is not a vote count"):
        read_image_set("ferplus", tmp_path)


# --------------------------------------------------------------------------- AffectNet

# (expression code, label or why the row is dropped) for the training list: every code 0-10 once.
AFFECTNET_CODES = [(0, "neutral"), (1, "happiness"), (2, "sadness"), (3, "surprise"), (4, "fear"), (5, "disgust"),
                   (6, "anger"), (7, "contempt"), (8, "None"), (9, "Uncertain"), (10, "No-Face")]


def _affectnet_row(subpath: str, code: int) -> str:
    landmarks = ";".join(f"{v:.2f}" for v in np.linspace(10, 90, 136))
    return f"{subpath},12,12,88,88,{landmarks},{code},0.5,-0.25"


def _affectnet(root: Path, face: np.ndarray, lists: Path) -> list[np.ndarray]:
    """AffectNet's manual part: training.csv with its header, validation.csv without one (as released), and the
    images in numbered subfolders; gives the pictures of the training rows, then the validation rows'."""
    pictures = _pictures(face, len(AFFECTNET_CODES) + 2, 96)
    train = [f"{i % 3}/train{i:02d}.jpg" for i in range(len(AFFECTNET_CODES))]
    test = ["7/val0.jpg", "7/val1.jpg"]
    for subpath, picture in zip(train + test, pictures):
        _write(root / "Manually_Annotated_Images" / subpath, picture)
    lists.mkdir(parents=True, exist_ok=True)
    rows = [_affectnet_row(subpath, code) for subpath, (code, _) in zip(train, AFFECTNET_CODES)]
    (lists / "training.csv").write_text(AFFECTNET_HEADER + "\n" + "\n".join(rows) + "\n")
    (lists / "validation.csv").write_text(_affectnet_row(test[0], 7) + "\n" + _affectnet_row(test[1], 8) + "\n")
    return pictures


def test_affectnet_expressions_splits_and_the_non_expressions_dropped(tmp_path, face):
    pictures = _affectnet(tmp_path, face, tmp_path / "Manually_Annotated_file_lists")
    with ferseq_log() as messages:
        image_set = read_image_set("affectnet", tmp_path)
    table = _check_table(image_set, 9)
    assert table["label"].tolist() == [label for _, label in AFFECTNET_CODES[:8]] + ["contempt"]
    assert table["split"].tolist() == ["train"] * 8 + ["test"]
    assert table["name"].tolist()[:2] == ["Manually_Annotated_Images/0/train00.jpg",
                                          "Manually_Annotated_Images/1/train01.jpg"]
    assert table["name"].iloc[-1] == "Manually_Annotated_Images/7/val0.jpg"
    assert [_which(image_set.load(i), pictures) for i in range(9)] == list(range(8)) + [11]
    assert image_set.dropped == {"None": 2, "Uncertain": 1, "No-Face": 1}
    assert "affectnet: dropped 4 row(s): None 2, Uncertain 1, No-Face 1" in messages
    assert "affectnet:   test: 1 (contempt 1)" in messages


def test_affectnet_lists_in_the_folder_itself_and_images_missing_at_load(tmp_path, face):
    _affectnet(tmp_path, face, tmp_path)
    (tmp_path / "Manually_Annotated_Images" / "0" / "train00.jpg").unlink()
    image_set = read_image_set("affectnet", tmp_path)  # images are not looked for until loaded
    assert len(image_set.table) == 9
    with pytest.raises(ImageSetError, match=r"image .*Manually_Annotated_Images/0/train00\.jpg cannot be read"):
        image_set.load(0)
    assert image_set.load(1).shape == (96, 96, 3)


def test_affectnet_errors_name_the_file_and_the_line(tmp_path, face):
    _affectnet(tmp_path, face, tmp_path / "Manually_Annotated_file_lists")
    validation = tmp_path / "Manually_Annotated_file_lists" / "validation.csv"
    validation.write_text(validation.read_text() + _affectnet_row("7/val2.jpg", 11) + "\n")
    with pytest.raises(ImageSetError, match=r"validation\.csv line 3: expression '11' is not one of 0, 1, .*, 10"):
        read_image_set("affectnet", tmp_path)  # no header line there: line 3 is the third row
    with pytest.raises(ImageSetError, match=r"affectnet: no image folder .*Manually_Annotated_Images"):
        read_image_set("affectnet", tmp_path / "Manually_Annotated_file_lists")  # the lists, not their parent
    validation.unlink()
    with pytest.raises(ImageSetError, match=r"affectnet: no validation\.csv in .*Manually_Annotated_file_lists"):
        read_image_set("affectnet", tmp_path)


# --------------------------------------------------------------------------- workers


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_load_works_in_forked_workers(tmp_path, face):
    pictures = _pictures(face, 3, 32)
    for i, picture in enumerate(pictures):
        _write(tmp_path / "set" / f"class{i}" / "x.png", picture)
    pixels = _fer_pixels(face, 3)
    _write_fer2013(tmp_path / "fer2013.csv", [(0, _pixel_text(p), "Training") for p in pixels])
    folder_set, fer_set = read_image_set("folder", tmp_path / "set"), read_image_set("fer2013", tmp_path)
    folder_set.load(0)  # a load in the parent before the fork, as a data loader's first batch would
    with multiprocessing.get_context("fork").Pool(2) as pool:
        from_folder = pool.map(folder_set.load, range(3))
        from_fer = pool.map(fer_set.load, range(3))
    assert all(np.array_equal(a, b) for a, b in zip(from_folder, pictures))
    assert all(np.array_equal(a[..., 0], b) for a, b in zip(from_fer, pixels))
