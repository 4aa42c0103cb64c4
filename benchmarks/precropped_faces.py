"""Face detection on pre-cropped frames: how many frames and clips keep a face, by ``faces.detector`` setting.

    python benchmarks/precropped_faces.py [--margin 1.3] [--size 224] [--clip-frames 48]

Pre-cropped corpora (DFEW's ``clip_224x224``, FERV39k's ``2_ClipsforFaceCrop``)
ship each frame already cut to the face. This script makes such frames from the
demo clips: every frame in which dlib HOG (the faces stage's default settings)
finds the central face on the whole frame is cut to that face box, squared, and
resized to ``--size`` pixels. It then runs the faces stage's face finding
(:class:`ferseq.faces.face_tracking.FaceTracker`: detect at least every
``detect_every`` frames, follow by landmarks in between) on those crops, clip by
clip, with

- ``hog``: HOG at the default settings, as the faces stage runs it;
- ``hog + margin``: HOG on the crop padded with a black border to ``--margin``
  times its side (the face keeps some context around it, as HOG was trained);
- ``none``: no detection, the crop is the face box (``faces.detector: none``).

A "clip" is a run of ``--clip-frames`` consecutive crops of one demo video (about
the length of a DFEW clip); it keeps a face when any of its frames does. Prints
frames and clips with a face per setting, and the detector alone (a full
detection on every crop, no tracking).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ferseq.data.videos import iter_frames  # noqa: E402
from ferseq.faces import face_extraction  # noqa: E402
from ferseq.faces.detection import Detection, central_face, make_detector  # noqa: E402
from ferseq.faces.face_tracking import FaceTracker  # noqa: E402

VIDEOS = REPO / "data" / "demo" / "videos"


def crops(video: Path, size: int) -> list[np.ndarray]:
    """The frames of ``video`` in which HOG finds a face, each cut to its square face box at ``size`` pixels."""
    detector = make_detector({"detector": "hog"})
    out = []
    for _, frame in iter_frames(video):
        height, width = frame.shape[:2]
        found = central_face(detector(frame), width, height)
        if found is None:
            continue
        x0, y0, x1, y1 = found.box
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # A square around the box centre, shifted into the frame where it would leave it.
        left = int(round(min(max(cx - side / 2, 0), width - side)))
        top = int(round(min(max(cy - side / 2, 0), height - side)))
        side = int(round(min(side, width, height)))
        out.append(cv2.resize(frame[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA))
    return out


class Margin:
    """A detector run on the frame padded with a black border to ``factor`` times its side; boxes in the frame's
    own pixels."""

    def __init__(self, detector, factor: float):
        self.detector, self.factor = detector, factor

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        height, width = frame.shape[:2]
        dy, dx = int(round(height * (self.factor - 1) / 2)), int(round(width * (self.factor - 1) / 2))
        padded = cv2.copyMakeBorder(frame, dy, dy, dx, dx, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return [Detection((x0 - dx, y0 - dy, x1 - dx, y1 - dy), d.score)
                for d in self.detector(padded) for x0, y0, x1, y1 in [d.box]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--margin", type=float, default=1.3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clip-frames", type=int, default=48)
    args = parser.parse_args()
    cfg = dict(face_extraction.DEFAULTS)
    landmarks = face_extraction.landmark_model(cfg)
    hog = make_detector({**cfg, "detector": "hog"})
    settings = {
        "hog (default settings)": (hog, int(cfg["detect_every"])),
        f"hog + margin {args.margin}": (Margin(hog, args.margin), int(cfg["detect_every"])),
        "none (frame = face box)": (make_detector({**cfg, "detector": "none"}), 1),
    }
    clips = []
    for video in sorted(VIDEOS.iterdir()):
        frames = crops(video, args.size)
        clips += [(video.name, frames[i:i + args.clip_frames]) for i in range(0, len(frames), args.clip_frames)]
        print(f"{video.name}: {len(frames)} face crops, {args.size}x{args.size}")
    total = sum(len(f) for _, f in clips)
    print(f"{len(clips)} clips of up to {args.clip_frames} crops, {total} frames\n")
    print(f"{'setting':28} {'frames with a face':>20} {'clips with a face':>18} {'detector alone':>16}")
    for name, (detector, every) in settings.items():
        found_frames = found_clips = alone = 0
        for _, frames in clips:
            tracker = FaceTracker(detector, landmarks, every)  # one per clip, as the faces stage has per video
            found = [tracker.update(frame, index) is not None for index, frame in enumerate(frames)]
            found_frames += sum(found)
            found_clips += any(found)
            alone += sum(bool(detector(frame)) for frame in frames)
        print(f"{name:28} {found_frames:>9} of {total:<8} {found_clips:>7} of {len(clips):<8} {alone:>6} of {total}")
    # Does the frame box mislead the landmark predictor? Its landmarks against those in HOG's box, where HOG finds one.
    shifts = []
    for _, frames in clips:
        for frame in frames:
            found = hog(frame)
            if found:
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                height, width = gray.shape
                in_hog = landmarks(gray, central_face(found, width, height).box)
                in_frame = landmarks(gray, (0.0, 0.0, float(width), float(height)))
                shifts.append(float(np.linalg.norm(in_hog - in_frame, axis=1).mean()))
    print(f"\nlandmarks in the frame box vs in HOG's box, {len(shifts)} crops where HOG finds the face: mean point "
          f"distance median {np.median(shifts):.1f} px, 95th percentile {np.percentile(shifts, 95):.1f} px "
          f"(of {args.size})")


if __name__ == "__main__":
    main()
