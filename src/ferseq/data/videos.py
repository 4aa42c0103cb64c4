"""Read videos: files OpenCV decodes, or folders of images (an image sequence counts as a video).

Every later stage reads frames through this module, so a video is decoded in one
place, once, front to back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ferseq.common.errors import FerseqError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class VideoError(FerseqError, RuntimeError):
    """A video that cannot be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about a video: ``frames`` counted as asked (decoded, or the container's header),
    and ``header_frames``, the count its header gives (None for an image folder or a header without one)."""

    path: str
    frames: int
    fps: float
    width: int
    height: int
    header_frames: int | None = None

    @property
    def cut_short(self) -> bool:
        """Whether decoding stopped before the frame count of the file's header: the file looks damaged."""
        return self.header_frames is not None and self.frames < self.header_frames

    def frames_text(self) -> str:
        """The frame count in words, with the header's when decoding stopped before it."""
        if self.cut_short:
            return (f"{self.frames} frames decoded, its header gives {self.header_frames}: decoding stopped early, "
                    "the file looks damaged (or its header is wrong)")
        return f"{self.frames} frames"


def _cv2():
    # cv2 is imported on first use so that reading annotations (done at DAG
    # construction time) does not pay for it.
    import cv2

    return cv2


def image_files(folder: Path) -> list[Path]:
    """The frames of an image-sequence folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def probe(path: str | Path, count: str = "decode") -> VideoInfo:
    """Open a video and measure it.

    ``count="decode"`` counts frames by decoding them (exact; container headers
    can be wrong, e.g. a clip whose header says 98 frames and decodes 95);
    ``count="header"`` trusts the container's frame count (fast). Raises
    :class:`VideoError` naming the path when it cannot be read.
    """
    path = Path(path)
    cv2 = _cv2()
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise VideoError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        first = cv2.imread(str(files[0]))
        if first is None:
            raise VideoError(f"{files[0]}: image cannot be decoded")
        return VideoInfo(str(path), len(files), 0.0, first.shape[1], first.shape[0])
    if not path.is_file():
        raise VideoError(f"{path}: no such video file or folder")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open it as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = header
        if count == "decode" or frames <= 0:
            frames = 0
            while cap.grab():
                frames += 1
        if frames <= 0:
            raise VideoError(f"{path}: no frame could be decoded" + (
                f" (its header gives {header} frames: the file looks damaged)" if header > 0 else ""))
        return VideoInfo(str(path), frames, fps, width, height, header if header > 0 else None)
    finally:
        cap.release()


def _increasing(frames: Iterable[int]) -> Iterator[int]:
    """``frames`` as ints, checked to increase."""
    last = -1
    for frame in frames:
        frame = int(frame)
        if frame <= last:
            raise ValueError(f"frames must increase: {frame} after {last}")
        last = frame
        yield frame


def iter_frames(path: str | Path, frames: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, BGR image)`` for the wanted frames (all when None).

    ``frames`` must come in increasing order and is read lazily, so it may run
    past the end of the video (e.g. an open-ended range). The video is streamed
    once from its start; frames not wanted are only grabbed, not decoded, so
    memory does not grow with video length. Frames past the end of the video
    are not yielded; the caller sees which are missing.
    """
    path = Path(path)
    cv2 = _cv2()
    wanted = None if frames is None else _increasing(frames)
    if path.is_dir():
        files = image_files(path)
        for index in wanted if wanted is not None else range(len(files)):
            if index >= len(files):
                return
            image = cv2.imread(str(files[index]))
            if image is None:
                raise VideoError(f"{files[index]}: image cannot be decoded")
            yield index, image
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open it as a video")
    try:
        if wanted is None:
            index = 0
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                yield index, image
                index += 1
        index = 0
        for target in wanted:
            # grab() skips without decoding to pixels: far cheaper than read().
            while index < target:
                if not cap.grab():
                    return
                index += 1
            ok, image = cap.read()
            if not ok:
                return
            yield index, image
            index += 1
    finally:
        cap.release()
