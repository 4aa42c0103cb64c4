"""Static facial-expression image sets as users have them, read into one table.

:func:`read_image_set` reads one of :data:`FORMATS`, each in its release's own layout: a folder of class folders,
a CSV of paths and labels, RAF-DB (basic), FER2013 (``fer2013.csv``), FERPlus (``fer2013new.csv`` over FER2013's
pixels) and AffectNet (manually annotated part). Every reader gives an :class:`ImageSet`: one table row per image
and a ``load`` that decodes one image when asked. ``load`` keeps no open file between calls and is a
:func:`functools.partial` of a module function, so it works in forked (or spawned) data-loader workers.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from ferseq.common.errors import FerseqError

FORMATS = ("folder", "csv", "rafdb", "fer2013", "ferplus", "affectnet")
# The vocabulary of the public sets' classes, as every reader names them.
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
SPLITS = ("train", "val", "test")

log = logging.getLogger(__name__)

#: File suffixes taken as images in a folder of class folders (compared in lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: RAF-DB basic's expression codes (EmoLabel/list_patition_label.txt).
RAFDB_CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
RAFDB_IMAGES = ("aligned", "original")
RAFDB_LABELS = Path("EmoLabel") / "list_patition_label.txt"  # sic: the release's own spelling
#: FER2013's ``emotion`` codes and ``Usage`` values (FERPlus keeps the same Usage column).
FER2013_CODES = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise", 6: "neutral"}
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_SIDE = 48
#: FERPlus's vote columns after its 8 emotions: nobody could tell, and not a face.
FERPLUS_OTHER = ("unknown", "NF")
#: AffectNet's ``expression`` codes; 8-10 are not expressions, their rows are dropped.
AFFECTNET_CODES = {0: "neutral", 1: "happiness", 2: "sadness", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger",
                   7: "contempt"}
AFFECTNET_DROPPED = {8: "None", 9: "Uncertain", 10: "No-Face"}
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                     "expression", "valence", "arousal")
#: AffectNet's two file lists and the split each becomes (the literature reports on the validation set).
AFFECTNET_LISTS = (("training.csv", "train"), ("validation.csv", "test"))
AFFECTNET_LIST_FOLDER = "Manually_Annotated_file_lists"
AFFECTNET_IMAGES = "Manually_Annotated_Images"
#: How many missing files an error lists before it only counts them.
LIST_MISSING = 5


class ImageSetError(FerseqError, ValueError):
    """An image set that cannot be read (a missing file, a malformed row, an unknown label): names it."""


@dataclass
class ImageSet:
    """An image set: ``table`` has one row per image, ``image_id`` (int64, 0..n-1 in row order), ``name`` (str: where
    the image comes from, e.g. its path relative to the set's root or ``fer2013.csv row 12``), ``label`` (str: the
    set's own class name), ``subject`` (str or missing) and ``split`` (``train``/``val``/``test`` as the release
    assigns it, or missing); ``load(image_id)`` gives the image as BGR uint8 (h, w, 3)."""

    table: pd.DataFrame
    load: Callable[[int], np.ndarray] = field(repr=False)
    format: str = "folder"
    root: Path = Path(".")
    #: Rows of the release left out, by reason (e.g. AffectNet's ``No-Face``), with how many.
    dropped: dict[str, int] = field(default_factory=dict)


def read_image_set(format: str, path: str | Path, *, rafdb_images: str = "aligned",
                   fer2013_csv: str | Path | None = None) -> ImageSet:
    """Read the image set ``path`` laid out as ``format`` (one of :data:`FORMATS`; see the module's readers).

    ``rafdb_images`` picks RAF-DB's ``aligned`` (100x100) or ``original`` images; ``fer2013_csv`` is the FER2013 CSV
    whose pixels FERPlus labels (default: ``fer2013.csv`` beside ``fer2013new.csv`` or in its parent folder).
    """
    if format not in FORMATS:
        raise ImageSetError(f"pretrain.images.format: unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise ImageSetError(f"pretrain.images.path: {path} does not exist")
    if format == "folder":
        return _read_folder(path)
    if format == "csv":
        return _read_csv(path)
    if format == "rafdb":
        return _read_rafdb(path, rafdb_images)
    if format == "fer2013":
        return _read_fer2013(path)
    if format == "ferplus":
        return _read_ferplus(path, fer2013_csv)
    return _read_affectnet(path)


# --------------------------------------------------------------------------- loading one image


def _checked(image_id: int, n: int) -> int:
    """``image_id`` as an index into n images: a negative id would silently wrap around."""
    image_id = int(image_id)
    if not 0 <= image_id < n:
        raise IndexError(f"image_id {image_id} is not in 0..{n - 1}")
    return image_id


def _load_file(paths: Sequence[str], image_id: int) -> np.ndarray:
    """Decode image file ``paths[image_id]`` as BGR uint8; grey or 4-channel files become 3 channels."""
    path = paths[_checked(image_id, len(paths))]
    try:
        # Read the bytes first: cv2.imread cannot open non-ASCII paths on Windows and says nothing about why.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageSetError(f"image {path} cannot be read: {error.strerror or error}") from error
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # some damaged headers make OpenCV throw rather than give None
        image = None
    if image is None:
        raise ImageSetError(f"image {path} cannot be decoded: not an image, or a damaged one")
    return image


def _load_pixels(pixels: np.ndarray, image_id: int) -> np.ndarray:
    """Grey image ``pixels[image_id]`` (kept in memory) as BGR uint8."""
    return cv2.cvtColor(pixels[_checked(image_id, len(pixels))], cv2.COLOR_GRAY2BGR)


# --------------------------------------------------------------------------- the table, its checks and its log


def _image_set(format: str, root: Path, names: Sequence[str], labels: Sequence[str], splits: Sequence[str | None],
               load: Callable[[int], np.ndarray], dropped: Mapping[str, int] | None = None,
               subjects: Sequence[str | None] | None = None) -> ImageSet:
    """The ImageSet of the rows read, its counts logged; no row left is an error that says what was dropped."""
    dropped = {reason: int(n) for reason, n in (dropped or {}).items() if n}
    left_out = ", ".join(f"{reason} {n}" for reason, n in dropped.items())
    n = len(names)
    if not n:
        raise ImageSetError(f"{format}: no image left in {root}" + (f" (dropped: {left_out})" if dropped else ""))
    table = pd.DataFrame({
        "image_id": np.arange(n, dtype=np.int64),
        "name": pd.Series(names, dtype=str),
        "label": pd.Series(labels, dtype=str),
        "subject": pd.array([None] * n if subjects is None else subjects, dtype="string"),
        "split": pd.array(splits, dtype="string"),
    })
    _log_counts(format, root, table)
    if dropped:
        log.info("%s: dropped %d row(s): %s", format, sum(dropped.values()), left_out)
    return ImageSet(table=table, load=load, format=format, root=root, dropped=dropped)


def _log_counts(format: str, root: Path, table: pd.DataFrame) -> None:
    """One line for the set, one per split with its images per label."""
    log.info("%s: %d image(s) of %d label(s) read from %s", format, len(table), table["label"].nunique(), root)
    splits = table["split"].fillna("no split")
    for split, labels in table["label"].groupby(splits, sort=True):
        counts = labels.value_counts().sort_index()
        log.info("%s:   %s: %d (%s)", format, split, len(labels), ", ".join(f"{k} {v}" for k, v in counts.items()))


def _missing_files(source: Path, missing: Sequence[tuple[str, Path]]) -> None:
    """Raise the error for image files that ``source`` lists but that do not exist (``where`` names each row)."""
    if not missing:
        return
    shown = "; ".join(f"{where}: {path}" for where, path in missing[:LIST_MISSING])
    more = f" and {len(missing) - LIST_MISSING} more" if len(missing) > LIST_MISSING else ""
    raise ImageSetError(f"{source}: {len(missing)} image file(s) not found: {shown}{more}")


def _read_table(file: Path, required: Sequence[str], optional: Sequence[str] = (),
                names: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``required`` and ``optional`` columns of CSV ``file`` as text ("" where empty); a missing required column is
    an error naming it. ``names``: the columns of a file without a header line."""
    wanted = set(required) | set(optional)
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False, encoding="utf-8-sig", names=names,
                            header=None if names else "infer", usecols=lambda column: column.strip() in wanted)
    except pd.errors.EmptyDataError as error:
        raise ImageSetError(f"{file} is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ImageSetError(f"{file} is not a readable CSV file: {error}") from error
    frame.columns = [column.strip() for column in frame.columns]
    for column in required:
        if column not in frame.columns:
            raise ImageSetError(f"{file}: no column {column!r} in its header (it needs {', '.join(required)})")
    return frame.fillna("")  # a row cut short: empty there, whatever pandas version fills in


def _codes(values: pd.Series, valid: Iterable[int], file: Path, column: str, first_line: int) -> np.ndarray:
    """Integer codes of ``column``; a value outside ``valid`` is an error naming its line (data row 0 is on
    ``first_line``)."""
    valid = sorted(valid)
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = np.flatnonzero(~numbers.isin(valid).to_numpy())
    if bad.size:
        row = int(bad[0])
        raise ImageSetError(f"{file} line {row + first_line}: {column} {values.iloc[row]!r} is not one of "
                            f"{', '.join(map(str, valid))}")
    return numbers.to_numpy(np.int64)


# --------------------------------------------------------------------------- folder


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, in name order."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _read_folder(root: Path) -> ImageSet:
    """``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>`` when its subfolders are split names."""
    if not root.is_dir():
        raise ImageSetError(f"pretrain.images.path: {root} is not a folder (format folder reads "
                            f"<path>/<class>/<image>)")
    tops = _subfolders(root)
    split_layout = bool(tops) and {top.name for top in tops} <= set(SPLITS)
    if split_layout:
        classes = [(top.name, folder) for top in tops for folder in _subfolders(top)]
    else:
        classes = [(None, top) for top in tops]
    names, labels, splits, paths = [], [], [], []
    ignored = []
    for split, folder in classes:
        for file in sorted(folder.iterdir(), key=lambda p: p.name):
            # Not images: e.g. a Thumbs.db, macOS's ._x.jpg shadow files, or a folder one level too deep.
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES or file.name.startswith("."):
                ignored.append(file)
                continue
            names.append(file.relative_to(root).as_posix())
            labels.append(folder.name)
            splits.append(split)
            paths.append(str(file))
    if ignored:
        log.info("folder: ignored %d entries of the class folders that are not image files (%s), e.g. %s",
                 len(ignored), ", ".join(IMAGE_SUFFIXES), ignored[0].relative_to(root).as_posix())
    if not names:
        layout = "<path>/{train,val,test}/<class>/<image>" if split_layout else "<path>/<class>/<image>"
        raise ImageSetError(f"pretrain.images.path: no image ({', '.join(IMAGE_SUFFIXES)}) in {root}; format folder "
                            f"reads {layout}")
    return _image_set("folder", root, names, labels, splits, partial(_load_file, tuple(paths)))


# --------------------------------------------------------------------------- csv


def _read_csv(file: Path) -> ImageSet:
    """A CSV ``path,label[,subject][,split]``, paths relative to its folder (or absolute); all files checked now."""
    if not file.is_file():
        raise ImageSetError(f"pretrain.images.path: {file} is not a file (format csv reads a CSV with the columns "
                            f"path,label[,subject][,split])")
    frame = _read_table(file, ("path", "label"), ("subject", "split"))
    frame = frame.apply(lambda column: column.str.strip())
    lines = range(2, len(frame) + 2)  # as a spreadsheet numbers them: the header is line 1
    for column in ("path", "label"):
        empty = np.flatnonzero((frame[column] == "").to_numpy())
        if empty.size:
            raise ImageSetError(f"{file} line {lines[empty[0]]}: empty {column}")
    splits = frame["split"] if "split" in frame else pd.Series([""] * len(frame))
    unknown = np.flatnonzero((~splits.isin(("", *SPLITS))).to_numpy())
    if unknown.size:
        raise ImageSetError(f"{file} line {lines[unknown[0]]}: split {splits.iloc[unknown[0]]!r} is not one of "
                            f"{', '.join(SPLITS)} (or empty)")
    paths = [file.parent / path for path in frame["path"]]  # an absolute path stays as it is
    _missing_files(file, [(f"line {line}", path) for line, path in zip(lines, paths) if not path.is_file()])
    subjects = frame["subject"].replace("", None) if "subject" in frame else None
    return _image_set("csv", file.parent, frame["path"].tolist(), frame["label"].tolist(),
                      splits.replace("", None).tolist(), partial(_load_file, tuple(map(str, paths))),
                      subjects=None if subjects is None else subjects.tolist())


# --------------------------------------------------------------------------- RAF-DB


def _rafdb_line(line: str, number: int, file: Path) -> tuple[str, str, str]:
    """(image name, label, split) of one line ``train_00001.jpg 5`` of RAF-DB's labels file."""
    fields = line.split()
    if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) not in RAFDB_CODES:
        raise ImageSetError(f"{file} line {number}: {line.strip()!r} is not '<image> <code>' with a code of "
                            f"1-7 (1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral)")
    name, code = fields
    split = next((split for split in ("train", "test") if name.startswith(split + "_")), None)
    if split is None:
        raise ImageSetError(f"{file} line {number}: image {name!r} starts with neither train_ nor test_")
    return name, RAFDB_CODES[int(code)], split


def _read_rafdb(root: Path, images: str) -> ImageSet:
    """RAF-DB basic: ``root`` holds EmoLabel/list_patition_label.txt and Image/aligned (or Image/original)."""
    if images not in RAFDB_IMAGES:
        raise ImageSetError(f"pretrain.images.rafdb_images: {images!r} is not one of {', '.join(RAFDB_IMAGES)}")
    labels_file = root / RAFDB_LABELS
    if not labels_file.is_file():
        raise ImageSetError(f"rafdb: no labels file {labels_file} (pretrain.images.path is RAF-DB's basic folder, "
                            f"the one holding EmoLabel/ and Image/)")
    folder = root / "Image" / images
    if not folder.is_dir():
        raise ImageSetError(f"rafdb: no image folder {folder} (pretrain.images.rafdb_images: {images})")
    rows = [_rafdb_line(line, number, labels_file)
            for number, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    # The aligned faces carry the suffix _aligned: train_00001.jpg is Image/aligned/train_00001_aligned.jpg.
    files = [folder / (f"{Path(name).stem}_aligned.jpg" if images == "aligned" else name) for name, _, _ in rows]
    _missing_files(labels_file, [(name, path) for (name, _, _), path in zip(rows, files) if not path.is_file()])
    return _image_set("rafdb", root, [path.relative_to(root).as_posix() for path in files],
                      [label for _, label, _ in rows], [split for _, _, split in rows],
                      partial(_load_file, tuple(map(str, files))))


# --------------------------------------------------------------------------- FER2013 and FERPlus


def _csv_in(path: Path, name: str, key: str) -> Path:
    """``path`` when it is a file, else the file ``name`` in the folder ``path``."""
    if path.is_dir():
        if not (path / name).is_file():
            raise ImageSetError(f"{key}: no {name} in the folder {path}")
        return path / name
    return path


def _pixel_problem(text: str) -> str | None:
    """What is wrong with one FER2013 ``pixels`` value, if anything (the slow check, run once parsing failed)."""
    values = text.split()
    if len(values) != FER2013_SIDE ** 2:
        return f"{len(values)} pixel values, expected {FER2013_SIDE ** 2} ({FER2013_SIDE}x{FER2013_SIDE})"
    if not all(value.isascii() and value.isdigit() and int(value) <= 255 for value in values):
        return "pixel values must be integers 0-255"
    return None


def _parse_pixels(column: pd.Series, file: Path) -> np.ndarray:
    """FER2013's ``pixels`` column as uint8 (n, 48, 48); a row of the wrong length or with a bad value is an error."""
    rows = column.tolist()
    if not rows:  # loadtxt warns about, and mis-shapes, an empty input
        return np.zeros((0, FER2013_SIDE, FER2013_SIDE), dtype=np.uint8)
    try:
        # numpy's C text parser reads the 300 MB of the real file in seconds; a per-row Python loop takes minutes.
        pixels = np.loadtxt(rows, dtype=np.uint8, comments=None, ndmin=2)
        parsed = pixels.shape == (len(rows), FER2013_SIDE ** 2)  # loadtxt skips empty lines: count them here
    except ValueError:
        parsed = False
    if not parsed:
        row, problem = next(((row, problem) for row, text in enumerate(rows) if (problem := _pixel_problem(text))),
                            (0, "pixels cannot be parsed"))
        raise ImageSetError(f"{file} line {row + 2} ({file.name} row {row + 1}): {problem}")
    return pixels.reshape(len(rows), FER2013_SIDE, FER2013_SIDE)


def _usage(values: pd.Series, file: Path) -> list[str]:
    """FER2013's Usage column as our splits (Training train, PublicTest val, PrivateTest test)."""
    values = values.str.strip()
    bad = np.flatnonzero((~values.isin(list(FER2013_USAGE))).to_numpy())
    if bad.size:
        raise ImageSetError(f"{file} line {bad[0] + 2}: Usage {values.iloc[bad[0]]!r} is not one of "
                            f"{', '.join(FER2013_USAGE)}")
    return values.map(FER2013_USAGE).tolist()


def _read_fer2013(path: Path) -> ImageSet:
    """FER2013's ``fer2013.csv`` (emotion,pixels,Usage), its 48x48 grey pixels kept in memory."""
    file = _csv_in(path, "fer2013.csv", "pretrain.images.path")
    frame = _read_table(file, ("emotion", "pixels", "Usage"))
    codes = _codes(frame["emotion"], FER2013_CODES, file, "emotion", first_line=2)
    splits = _usage(frame["Usage"], file)
    pixels = _parse_pixels(frame["pixels"], file)
    names = [f"{file.name} row {row}" for row in range(1, len(frame) + 1)]
    return _image_set("fer2013", file.parent, names, [FER2013_CODES[code] for code in codes], splits,
                      partial(_load_pixels, pixels))


def _fer2013_beside(ferplus: Path, fer2013_csv: str | Path | None) -> Path:
    """The FER2013 CSV whose pixels ``ferplus`` labels: the one given, else fer2013.csv beside it or one folder up."""
    if fer2013_csv is not None:
        given = Path(fer2013_csv)
        if not given.exists():
            raise ImageSetError(f"pretrain.images.fer2013_csv: {given} does not exist")
        return _csv_in(given, "fer2013.csv", "pretrain.images.fer2013_csv")
    places = [ferplus.parent / "fer2013.csv", ferplus.parent.parent / "fer2013.csv"]
    found = next((place for place in places if place.is_file()), None)
    if found is None:
        raise ImageSetError(f"ferplus: FERPlus labels FER2013's images, and fer2013.csv is neither at {places[0]} nor "
                            f"at {places[1]}; set pretrain.images.fer2013_csv to it")
    return found


def _votes(frame: pd.DataFrame, file: Path) -> np.ndarray:
    """FERPlus's vote counts (n, 10): its 8 emotions, then unknown and NF; a non-count is an error naming its line."""
    columns = [*EMOTIONS, *FERPLUS_OTHER]
    votes = frame[columns].apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    bad = (votes.isna() | (votes < 0) | (votes % 1 != 0)).to_numpy()
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ImageSetError(f"{file} line {row + 2}: {columns[col]} {frame[columns[col]].iloc[row]!r} is not a vote "
                            f"count")
    return votes.to_numpy(np.int64)


def _ferplus_majority(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FERPlus's majority labels (Barsoum et al. 2016, the ``majority`` mode of microsoft/FERPlus): a class with a
    single vote loses it (outlier removal), then the top class must hold more than half of the votes left. Gives per
    row the winning emotion's index (or -1) and whether the majority went to unknown or not-a-face."""
    kept = np.where(votes > 1, votes, 0)
    top = kept.argmax(axis=1)
    majority = 2 * kept.max(axis=1) > kept.sum(axis=1)  # more than half: also no tie for the top
    other = majority & (top >= len(EMOTIONS))
    return np.where(majority & ~other, top, -1), other


def _read_ferplus(path: Path, fer2013_csv: str | Path | None) -> ImageSet:
    """FERPlus's ``fer2013new.csv`` (10 annotators' votes per FER2013 row, same order) over FER2013's pixels."""
    file = _csv_in(path, "fer2013new.csv", "pretrain.images.path")
    source = _fer2013_beside(file, fer2013_csv)
    frame = _read_table(file, ("Usage", "Image name", *EMOTIONS, *FERPLUS_OTHER))
    fer = _read_table(source, ("pixels", "Usage"))
    if len(fer) != len(frame):
        raise ImageSetError(f"ferplus: {file} has {len(frame)} rows and {source} {len(fer)}; FERPlus labels FER2013 "
                            f"row by row, so both must be the releases' own files")
    differ = np.flatnonzero((fer["Usage"].str.strip() != frame["Usage"].str.strip()).to_numpy())
    if differ.size:
        raise ImageSetError(f"ferplus: line {differ[0] + 2} is {frame['Usage'].iloc[differ[0]]!r} in {file} but "
                            f"{fer['Usage'].iloc[differ[0]]!r} in {source}: the two files are not in the same order")
    splits = np.array(_usage(frame["Usage"], file), dtype=object)
    winner, other = _ferplus_majority(_votes(frame, file))
    image_names = frame["Image name"].str.strip()
    unnamed = (image_names == "").to_numpy()  # FERPlus leaves out the name of the images that are no faces
    keep = (winner >= 0) & ~unnamed
    dropped = {"no image name": int(unnamed.sum()),
               "majority unknown or not a face": int((other & ~unnamed).sum()),
               "no majority": int(((winner < 0) & ~other & ~unnamed).sum())}
    pixels = _parse_pixels(fer["pixels"], source)[keep]
    return _image_set("ferplus", file.parent, image_names[keep].tolist(),
                      [EMOTIONS[index] for index in winner[keep]], splits[keep].tolist(),
                      partial(_load_pixels, pixels), dropped)


# --------------------------------------------------------------------------- AffectNet


def _has_header(file: Path) -> bool:
    """Whether an AffectNet list starts with its header line: training.csv does, validation.csv does not."""
    with open(file, encoding="utf-8-sig") as text:
        return text.readline().startswith(AFFECTNET_COLUMNS[0])


def _read_affectnet_list(file: Path, split: str, images: Path,
                         dropped: Counter[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(names, labels, splits, paths) of the expressions of one AffectNet list; rows coded 8-10 are counted."""
    header = _has_header(file)
    frame = _read_table(file, ("subDirectory_filePath", "expression"), names=None if header else AFFECTNET_COLUMNS)
    codes = _codes(frame["expression"], (*AFFECTNET_CODES, *AFFECTNET_DROPPED), file, "expression",
                   first_line=2 if header else 1)
    for code, n in zip(*np.unique(codes[codes >= len(AFFECTNET_CODES)], return_counts=True)):
        dropped[AFFECTNET_DROPPED[int(code)]] += int(n)
    keep = codes < len(AFFECTNET_CODES)
    subpaths = frame["subDirectory_filePath"][keep].tolist()
    # Plain strings, not Path objects: 290k of them. Not checked here: 290k stats are slow on a network disk.
    paths = [os.path.join(images, subpath) for subpath in subpaths]
    names = [f"{AFFECTNET_IMAGES}/{subpath}" for subpath in subpaths]
    return names, [AFFECTNET_CODES[code] for code in codes[keep]], [split] * len(names), paths


def _read_affectnet(root: Path) -> ImageSet:
    """AffectNet's manually annotated part: ``root`` holds Manually_Annotated_file_lists/{training,validation}.csv
    (or the two CSVs themselves) and Manually_Annotated_Images/. A missing image surfaces when it is loaded."""
    lists = root / AFFECTNET_LIST_FOLDER if (root / AFFECTNET_LIST_FOLDER).is_dir() else root
    images = root / AFFECTNET_IMAGES
    for name, _ in AFFECTNET_LISTS:
        if not (lists / name).is_file():
            raise ImageSetError(f"affectnet: no {name} in {lists} (pretrain.images.path is the folder holding "
                                f"{AFFECTNET_LIST_FOLDER}/ and {AFFECTNET_IMAGES}/)")
    if not images.is_dir():
        raise ImageSetError(f"affectnet: no image folder {images} (pretrain.images.path is the folder holding "
                            f"{AFFECTNET_LIST_FOLDER}/ and {AFFECTNET_IMAGES}/)")
    dropped: Counter[str] = Counter()
    names, labels, splits, paths = [], [], [], []
    for name, split in AFFECTNET_LISTS:
        for whole, part in zip((names, labels, splits, paths),
                               _read_affectnet_list(lists / name, split, images, dropped)):
            whole.extend(part)
    return _image_set("affectnet", root, names, labels, splits, partial(_load_file, tuple(paths)),
                      {reason: dropped[reason] for reason in AFFECTNET_DROPPED.values()})
