"""Warp a face to a canonical square crop: eyes and mouth at fixed positions in every crop."""

from __future__ import annotations

import cv2
import numpy as np

# Where the crop puts the face, as fractions of its side (x, y). The distance
# between the eye centres is 0.32 of the side and the mouth sits one eye
# distance below the eyes (the mean of dlib's 68-point faces on the demo
# clips), which leaves the brows, the chin and the cheeks inside the crop.
# "Left"/"right" are as seen in the image: the left eye is the person's right
# eye, landmarks 36-41.
TEMPLATE = {
    "left_eye": (0.34, 0.36),
    "right_eye": (0.66, 0.36),
    "mouth": (0.50, 0.68),
}


def keypoints(landmarks: np.ndarray) -> np.ndarray:
    """Left eye centre, right eye centre and mouth centre (3x2) of 68 dlib landmarks."""
    return np.stack([
        landmarks[36:42].mean(axis=0),
        landmarks[42:48].mean(axis=0),
        0.5 * (landmarks[48] + landmarks[54]),  # mouth corners
    ]).astype(np.float32)


def template(size: int) -> np.ndarray:
    """The template keypoints (3x2, same order as :func:`keypoints`) in pixels of a ``size`` crop."""
    return np.array([TEMPLATE["left_eye"], TEMPLATE["right_eye"], TEMPLATE["mouth"]], np.float32) * size


def matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) taking the face to the template.

    It is the least-squares fit of the three keypoints, with the eyes counted
    twice: the eyes then stay within a few pixels of their template positions
    while the mouth still steadies scale and roll when the eye landmarks alone
    are unreliable (eyes closing, head turned). The huge RANSAC threshold makes
    every point an inlier, so OpenCV's refinement gives the plain fit.
    """
    src, dst = keypoints(landmarks), template(size)
    weighted = [0, 1, 0, 1, 2]
    found, _ = cv2.estimateAffinePartial2D(src[weighted], dst[weighted], ransacReprojThreshold=1e9)
    if found is None:
        raise ValueError("degenerate landmarks: no similarity maps them to the template")
    return found


def transform(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``points`` (Nx2) mapped by a 2x3 affine matrix."""
    return points @ affine[:, :2].T + affine[:, 2]


def align(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` aligned crop of the face with ``landmarks`` in ``image``.

    Parts of the crop outside the frame are black.
    """
    return cv2.warpAffine(image, matrix(landmarks, size), (size, size), flags=cv2.INTER_LINEAR)


def encode(crop: np.ndarray, fmt: str = "jpg", jpeg_quality: int = 95) -> bytes:
    """The crop as JPEG or PNG file bytes (any image decoder reads them)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpg" else []
    ok, data = cv2.imencode("." + fmt, crop, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {crop.shape} crop as {fmt}")
    return data.tobytes()
