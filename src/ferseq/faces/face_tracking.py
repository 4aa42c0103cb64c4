"""dlib's 68 facial landmarks, and following one face through a video with them.

Detection is the expensive step (dlib HOG: about 2.5 ms on a 320x180 frame,
the landmarks alone about 0.5-1.5 ms), so :class:`FaceTracker` runs the detector
only now and then and, in between, places the landmark predictor where the
face was in the previous frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np

from ferseq.faces import alignment
from ferseq.faces.detection import Box, Detector, central_face

# A tracked face is accepted only if, against the previous frame, its landmarks
# changed size by less than this factor either way ...
MAX_SCALE_CHANGE = 1.25
# ... their centre moved less than this fraction of the face width ...
MAX_SHIFT = 0.25
# ... and its aligned grey patch still correlates with the face at the last
# detection at least this much. On the demo clips a changing expression, a hand
# at the mouth or a turned head stay above 0.7; a cut to a scene without a face
# falls to 0.3 or less, while the landmark geometry alone looks plausible there.
MIN_SIMILARITY = 0.5
PATCH_SIZE = 32


@dataclass(frozen=True)
class Face:
    box: Box  # original-frame pixels
    score: float  # detector score: of this frame, or of the detection a tracked face was followed from
    landmarks: np.ndarray  # 68x2 float32, original-frame pixels
    tracked: bool  # True when followed from the previous frame rather than detected in this one


class LandmarkModel:
    """dlib's 68-point shape predictor (shape_predictor_68_face_landmarks.dat)."""

    def __init__(self, path: str | Path):
        self.predictor = dlib.shape_predictor(str(path))

    def __call__(self, gray: np.ndarray, box: Box) -> np.ndarray:
        """The 68 landmarks (68x2 float32) of the face in ``box`` of a grey image."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(gray, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


@functools.cache
def load_landmark_model(path: Path) -> LandmarkModel:
    """Load once per process (the file is 100 MB)."""
    return LandmarkModel(path)


def landmarks_box(landmarks: np.ndarray) -> Box:
    """The box dlib's HOG detector draws around a face with these landmarks.

    The predictor was trained on such boxes. Measured on the demo clips: a
    square 1.1 times as wide as the landmarks, centred 0.08 of their width
    above their centre.
    """
    (x0, y0), (x1, y1) = landmarks.min(axis=0), landmarks.max(axis=0)
    width = float(x1 - x0)
    cx, cy, half = 0.5 * float(x0 + x1), 0.5 * float(y0 + y1) - 0.08 * width, 0.55 * width
    return (cx - half, cy - half, cx + half, cy + half)


def appearance(gray: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A small aligned grey patch of the face, zero mean and unit norm: its dot product is a correlation."""
    patch = cv2.warpAffine(gray, alignment.matrix(landmarks, PATCH_SIZE), (PATCH_SIZE, PATCH_SIZE)).astype(np.float32)
    patch -= patch.mean()
    return patch / max(float(np.linalg.norm(patch)), 1e-6)


def plausible_move(previous: np.ndarray, current: np.ndarray) -> bool:
    """Whether landmarks could have moved from ``previous`` to ``current`` in one frame."""
    width_before = max(float(np.ptp(previous[:, 0])), 1.0)
    scale = float(np.ptp(current[:, 0])) / width_before
    shift = float(np.linalg.norm(current.mean(axis=0) - previous.mean(axis=0))) / width_before
    return 1 / MAX_SCALE_CHANGE <= scale <= MAX_SCALE_CHANGE and shift <= MAX_SHIFT


class FaceTracker:
    """The face of each frame of a video, in frame order: detect now and then, follow by landmarks in between.

    A full detection (central face, then landmarks in its box) runs on the first
    frame, after a gap in frame numbers, on every frame while no face is
    followed (faces leave and come back), and at least every ``detect_every``
    frames. On those frames the detector decides. In between, the predictor
    runs in the box derived from the previous frame's landmarks; if its result
    is not plausible (:func:`plausible_move`, :data:`MIN_SIMILARITY`) tracking
    is lost and the same frame gets a full detection.
    """

    def __init__(self, detector: Detector, landmarks: LandmarkModel, detect_every: int = 10):
        self.detector, self.landmarks, self.detect_every = detector, landmarks, detect_every
        self.face: Face | None = None  # the face of the last frame
        self.last_index: int | None = None
        self.age = 0  # frames since the last detection, that one included
        self.reference: np.ndarray | None = None  # appearance at the last detection
        self.detections = 0  # full detections run so far

    def update(self, frame: np.ndarray, index: int) -> Face | None:
        """The face in ``frame`` (BGR, frame number ``index``), or None."""
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        follows = self.face is not None and index == self.last_index + 1 and self.age < self.detect_every
        self.last_index = index
        face = self._track(gray) if follows else None
        self.face = face if face is not None else self._detect(frame, gray)
        return self.face

    def _track(self, gray: np.ndarray) -> Face | None:
        previous = self.face.landmarks
        current = self.landmarks(gray, landmarks_box(previous))
        if not plausible_move(previous, current):
            return None
        if float(np.sum(appearance(gray, current) * self.reference)) < MIN_SIMILARITY:
            return None
        self.age += 1
        return Face(landmarks_box(current), self.face.score, current, tracked=True)

    def _detect(self, frame: np.ndarray, gray: np.ndarray) -> Face | None:
        self.detections += 1
        found = central_face(self.detector(frame), gray.shape[1], gray.shape[0])
        if found is None:
            return None
        points = self.landmarks(gray, found.box)
        self.reference, self.age = appearance(gray, points), 1
        return Face(found.box, found.score, points, tracked=False)
