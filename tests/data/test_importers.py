"""Dataset adapters on real frames and clips laid out under each dataset's own names.

Every layout is built in a temporary folder from the demo clips (data/demo/videos):
the mp4 copied under RAVDESS names, re-encoded to Flash video for CREMA-D, and
real frames written as PNG sequences for CK+ and the class folders. Each test
checks the whole table produced, the skipped paths and their reasons, and that
the data stage (annotations.load_segments) accepts the table against the layout.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from conftest import DEMO, REPO, SCHEMAS, run_snakemake
from ferseq import cli
from ferseq.common import config
from ferseq.data import annotations, importers, splits
from ferseq.data.importers import ckplus, cremad, dfew, ferv39k, folders, mafw, ravdess

MAN = DEMO / "videos" / "man_neutral_to_happy.mp4"  # 72 frames, 640x360
WOMAN = DEMO / "videos" / "woman_sad_to_happy.mp4"  # 472 frames
EXAMPLES = REPO / "workflow" / "examples"



# --------------------------------------------------------------------------- real media, made once


@pytest.fixture(scope="session")
def frames(tmp_path_factory) -> list[Path]:
    """The first 16 real frames of the man's clip, as PNG files."""
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for index, image in _read(MAN, 16):
        path = folder / f"{index:04d}.png"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def flv(tmp_path_factory) -> Path:
    """The man's clip re-encoded as Flash video (FLV1), as CREMA-D ships its clips."""
    path = tmp_path_factory.mktemp("flv") / "clip.flv"
    cap = cv2.VideoCapture(str(MAN))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FLV1"), cap.get(cv2.CAP_PROP_FPS), size)
    assert writer.isOpened()
    while True:
        ok, image = cap.read()
        if not ok:
            break
        writer.write(image)
    writer.release()
    cap.release()
    assert path.read_bytes()[:3] == b"FLV"
    return path


def _read(path: Path, n: int):
    cap = cv2.VideoCapture(str(path))
    for index in range(n):
        ok, image = cap.read()
        assert ok
        yield index, image
    cap.release()


def _sequence(folder: Path, frames: list[Path], n: int, name=lambda i: f"{i:04d}.png") -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        shutil.copy(frames[i], folder / name(i + 1))
    return folder


def _file(path: Path, data: bytes | str | Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Path):
        shutil.copy(data, path)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _table(path: Path, extra: tuple[str, ...] = ()) -> list[tuple]:
    """The CSV as the data stage reads it (all text), one tuple per row; ``extra``: the columns after COLUMNS."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(table.columns) == importers.COLUMNS + list(extra)
    return [tuple(row) for row in table.itertuples(index=False)]


def _skipped(output: Path) -> dict[str, str]:
    table = pd.read_csv(importers.skipped_path(output), dtype=str, keep_default_na=False)
    assert list(table.columns) == ["path", "reason"]
    assert table["path"].is_unique and table["path"].tolist() == sorted(table["path"])
    return dict(zip(table["path"], table["reason"]))


def _accepted(output: Path, root: Path, labels) -> pd.DataFrame:
    """The data stage takes the table as it is: every row kept, nothing dropped."""
    classes = {"names": sorted(set(labels)), "map": {}}
    segments, dropped, _ = annotations.load_segments(output, root, classes, SCHEMAS / "annotations.schema.yaml",
                                                     min_segment_frames=1)
    assert dropped.empty
    return segments


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- CK+


@pytest.fixture
def ckplus_root(tmp_path, frames) -> Path:
    root = tmp_path / "CK+"
    images, emotion = root / "cohn-kanade-images", root / "Emotion"

    def seq(subject, number, n):
        return _sequence(images / subject / number, frames, n, lambda i: f"{subject}_{number}_{i:08d}.png")

    def label(subject, number, last, text):
        _file(emotion / subject / number / f"{subject}_{number}_{last:08d}_emotion.txt", text)

    seq("S005", "001", 12)
    label("S005", "001", 12, "   3.0000000e+00\n")  # disgust
    seq("S005", "002", 10)  # no label: skipped and counted
    seq("S010", "001", 14)
    label("S010", "001", 14, "   5.0000000e+00\n")  # happy
    _file(images / "S010" / "001" / "notes.txt", "taken on a Tuesday")  # listed; the sequence is still used
    seq("S010", "002", 9)
    label("S010", "002", 9, "   7.0000000e+00\n")
    shutil.copy(frames[0], images / "S010" / "002" / "thumb.jpg")  # an image that is no frame: sequence unusable
    seq("S010", "003", 8)
    label("S010", "003", 8, "   9.0000000e+00\n")  # no such code
    seq("S012", "001", 5)
    label("S012", "001", 5, "   1.0000000e+00\n")  # anger, 5 frames
    label("S011", "001", 5, "   2.0000000e+00\n")  # a label without its sequence
    _file(root / "notes.txt", "my notes")
    _file(root / "Landmarks" / "S005" / "001" / "S005_001_00000001_landmarks.txt", "1 2\n")
    return root


CKPLUS_SKIPPED = {
    "Emotion/S010/003/S010_003_00000008_emotion.txt": "'9.0000000e+00' is not a CK+ emotion code 0-7",
    "Emotion/S011/001": "no image sequence cohn-kanade-images/S011/001 for this label",
    "Landmarks": "CK+ landmark files: not used",
    "cohn-kanade-images/S005/002": "no label: Emotion/S005/002 has no *_emotion.txt",
    "cohn-kanade-images/S010/001/notes.txt": "not a frame (frames are S010_001_NNNNNNNN.png)",
    "cohn-kanade-images/S010/002": "holds 1 image(s) that are not its frames (listed); remove them to use the sequence",
    "cohn-kanade-images/S010/002/thumb.jpg": "an image that is not a frame of the sequence (frames are S010_002_NNNNNNNN.png)",
    "cohn-kanade-images/S010/003": "its label file in Emotion/S010/003 cannot be used (listed)",
    "notes.txt": "not part of the CK+ layout (cohn-kanade-images/, Emotion/)",
}


def test_ckplus_whole_sequences(tmp_path, capsys, ckplus_root):
    out = tmp_path / "out" / "annotations.csv"
    code, err = _run(capsys, "import", "ckplus", str(ckplus_root), "-o", str(out))
    assert code == 0, err
    assert _table(out) == [
        ("cohn-kanade-images/S005/001", "S005", "disgust", "0", "12", ""),
        ("cohn-kanade-images/S010/001", "S010", "happy", "0", "14", ""),
        ("cohn-kanade-images/S012/001", "S012", "anger", "0", "5", ""),
    ]
    assert _skipped(out) == CKPLUS_SKIPPED
    assert "3 clip(s) imported as 3 segment(s) of 3 subject(s)" in err
    assert "1 sequence(s) without an emotion label skipped" in err
    assert f"9 path(s) skipped (all listed in {out}.skipped.csv)" in err
    assert "cohn-kanade-images/S005/002: no label" in err
    segments = _accepted(out, ckplus_root, ["anger", "disgust", "happy"])
    assert segments["frames"].tolist() == [12, 14, 5]


def test_ckplus_onset_apex(tmp_path, capsys, ckplus_root):
    out = tmp_path / "annotations.parquet"
    code, err = _run(capsys, "import", "ckplus", str(ckplus_root), "-o", str(out), "--onset-apex", "3", "4")
    assert code == 0, err
    table = pd.read_parquet(out)
    assert list(table.columns) == importers.COLUMNS
    assert [tuple(r) for r in table.itertuples(index=False)] == [
        ("cohn-kanade-images/S005/001", "S005", "neutral", 0, 3, None),
        ("cohn-kanade-images/S005/001", "S005", "disgust", 8, 12, None),
        ("cohn-kanade-images/S010/001", "S010", "neutral", 0, 3, None),
        ("cohn-kanade-images/S010/001", "S010", "happy", 10, 14, None),
    ]
    # The 5-frame sequence cannot hold 3 onset + 4 apex frames: skipped with its reason.
    assert _skipped(out) == {**CKPLUS_SKIPPED,
                             "cohn-kanade-images/S012/001": "only 5 frames, fewer than onset 3 + apex 4 (--onset-apex)"}
    segments = _accepted(out, ckplus_root, ["neutral", "disgust", "happy"])
    assert segments["frames"].tolist() == [3, 4, 3, 4]


def test_ckplus_needs_both_folders(tmp_path, capsys, frames):
    _sequence(tmp_path / "cohn-kanade-images" / "S005" / "001", frames, 3, lambda i: f"S005_001_{i:08d}.png")
    code, err = _run(capsys, "import", "ckplus", str(tmp_path), "-o", str(tmp_path / "a.csv"))
    assert code == 2 and "has no Emotion/ folder" in err and str(tmp_path) in err
    with pytest.raises(importers.DatasetError, match="onset_apex"):
        ckplus.check_onset_apex((3, 0))


# --------------------------------------------------------------------------- RAVDESS


@pytest.fixture
def ravdess_root(tmp_path) -> Path:
    root = tmp_path / "RAVDESS"
    _file(root / "Actor_01" / "01-01-03-01-01-01-01.mp4", MAN)  # full AV, happy
    _file(root / "Actor_01" / "02-01-01-01-02-02-01.mp4", MAN)  # video-only, neutral
    _file(root / "Video_Song_Actor_02" / "Actor_02" / "01-02-05-02-01-01-02.mp4", WOMAN)  # song, angry, strong
    _file(root / "Actor_02" / "03-01-04-01-01-01-02.wav", b"RIFF....WAVE")  # audio-only
    _file(root / "Actor_01" / "01-01-09-01-01-01-01.mp4", MAN)  # emotion 09 does not exist
    _file(root / "Actor_01" / "01-01-01-02-01-01-01.mp4", MAN)  # neutral has no strong intensity
    _file(root / "Actor_02" / "01-01-03-01-01-01-01.mp4", MAN)  # actor 01's clip in Actor_02
    _file(root / "Actor_02" / "01-01-06-01-01-01-02.mp4", b"not a video")  # right name, no video
    _file(root / "notes.txt", "my notes")
    return root


def test_ravdess(tmp_path, capsys, ravdess_root):
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "ravdess", str(ravdess_root), "-o", str(out))
    assert code == 0, err
    assert _table(out) == [
        ("Actor_01/01-01-03-01-01-01-01.mp4", "01", "happy", "0", "72", "male"),
        ("Actor_01/02-01-01-01-02-02-01.mp4", "01", "neutral", "0", "72", "male"),
        ("Video_Song_Actor_02/Actor_02/01-02-05-02-01-01-02.mp4", "02", "anger", "0", "472", "female"),
    ]
    skipped = _skipped(out)
    assert skipped == {
        "Actor_01/01-01-01-02-01-01-01.mp4": "neutral has no strong intensity (02) in RAVDESS",
        "Actor_01/01-01-09-01-01-01-01.mp4": "emotion 09 is not one of 01, 02, 03, 04, 05, 06, 07, 08",
        "Actor_02/01-01-03-01-01-01-01.mp4": "actor 01 clip is not in its Actor_01 folder (Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4)",
        "Actor_02/01-01-06-01-01-01-02.mp4": skipped["Actor_02/01-01-06-01-01-01-02.mp4"],
        "Actor_02/03-01-04-01-01-01-02.wav": "audio-only (modality 03)",
        "notes.txt": "not a RAVDESS file name (Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4)",
    }
    assert "OpenCV cannot open it" in skipped["Actor_02/01-01-06-01-01-01-02.mp4"]
    assert "1 audio-only file(s) (modality 03) skipped" in err and "unreadable video: 1" in err
    segments = _accepted(out, ravdess_root, ["anger", "happy", "neutral"])
    assert segments["group"].tolist() == ["male", "male", "female"]


def test_ravdess_mapping_covers_every_code():
    assert sorted(ravdess.LABELS) == [f"{i:02d}" for i in range(1, 9)]
    for module in (ckplus, ravdess, cremad, folders, dfew, mafw, ferv39k):
        assert set(module.LABELS.values()) <= set(importers.EMOTIONS), module.FORMAT
    assert ravdess.sex(1) == "male" and ravdess.sex(24) == "female"


# --------------------------------------------------------------------------- CREMA-D


@pytest.fixture
def cremad_root(tmp_path, flv) -> Path:
    root = tmp_path / "CREMA-D"
    videos = root / "VideoFlash"
    _file(videos / "1001_DFA_ANG_XX.flv", flv)
    _file(videos / "1091_IEO_HAP_HI.flv", flv)
    _file(videos / "1002_TIE_SAD_LO.flv", flv)  # actor not in the demographics table: group empty
    _file(videos / "1001_DFA_XYZ_XX.flv", flv)  # no such emotion
    _file(videos / "1092_DFA_ANG_XX.flv", flv)  # no such actor
    _file(videos / "1003_TIE_NEU_XX.flv", b"FLV but not really")  # right name, no video
    _file(videos / "readme.txt", "clips")
    _file(root / "AudioWAV" / "1001_DFA_ANG_XX.wav", b"RIFF")
    _file(root / "VideoDemographics.csv", "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
                                          "1091,29,Female,Asian,Not Hispanic\n")
    return root


def test_cremad(tmp_path, capsys, cremad_root):
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "cremad", str(cremad_root), "-o", str(out))
    assert code == 0, err
    assert _table(out) == [
        ("VideoFlash/1001_DFA_ANG_XX.flv", "1001", "anger", "0", "72", "male"),
        ("VideoFlash/1002_TIE_SAD_LO.flv", "1002", "sad", "0", "72", ""),
        ("VideoFlash/1091_IEO_HAP_HI.flv", "1091", "happy", "0", "72", "female"),
    ]
    skipped = _skipped(out)
    assert skipped == {
        "AudioWAV": "not part of the CREMA-D video layout (only VideoFlash/ and VideoDemographics.csv are read)",
        "VideoFlash/1001_DFA_XYZ_XX.flv": "emotion XYZ is not one of ANG, DIS, FEA, HAP, NEU, SAD",
        "VideoFlash/1003_TIE_NEU_XX.flv": skipped["VideoFlash/1003_TIE_NEU_XX.flv"],
        "VideoFlash/1092_DFA_ANG_XX.flv": "actor 1092 is not one of 1001-1091",
        "VideoFlash/readme.txt": "not a CREMA-D video name (VideoFlash/AAAA_SSS_EEE_LL.flv)",
    }
    assert "OpenCV cannot open it" in skipped["VideoFlash/1003_TIE_NEU_XX.flv"]
    assert "actor(s) 1002, 1003 not in VideoDemographics.csv: their group is empty" in err
    _accepted(out, cremad_root, ["anger", "happy", "sad"])


# --------------------------------------------------------------------------- class folders


@pytest.fixture
def folders_root(tmp_path, frames) -> Path:
    root = tmp_path / "AFEW"
    _file(root / "Happy" / "p01_clip1.mp4", MAN)
    _file(root / "Pensive" / "p01_clip2.mp4", MAN)  # not one of our names: kept as it is
    _file(root / "angry" / "clip3.mp4", MAN)  # no person in its name
    _sequence(root / "Sad" / "p02_take1", frames, 10)
    _file(root / "Sad" / "p02_take1" / "info.txt", "frames of take 1")  # listed; the clip is still used
    (root / "Fear" / "p03_empty").mkdir(parents=True)
    _file(root / "Happy" / "notes.txt", "notes")
    _file(root / "readme.md", "# my data")
    return root


FOLDERS_SKIPPED = {
    "Fear/p03_empty": "folder holds no images (.png .jpg .jpeg .bmp .tif .tiff .webp)",
    "Happy/notes.txt": "not a video file (.mp4 .avi .mov .mkv .flv .webm .mpg .mpeg .m4v .wmv .3gp .ogv .ts .mts) or an image-sequence folder",
    "Sad/p02_take1/info.txt": "not an image; not read as a frame of Sad/p02_take1",
    "readme.md": "a file at the dataset root; clips go in label folders (<label>/<clip file or image folder>)",
}


def test_folders_subject_regex(tmp_path, capsys, folders_root):
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "folders", str(folders_root), "-o", str(out), "--subject-regex", r"^(?P<subject>p\d+)_")
    assert code == 0, err
    assert _table(out) == [
        ("Happy/p01_clip1.mp4", "p01", "happy", "0", "72", ""),
        ("Pensive/p01_clip2.mp4", "p01", "Pensive", "0", "72", ""),
        ("Sad/p02_take1", "p02", "sad", "0", "10", ""),
    ]
    assert _skipped(out) == {**FOLDERS_SKIPPED,
                             "angry/clip3.mp4": "clip name 'clip3.mp4' does not match --subject-regex '^(?P<subject>p\\\\d+)_'"}
    assert "label folder 'Pensive' (1 clip(s)) is not a known emotion name" in err
    _accepted(out, folders_root, ["happy", "Pensive", "sad"])


def test_folders_subjects_table_and_subject_from_clip(tmp_path, capsys, folders_root):
    mapping = _file(tmp_path / "subjects.csv", "clip,subject\nHappy/p01_clip1.mp4,alice\np01_clip2,alice\n"
                                               "p02_take1,bob\nclip3.mp4,carol\nghost.mp4,dave\n")
    out = tmp_path / "by_table.csv"
    code, err = _run(capsys, "import", "folders", str(folders_root), "-o", str(out), "--subjects", str(mapping))
    assert code == 0, err
    assert _table(out) == [
        ("Happy/p01_clip1.mp4", "alice", "happy", "0", "72", ""),
        ("Pensive/p01_clip2.mp4", "alice", "Pensive", "0", "72", ""),
        ("Sad/p02_take1", "bob", "sad", "0", "10", ""),
        ("angry/clip3.mp4", "carol", "anger", "0", "72", ""),
    ]
    assert _skipped(out) == FOLDERS_SKIPPED
    assert "1 clip(s) of the --subjects table not found: ghost.mp4" in err
    _accepted(out, folders_root, ["anger", "happy", "Pensive", "sad"])

    out = tmp_path / "by_clip.csv"
    code, err = _run(capsys, "import", "folders", str(folders_root), "-o", str(out), "--subject-from-clip")
    assert code == 0, err
    assert [row[:3] for row in _table(out)] == [
        ("Happy/p01_clip1.mp4", "p01_clip1", "happy"),
        ("Pensive/p01_clip2.mp4", "p01_clip2", "Pensive"),
        ("Sad/p02_take1", "p02_take1", "sad"),
        ("angry/clip3.mp4", "clip3", "anger"),
    ]


def test_folders_need_subjects_and_one_way_only(tmp_path, capsys, folders_root):
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "folders", str(folders_root), "-o", str(out))
    assert code == 2 and "clips need subjects" in err and "--subject-from-clip" in err
    assert "Traceback" not in err and not out.exists()
    for bad, words in ((r"^(p\d+)_", "no named group 'subject'"), ("(?P<subject>", "is not a regular expression")):
        code, err = _run(capsys, "import", "folders", str(folders_root), "-o", str(out), "--subject-regex", bad)
        assert code == 2 and words in err
    mapping = _file(tmp_path / "subjects.csv", "clip,subject\nclip3.mp4,carol\nclip3.mp4,dave\n")
    code, err = _run(capsys, "import", "folders", str(folders_root), "-o", str(out), "--subjects", str(mapping))
    assert code == 2 and "row 2: clip 'clip3.mp4' is given subject 'dave' here and 'carol' before" in err
    with pytest.raises(SystemExit) as exit_:  # argparse: the subject options exclude each other
        cli.main(["import", "folders", str(folders_root), "-o", str(out), "--subject-from-clip", "--subjects", str(mapping)])
    assert exit_.value.code == 2
    with pytest.raises(importers.DatasetError, match="give only one of"):
        folders.scan(folders_root, subject_regex="(?P<subject>.)", subject_from_clip=True)


def test_clips_sharing_an_output_name_are_both_skipped(tmp_path, capsys):
    root = tmp_path / "data"
    _file(root / "Happy" / "x.mp4", MAN)
    _file(root / "Happy" / "x.avi", MAN)  # same video id "Happy/x" as x.mp4
    _file(root / "Sad" / "y.mp4", MAN)
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "folders", str(root), "-o", str(out), "--subject-from-clip")
    assert code == 0, err
    assert [row[0] for row in _table(out)] == ["Sad/y.mp4"]
    assert set(_skipped(out)) == {"Happy/x.avi", "Happy/x.mp4"}
    assert "would share the output name 'Happy/x'" in _skipped(out)["Happy/x.avi"]


# --------------------------------------------------------------------------- benchmarks: DFEW, MAFW, FERV39k


def _split_files(root: Path, name, folds: dict[int, list[str]], clips: dict[str, str], line) -> None:
    """A release's split files: fold k's test part is ``folds[k]``, its train part every other clip.
    ``name(split, fold)`` is the file, ``line(clip, label)`` a line of it."""
    for fold, tested in folds.items():
        for split in ("train", "test"):
            names = tested if split == "test" else [c for c in clips if c not in tested]
            _file(root / name(split, fold), "".join(line(c, clips[c]) for c in names))


@pytest.fixture
def dfew_root(tmp_path, frames) -> Path:
    root = tmp_path / "DFEW"
    clips = root / "Clip" / "jpg_256"
    for number, n in (("00001", 8), ("00002", 6), ("00004", 5), ("00005", 4), ("00007", 3)):
        _sequence(clips / number, frames, n, lambda i: f"{i:05d}.png")
    _file(clips / "00003.mp4", MAN)  # a clip as a short video
    _file(clips / "notes.txt", "x")
    _file(root / "Clip" / "original" / "00001.mp4", MAN)  # another copy of the clips: not the one read
    _file(root / "readme.txt", "DFEW")
    labels = {"00001": "1", "00002": "2", "00003": "4", "00004": "6", "00005": "7", "00006": "3"}  # 00006: not on disk
    folds = {1: ["00001", "00006"], 2: ["00002"], 3: ["00003"], 4: ["00004"], 5: ["00005"]}
    for fold, tested in folds.items():
        for split in ("train", "test"):
            names = tested if split == "test" else [c for c in labels if c not in tested]
            # fold 2's train file writes the clip numbers without their zeros, as a spreadsheet saves them
            lines = "".join(f"{int(c) if (fold, split) == (2, 'train') else c},{labels[c]}\n" for c in names)
            _file(root / dfew.split_file(split, fold), "video_name,label\n" + lines)
    return root


def test_dfew(tmp_path, capsys, dfew_root):
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(out))
    assert code == 0, err
    assert _table(out, ("folds", "identity_leak")) == [
        ("Clip/jpg_256/00001", "00001", "happy", "0", "8", "", "1", "True"),
        ("Clip/jpg_256/00002", "00002", "sad", "0", "6", "", "2", "True"),
        ("Clip/jpg_256/00003.mp4", "00003", "anger", "0", "72", "", "3", "True"),
        ("Clip/jpg_256/00004", "00004", "disgust", "0", "5", "", "4", "True"),
        ("Clip/jpg_256/00005", "00005", "fear", "0", "4", "", "5", "True"),
    ]
    assert _skipped(out) == {
        "Clip/jpg_256/00006": "named in EmoLabel_DataSplit/test(single-labeled)/set_1.csv, line 3 but not on disk "
                              "(no frame folder or video file 00006 in Clip/jpg_256/)",
        "Clip/jpg_256/00007": "a clip that no split file of the protocol names "
                              "(EmoLabel_DataSplit/*(single-labeled)/set_1..5.csv)",
        "Clip/jpg_256/notes.txt": "neither a frame folder nor a video file (" + " ".join(importers.base.VIDEO_SUFFIXES) + ")",
        "Clip/original": "not part of DFEW's single-labelled protocol (EmoLabel_DataSplit/*/set_1..5.csv, Clip/jpg_256/)",
        "readme.txt": "not part of DFEW's single-labelled protocol (EmoLabel_DataSplit/*/set_1..5.csv, Clip/jpg_256/)",
    }
    assert "each clip is its own subject (identity_leak true in the table)" in err
    assert "fold 1: 4 train and 1 test clip(s)" in err and "fold 5: 4 train and 1 test clip(s)" in err
    # The data stage keeps each clip's test fold; the predefined splits test exactly those clips per fold.
    segments = _accepted(out, dfew_root, list(dfew.LABELS.values()))
    assert segments["test_folds"].tolist() == ["1", "2", "3", "4", "5"] and segments["identity_leak"].all()
    given, source = splits.protocol(segments)
    assert source == "column folds"
    assert given[given["split"] == "test"].groupby("fold")["segment_id"].apply(list).to_dict() == \
        {1: [1], 2: [2], 3: [3], 4: [4], 5: [5]}
    # --clips reads another clip folder of the release; the clips missing there are listed.
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(tmp_path / "orig.csv"), "--clips", "Clip/original")
    assert code == 0, err
    assert [row[0] for row in _table(tmp_path / "orig.csv", ("folds", "identity_leak"))] == ["Clip/original/00001.mp4"]
    assert "5 clip(s) named in the split files are not in Clip/original/" in err
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(tmp_path / "none.csv"), "--clips", "Clip/none")
    assert code == 2 and "--clips Clip/none: no such folder below" in err
    # One clip per class: fold 1's only happy clip is its test clip, so its train part lacks happy.
    with pytest.raises(splits.SplitError, match=r"fold 1: class\(es\) [\w, ]*happy[\w, ]* have no segment in its train"):
        splits.predefined(segments, given, "subject", 0.25, seed=1)


def test_dfew_malformed_split_files_are_named_by_file_and_line(tmp_path, capsys, dfew_root):
    splits_dir = dfew_root / "EmoLabel_DataSplit"
    (splits_dir / "test(single-labeled)" / "set_3.csv").write_text("video_name,label\n00003,0\nclip9,4\n00003,4,x\n")
    (splits_dir / "test(single-labeled)" / "set_4.csv").write_text("00004,6\n")  # no header
    (splits_dir / "test(single-labeled)" / "set_5.csv").write_text("video_name,label\n00005,7\n00002,2\n")
    (splits_dir / "test(single-labeled)" / "set_1.csv").write_text("video_name,label\n00001,1\n")
    with open(splits_dir / "train(single-labeled)" / "set_1.csv", "a") as handle:  # 00006 now trains in every fold
        handle.write("00006,3\n")
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(out))
    assert code == 2 and "Traceback" not in err
    test = "EmoLabel_DataSplit/test(single-labeled)"
    for problem in (
        f"{test}/set_3.csv, line 2: label '0' is not a DFEW label code 1-7 (a copy whose labels count from 0?)",
        f"{test}/set_3.csv, line 3: video_name 'clip9' is not a DFEW clip number",
        f"{test}/set_3.csv, line 4: 3 field(s), expected video_name,label",
        f"{test}/set_4.csv, line 1: the first line must be the header video_name,label",
        f"{test}/set_5.csv, line 3: clip 00002 is in the test part of fold 5 here and in its train part at "
        "EmoLabel_DataSplit/train(single-labeled)/set_5.csv, line 3: a clip is in one part of a fold",
        "clip 00003 is in no part of fold(s) 3: each fold's train and test files together name every clip",
        "clip 00004 is in no part of fold(s) 4",
        "clip 00006 is a test clip in none of the 5 folds: the test files of a cross-validation cover every clip",
    ):
        assert problem in err, problem
    assert not out.exists() and not importers.skipped_path(out).exists()


@pytest.mark.parametrize("train,test", [("train(single_labeled)", "test(single_labeled)"),
                                        ("train(single-labeled)", "test(single_labeled)")])
def test_dfew_split_folders_spelled_with_an_underscore(tmp_path, capsys, dfew_root, train, test):
    splits_dir = dfew_root / "EmoLabel_DataSplit"
    for part, name in (("train", train), ("test", test)):
        (splits_dir / f"{part}(single-labeled)").rename(splits_dir / name)
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(out))
    assert code == 0, err
    assert [(row[0], row[2], row[6]) for row in _table(out, ("folds", "identity_leak"))] == [
        ("Clip/jpg_256/00001", "happy", "1"), ("Clip/jpg_256/00002", "sad", "2"),
        ("Clip/jpg_256/00003.mp4", "anger", "3"), ("Clip/jpg_256/00004", "disgust", "4"),
        ("Clip/jpg_256/00005", "fear", "5")]
    skipped = _skipped(out)
    assert skipped["Clip/jpg_256/00006"].startswith(f"named in EmoLabel_DataSplit/{test}/set_1.csv, line 3 but not on")
    listing = ("EmoLabel_DataSplit/*(single_labeled)/set_1..5.csv" if train.endswith("_labeled)")
               else f"EmoLabel_DataSplit/{train}/ and {test}/set_1..5.csv")
    assert skipped["Clip/jpg_256/00007"] == f"a clip that no split file of the protocol names ({listing})"


def test_dfew_without_its_split_folders_names_every_place_looked(tmp_path, capsys, dfew_root):
    shutil.rmtree(dfew_root / "EmoLabel_DataSplit" / "test(single-labeled)")
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(tmp_path / "a.csv"))
    assert code == 2 and "Traceback" not in err
    assert ("has no test split folder: looked for EmoLabel_DataSplit/test(single-labeled)/, "
            "EmoLabel_DataSplit/test(single_labeled)/ (each with set_1.csv ... set_5.csv)") in err
    shutil.rmtree(dfew_root / "EmoLabel_DataSplit")
    code, err = _run(capsys, "import", "dfew", str(dfew_root), "-o", str(tmp_path / "a.csv"))
    assert code == 2 and "has no train or test split folder: looked for " + ", ".join(
        f"EmoLabel_DataSplit/{p}(single{s}labeled)/" for p in ("train", "test") for s in "-_") in err
    assert not (tmp_path / "a.csv").exists()


def test_mafw(tmp_path, capsys, frames):
    root = tmp_path / "MAFW"
    for name, n in (("00025", 6), ("00031", 5), ("00040", 4), ("00108", 7)):
        _sequence(root / "data" / "frames" / name, frames, n)
    _file(root / "data" / "clips" / "00025.mp4", MAN)  # the release's videos beside the frames: not read
    _file(root / "split" / "single" / "with_caption" / "set_1" / "train.txt", "x")
    labels = {"00025.mp4": "anger", "00031.mp4": "happiness", "00040.mp4": "helplessness", "00108.mp4": "sadness",
              "00200.mp4": "neutral"}  # 00200: not on disk
    _split_files(root, mafw.split_file, {1: ["00025.mp4", "00200.mp4"], 2: ["00031.mp4"], 3: ["00040.mp4"],
                                         4: ["00108.mp4"], 5: ["00025.mp4"]}, labels, lambda c, l: f"{c} {l}\n")
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "mafw", str(root), "-o", str(out))
    assert code == 0, err
    assert _table(out, ("folds", "identity_leak")) == [  # 00025 is tested in two folds
        ("data/frames/00025", "00025", "anger", "0", "6", "", "1;5", "True"),
        ("data/frames/00031", "00031", "happy", "0", "5", "", "2", "True"),
        ("data/frames/00040", "00040", "helplessness", "0", "4", "", "3", "True"),
        ("data/frames/00108", "00108", "sad", "0", "7", "", "4", "True"),
    ]
    assert _skipped(out) == {
        "data/clips": "not part of MAFW's single-expression protocol (split/single/no_caption/set_1..5/, data/frames/)",
        "data/frames/00200": "named in split/single/no_caption/set_1/test.txt, line 2 but not on disk (no frame folder "
                             "or video file 00200 in data/frames/)",
        "split/single/with_caption": "not part of MAFW's single-expression protocol "
                                     "(split/single/no_caption/set_1..5/, data/frames/)",
    }
    assert "fold 1: 3 train and 1 test clip(s)" in err and "identity_leak true" in err
    segments = _accepted(out, root, ["anger", "happy", "helplessness", "sad"])
    assert segments["test_folds"].tolist() == ["1;5", "2", "3", "4"]

    (root / mafw.split_file("test", 2)).write_text("00031.mp4 joy\n00040.mp4\n")
    code, err = _run(capsys, "import", "mafw", str(root), "-o", str(tmp_path / "bad.csv"))
    assert code == 2 and not (tmp_path / "bad.csv").exists()
    assert "split/single/no_caption/set_2/test.txt, line 1: label 'joy' is not a MAFW single-expression label" in err
    assert "split/single/no_caption/set_2/test.txt, line 2: 1 field(s), expected a clip and its label" in err


def test_mafw_release_layout_of_train_test_set_and_clips(tmp_path, capsys):
    """``Train & Test Set/single/no_caption`` with the clips as videos in ``data/clips``, as the release unpacks."""
    root = tmp_path / "MAFW"
    for name in ("00025", "00031", "00040", "00108"):
        _file(root / "data" / "clips" / f"{name}.mp4", MAN)
    labels = {"00025.mp4": "anger", "00031.mp4": "happiness", "00040.mp4": "helplessness", "00108.mp4": "sadness"}
    _split_files(root, lambda split, fold: mafw.split_file(split, fold, "Train & Test Set/single/no_caption"),
                 {1: ["00025.mp4"], 2: ["00031.mp4"], 3: ["00040.mp4"], 4: ["00108.mp4"], 5: ["00025.mp4"]},
                 labels, lambda c, l: f"{c} {l}\n")
    _file(root / "Train & Test Set" / "compound" / "no_caption" / "set_1" / "train.txt", "x")
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "mafw", str(root), "-o", str(out))
    assert code == 0, err
    assert _table(out, ("folds", "identity_leak")) == [
        ("data/clips/00025.mp4", "00025", "anger", "0", "72", "", "1;5", "True"),
        ("data/clips/00031.mp4", "00031", "happy", "0", "72", "", "2", "True"),
        ("data/clips/00040.mp4", "00040", "helplessness", "0", "72", "", "3", "True"),
        ("data/clips/00108.mp4", "00108", "sad", "0", "72", "", "4", "True"),
    ]
    assert _skipped(out) == {"Train & Test Set/compound": "not part of MAFW's single-expression protocol "
                                                          "(Train & Test Set/single/no_caption/set_1..5/, data/clips/)"}
    assert "fold 2: 3 train and 1 test clip(s)" in err
    segments = _accepted(out, root, ["anger", "happy", "helplessness", "sad"])
    assert segments["test_folds"].tolist() == ["1;5", "2", "3", "4"]
    # A line's problem is named by its file in this layout too.
    (root / mafw.split_file("test", 3, "Train & Test Set/single/no_caption")).write_text("00040.mp4 boredom\n")
    code, err = _run(capsys, "import", "mafw", str(root), "-o", str(tmp_path / "bad.csv"))
    assert code == 2 and "Train & Test Set/single/no_caption/set_3/test.txt, line 1: label 'boredom'" in err


def test_mafw_without_split_or_clip_folder_names_every_place_looked(tmp_path, capsys):
    root = tmp_path / "MAFW"
    _file(root / "data" / "clips" / "00025.mp4", MAN)
    code, err = _run(capsys, "import", "mafw", str(root), "-o", str(tmp_path / "a.csv"))
    assert code == 2 and "Traceback" not in err
    assert ("has none of the split folders split/single/no_caption/, Train & Test Set/single/no_caption/ "
            "(each with set_1/train.txt ... set_5/test.txt)") in err
    (root / "Train & Test Set" / "single" / "no_caption").mkdir(parents=True)
    shutil.rmtree(root / "data")
    code, err = _run(capsys, "import", "mafw", str(root), "-o", str(tmp_path / "a.csv"))
    assert code == 2 and "has none of the clip folders data/frames, data/clips, clips" in err
    assert not (tmp_path / "a.csv").exists()


def test_ferv39k(tmp_path, capsys, frames):
    root = tmp_path / "FERV39k"
    clips = root / "2_ClipsforFaceCrop"
    _sequence(clips / "Action" / "Happy" / "0000", frames, 9)
    _sequence(clips / "Action" / "Sad" / "0001", frames, 5)
    _file(clips / "Argue" / "Angry" / "0003.mp4", MAN)
    _sequence(clips / "Argue" / "Fear" / "0002", frames, 3)  # on disk, in no split file
    setup = root / "4_setups" / "All_scenes"
    _file(setup / "train_All.csv", "Action/Happy/0000 Happy\nArgue/Angry/0003 Angry\nWar/Sad/0009 Sad\n")
    _file(setup / "test_All.csv", "Action/Sad/0001 Sad\n")
    _file(root / "4_setups" / "Action" / "train_Action.csv", "Action/Happy/0000 Happy\n")  # a per-scene setup
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", "ferv39k", str(root), "-o", str(out))
    assert code == 0, err
    assert _table(out, ("split", "identity_leak")) == [
        ("2_ClipsforFaceCrop/Action/Happy/0000", "Action/Happy/0000", "happy", "0", "9", "Action", "train", "True"),
        ("2_ClipsforFaceCrop/Action/Sad/0001", "Action/Sad/0001", "sad", "0", "5", "Action", "test", "True"),
        ("2_ClipsforFaceCrop/Argue/Angry/0003.mp4", "Argue/Angry/0003", "anger", "0", "72", "Argue", "train", "True"),
    ]
    assert _skipped(out) == {
        "2_ClipsforFaceCrop/Argue/Fear/0002": "a clip that no split file of the protocol names "
                                              "(4_setups/All_scenes/train_All.csv, 4_setups/All_scenes/test_All.csv)",
        "2_ClipsforFaceCrop/War/Sad/0009": "named in 4_setups/All_scenes/train_All.csv, line 3 but not on disk (no "
                                           "frame folder or video file War/Sad/0009 in 2_ClipsforFaceCrop/)",
        "4_setups/Action": "not part of FERV39k's protocol (4_setups/All_scenes/{train,test}_All.csv, "
                           "2_ClipsforFaceCrop/)",
    }
    assert "one train/test split: 2 train and 1 test clip(s)" in err
    segments = _accepted(out, root, ["anger", "happy", "sad"])
    assert segments["protocol_split"].tolist() == ["train", "test", "train"]
    assert splits.protocol(segments)[1] == "column split"

    _file(setup / "test_All.csv", "Action/Sad/0001 Happy\nAction/Happy/0000 Happy\nAction/Sad/0001,Sad,x\n")
    code, err = _run(capsys, "import", "ferv39k", str(root), "-o", str(tmp_path / "bad.csv"))
    assert code == 2 and not (tmp_path / "bad.csv").exists()
    assert "4_setups/All_scenes/test_All.csv, line 1: label Happy is not the label folder of its clip Action/Sad/0001" in err
    assert ("4_setups/All_scenes/test_All.csv, line 2: clip Action/Happy/0000 is in the test part of fold 0 here and "
            "in its train part at 4_setups/All_scenes/train_All.csv, line 1") in err
    assert "4_setups/All_scenes/test_All.csv, line 3: 3 field(s)" in err


# --------------------------------------------------------------------------- errors, CLI, config


@pytest.mark.parametrize("format,layout,extra", [
    ("ckplus", {"cohn-kanade-images/S005/001/notes.txt": "x", "Emotion/readme.txt": "x"}, []),
    ("ravdess", {"notes.txt": "x", "Actor_01/03-01-01-01-01-01-01.wav": "x"}, []),
    ("cremad", {"VideoFlash/readme.txt": "x"}, []),
    ("folders", {"readme.md": "x", "Happy/notes.txt": "x"}, ["--subject-from-clip"]),
])
def test_dataset_without_a_usable_clip_is_an_error(tmp_path, capsys, format, layout, extra):
    root = tmp_path / "dataset"
    for name, text in layout.items():
        _file(root / name, text)
    out = tmp_path / "annotations.csv"
    code, err = _run(capsys, "import", format, str(root), "-o", str(out), *extra)
    assert code == 2
    assert f"ferseq: error: {format}: no usable clip in {root}" in err
    assert next(iter(sorted(layout))) in err  # the reasons are shown
    assert "Traceback" not in err
    assert not out.exists() and not importers.skipped_path(out).exists()


def test_missing_folder_and_bad_output_name(tmp_path, capsys):
    code, err = _run(capsys, "import", "ravdess", str(tmp_path / "nowhere"), "-o", str(tmp_path / "a.csv"))
    assert code == 2 and f"ravdess: dataset folder {tmp_path / 'nowhere'} does not exist" in err
    code, err = _run(capsys, "import", "ravdess", str(tmp_path), "-o", str(tmp_path / "a.txt"))
    assert code == 2 and "must end in .csv or .parquet" in err
    with pytest.raises(importers.DatasetError, match="do not apply"):
        importers.load("ravdess", tmp_path, onset_apex=(3, 3))


def test_console_script_and_module(tmp_path, ravdess_root):
    """`ferseq import ...` (the installed script) and `python -m ferseq import ...`, as a user runs them."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    out = tmp_path / "annotations.csv"
    done = subprocess.run([sys.executable, "-m", "ferseq", "import", "ravdess", str(ravdess_root), "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ferseq import ravdess" in done.stderr and "6 path(s) skipped" in done.stderr and len(_table(out)) == 3
    script = shutil.which("ferseq", path=env["PATH"])
    assert script, "ferseq is not installed: pip install -e ."
    done = subprocess.run([script, "import", "cremad", str(ravdess_root), "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "has no VideoFlash/ folder" in done.stderr and "Traceback" not in done.stderr


BENCHMARKS = ("dfew", "mafw", "ferv39k")


@pytest.mark.parametrize("name", ["ckplus", "ravdess", "cremad", "folders", *BENCHMARKS])
def test_example_configs_validate(tmp_path, name):
    from snakemake.utils import validate

    example = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    validate(copy.deepcopy(example), str(SCHEMAS / "config.schema.yaml"), set_default=True)
    assert example["data"]["import"]["format"] == name
    # The importer's labels are exactly what the example keeps or maps.
    labels = set(importers.FORMATS[name].LABELS.values()) - ({"neutral"} if name == "ckplus" else set())
    kept = set(example["classes"]["names"]) | set(example["classes"]["map"])
    assert labels <= kept or name == "folders", labels - kept
    expected = {"ckplus": ("kfold", 10), **{b: ("predefined", None) for b in BENCHMARKS}}.get(name, ("holdout", None))
    assert (example["split"].get("scheme"), example["split"].get("k")) == expected
    assert example["split"]["unit"] == "subject"
    if name in BENCHMARKS:  # the benchmark's protocol: official folds, DFER-CLIP's 16-frame sampling, every clip
        assert example["windows"] == {"length": 16, "sampling": "uniform"} and example["data"]["min_segment_frames"] == 1
        assert 0 < example["split"]["val_fraction"] < 1
        # Every clip keeps its frames: face crops are taken as the face box; MAFW's whole frames need a detector,
        # and a clip without a face is kept (scored by the training prior), not failed.
        expected_faces = {"detector": "hog", "skip_faceless_videos": True} if name == "mafw" else {"detector": "none"}
        assert example["faces"] == expected_faces
    # The cross-key checks pass once the dataset folder and the imported table exist.
    filled = copy.deepcopy(example)
    validate(filled, str(SCHEMAS / "config.schema.yaml"), set_default=True)
    filled["data"]["videos"] = str(tmp_path)
    filled["data"]["annotations"] = str(_file(tmp_path / "annotations.csv", ""))
    config.check(filled)


@pytest.mark.parametrize("name", ["ckplus", "folders", "dfew"])
def test_example_configs_plan_the_workflow(tmp_path, name):
    """Once the schema has data.import and the Snakefile includes the rule: the example plans import -> data -> faces."""
    example = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    (tmp_path / example["data"]["videos"]).mkdir(parents=True)
    # The examples start from ImageNet weights (the reference); offline, planning needs them materialised.
    weights = tmp_path / "results" / "weights" / "legacy_xception.safetensors"
    weights.parent.mkdir(parents=True)
    weights.touch()
    done = run_snakemake(tmp_path, "--configfile", str(EXAMPLES / f"{name}.yaml"), "-n")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "import_annotations" in done.stdout + done.stderr and "segments" in done.stdout + done.stderr


def test_rule_imports_through_snakemake(tmp_path, cremad_root):
    """The workflow's rule import_annotations, run for its table alone, writes it from data.import."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    settings = {"data": {"videos": str(cremad_root), "annotations": "results/data/annotations.csv",
                         "import": {"format": "cremad", "onset_apex": None, "subject_regex": None, "subjects": None,
                                    "subject_from_clip": False}, "count_frames": "decode"},
                "classes": {"names": ["anger", "happy"]}, "frame_model": {"pretrained": False}}
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(settings))

    def run():
        return run_snakemake(workdir, "--configfile", str(config), "--cores", "2", "results/data/annotations.csv",
                             timeout=300)

    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    out = workdir / "results" / "data" / "annotations.csv"
    assert len(_table(out)) == 3 and len(_skipped(out)) == 5
    log = (workdir / "results" / "logs" / "data" / "import_annotations.log").read_text()
    assert "ferseq import cremad" in log and "5 path(s) skipped" in log

    # A path other than data.videos is a config error, named by its key.
    settings["data"]["import"]["path"] = str(tmp_path)
    config.write_text(yaml.safe_dump(settings))
    out.unlink()
    done = run()
    assert done.returncode != 0 and not out.exists()
    log = (workdir / "results" / "logs" / "data" / "import_annotations.log").read_text()
    assert "data.import.path" in log and "must be the folder data.videos" in log
