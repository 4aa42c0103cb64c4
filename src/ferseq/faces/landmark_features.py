"""The 68 dlib landmarks of a face as a pose-normalised shape: one function for every stage that reads them.

Translation, scale and in-plane rotation are removed with the eyes, as the
aligned crop does: the origin is the midpoint of the two eye centres, the
x axis runs from the left eye centre to the right one (as seen in the image),
and the unit is the distance between them. What is left is the shape of the
face (brows, eyelids, mouth, jaw), which is what an expression changes.
"""

from __future__ import annotations

import numpy as np

POINTS = 68
WIDTH = 2 * POINTS  # x0, y0, x1, y1, ... as in the faces Parquet files


def normalise(landmarks: np.ndarray) -> np.ndarray:
    """Pose-normalised landmarks, float32 (N, 136), of raw landmarks (N, 136) or (N, 68, 2) in frame pixels.

    The same face moved, scaled or rotated in the image plane gives the same output.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, POINTS, 2)
    left = points[:, 36:42].mean(axis=1)  # eye centres, as in alignment.keypoints
    right = points[:, 42:48].mean(axis=1)
    centre = (left + right) / 2
    axis = right - left
    distance = np.linalg.norm(axis, axis=1, keepdims=True)
    if (distance <= 0).any():
        raise ValueError("landmarks with both eye centres at one point cannot be normalised")
    cos, sin = (axis / distance).T
    # Rotate by minus the eye-line angle: [[cos, sin], [-sin, cos]] applied to each centred point.
    shifted = points - centre[:, None, :]
    x = (cos[:, None] * shifted[..., 0] + sin[:, None] * shifted[..., 1]) / distance
    y = (-sin[:, None] * shifted[..., 0] + cos[:, None] * shifted[..., 1]) / distance
    return np.stack([x, y], axis=2).reshape(-1, WIDTH).astype(np.float32)
