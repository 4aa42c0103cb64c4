"""Find faces in one frame: dlib HOG, dlib MMOD CNN or OpenCV's ResNet-10 SSD, and keep the central one.

Every detector takes a BGR frame and returns :class:`Detection` boxes in the
frame's own pixels, whatever size it looked at internally. Model files are
never downloaded: they come from the ``face-recognition-models`` package or
from paths in the ``faces`` config. ``faces.detector: none`` detects nothing:
each frame is taken as the face box (:class:`FullFrame`), for corpora whose
frames are already face crops (DFEW's ``clip_224x224``, FERV39k's
``2_ClipsforFaceCrop``); landmarks and alignment run as usual.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import dlib
import numpy as np

from ferseq.common.errors import ConfigError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original-frame pixels


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float


Detector = Callable[[np.ndarray], list[Detection]]
#: The values of ``faces.detector``.
DETECTORS = ("hog", "mmod", "opencv_dnn", "none")


def packaged_model(filename: str) -> Path | None:
    """A model file shipped in ``face-recognition-models``, or None if the package is not installed.

    The package is located without importing it: its ``__init__`` imports
    ``pkg_resources``, which recent setuptools no longer provide.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "models" / filename


def model_path(cfg: dict[str, Any], key: str, filename: str) -> Path:
    """The model file for ``faces.<key>``: the configured path, else the packaged copy of ``filename``."""
    configured = cfg.get(key)
    path = Path(configured) if configured else packaged_model(filename)
    if path is None:
        raise ConfigError(f"faces.{key}: no path configured and the face-recognition-models package "
                          f"(which ships {filename}) is not installed")
    if not path.is_file():
        source = "configured" if configured else "expected from face-recognition-models"
        raise ConfigError(f"faces.{key}: model file {path} ({source}) does not exist")
    return path


def central_face(detections: list[Detection], width: int, height: int) -> Detection | None:
    """The detection whose box centre is nearest the frame centre (None if there is none).

    The reference protocol keeps the central face: the recorded person faces
    the camera in the middle of the frame, anyone else is a bystander.
    """
    if not detections:
        return None

    def distance(det: Detection) -> float:
        x0, y0, x1, y1 = det.box
        return (0.5 * (x0 + x1) - 0.5 * width) ** 2 + (0.5 * (y0 + y1) - 0.5 * height) ** 2

    return min(detections, key=distance)


def _downscale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _rect_box(rect: Any, scale: float) -> Box:
    return (rect.left() / scale, rect.top() / scale, (rect.right() + 1) / scale, (rect.bottom() + 1) / scale)


class HogDetector:
    """dlib's HOG frontal-face detector on a grey frame downscaled by ``scale``.

    It finds faces of about 80 px and more in the image it scans, so at
    ``scale`` 0.5 faces from about 160 px in the original frame.
    """

    def __init__(self, scale: float, threshold: float):
        self.detector = dlib.get_frontal_face_detector()
        self.scale, self.threshold = scale, threshold

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        gray = cv2.cvtColor(_downscale(frame, self.scale), cv2.COLOR_BGR2GRAY)
        rects, scores, _ = self.detector.run(gray, 0, self.threshold)
        return [Detection(_rect_box(r, self.scale), float(s)) for r, s in zip(rects, scores)]


class MmodDetector:
    """dlib's MMOD CNN face detector (accurate, about 1 frame per second on a CPU)."""

    def __init__(self, model: Path, scale: float, threshold: float):
        self.detector = dlib.cnn_face_detection_model_v1(str(model))
        self.scale, self.threshold = scale, threshold

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        rgb = cv2.cvtColor(_downscale(frame, self.scale), cv2.COLOR_BGR2RGB)
        return [Detection(_rect_box(d.rect, self.scale), float(d.confidence))
                for d in self.detector(rgb, 0) if d.confidence >= self.threshold]


class SsdDetector:
    """OpenCV's ResNet-10 SSD face detector; it always looks at the frame resized to 300x300."""

    def __init__(self, net: Any, confidence: float):
        self.net, self.confidence = net, confidence

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        height, width = frame.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(frame, (300, 300)), 1.0, (300, 300), (104.0, 177.0, 123.0))
        self.net.setInput(blob)
        out = np.asarray(self.net.forward()).reshape(-1, 7)  # rows: image, class, confidence, x0, y0, x1, y1 (0..1)
        found = []
        for row in out[out[:, 2] >= self.confidence]:
            x0, y0, x1, y1 = np.clip(row[3:7], 0.0, 1.0) * (width, height, width, height)
            if x1 > x0 and y1 > y0:
                found.append(Detection((float(x0), float(y0), float(x1), float(y1)), float(row[2])))
        return found


class FullFrame:
    """The frame is the face: one box over the whole frame, score 1, for pre-cropped corpora.

    A face detector looks for a face inside some context; on a tight crop the
    face fills the frame and HOG misses some although every frame shows the
    face (on 224 x 224 face crops of the demo clips it kept 586 of 616 frames:
    benchmarks/precropped_faces.py).

    A blank frame (a fade to black, an empty image: FER2013 has 13, all one grey level or nearly) has no face:
    the standard deviation of each of its colour channels is under ``BLANK_STD`` levels.
    """

    BLANK_STD = 2.0

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        height, width = frame.shape[:2]
        if float(cv2.meanStdDev(frame)[1].max()) < self.BLANK_STD:  # OpenCV's: 15x faster than numpy's std
            return []
        return [Detection((0.0, 0.0, float(width), float(height)), 1.0)]


def _ssd_net(cfg: dict[str, Any]) -> Any:
    if not cfg.get("dnn_model") or not cfg.get("dnn_prototxt"):
        raise ConfigError("faces.detector opencv_dnn needs both faces.dnn_model (res10_300x300_ssd_iter_140000.caffemodel) "
                          "and faces.dnn_prototxt (deploy.prototxt); nothing is downloaded")
    model = model_path(cfg, "dnn_model", "")
    prototxt = model_path(cfg, "dnn_prototxt", "")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise ConfigError(f"faces.detector opencv_dnn: OpenCV {cv2.__version__} has no Caffe importer (OpenCV 5 removed it); "
                          "install opencv-python-headless<5 or use detector hog or mmod")
    try:
        return cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    except cv2.error as err:
        raise ConfigError(f"faces.dnn_model/faces.dnn_prototxt: OpenCV cannot read {model} with {prototxt}: {err}") from None


@functools.cache
def _hog(scale: float, threshold: float) -> HogDetector:
    return HogDetector(scale, threshold)


@functools.cache
def _mmod(model: Path, scale: float, threshold: float) -> MmodDetector:
    return MmodDetector(model, scale, threshold)


@functools.cache
def _ssd(dnn_model: str | None, dnn_prototxt: str | None, confidence: float) -> SsdDetector:
    # Cached like the dlib models: a faces job walks many videos, and reading the net takes about 50 ms.
    return SsdDetector(_ssd_net({"dnn_model": dnn_model, "dnn_prototxt": dnn_prototxt}), confidence)


def make_detector(cfg: dict[str, Any]) -> Detector:
    """The detector named by ``cfg["detector"]`` (models are loaded once per process)."""
    name = cfg.get("detector", "hog")
    scale = float(cfg.get("detect_scale", 0.5))
    threshold = float(cfg.get("dlib_threshold", 0.0))
    if name == "hog":
        return _hog(scale, threshold)
    if name == "mmod":
        return _mmod(model_path(cfg, "mmod_model", "mmod_human_face_detector.dat"), scale, threshold)
    if name == "opencv_dnn":
        return _ssd(cfg.get("dnn_model"), cfg.get("dnn_prototxt"), float(cfg.get("confidence", 0.5)))
    if name == "none":
        return FullFrame()
    raise ConfigError(f"faces.detector: {name!r} is not one of {', '.join(DETECTORS)}")
