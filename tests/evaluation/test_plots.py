"""The evaluation's figures show their numbers: decoded, at the size their inputs give, with the marks where the
values put them (not only a file that starts like a PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferseq.evaluation import plots

DPI = 110  # plots._save's


def image(path: Path) -> np.ndarray:
    """The PNG as RGB 0-255 ints (H, W, 3)."""
    import matplotlib.image

    return (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)


def centre(picture: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> tuple[float, float, int]:
    """(x, y, pixels) of the pixels of ``colour``: their mean column and row, and how many there are."""
    ys, xs = np.nonzero((np.abs(picture - np.array(colour)) <= tolerance).all(axis=2))
    return (float(xs.mean()) if len(xs) else np.nan), (float(ys.mean()) if len(ys) else np.nan), len(xs)


def test_a_confusion_matrix_puts_each_count_in_its_true_row_and_predicted_column(tmp_path):
    import matplotlib

    darkest = tuple(int(round(255 * v)) for v in matplotlib.colormaps["Blues"](1.0)[:3])
    classes = ["neutral", "happy", "sad"]
    centres = {}
    for name, (true, predicted) in {"0 as 0": (0, 0), "0 as 2": (0, 2), "2 as 0": (2, 0)}.items():
        matrix = np.zeros((3, 3), np.int64)
        matrix[true, predicted] = 5
        plots.plot_confusion({"segment": matrix}, classes, name, tmp_path / f"{name}.png")
        picture = image(tmp_path / f"{name}.png")
        assert picture.shape == (round((1.5 + 0.8 * 3) * DPI), round((4 + 1.6 * 3) * DPI), 3)
        counts = picture[:, :picture.shape[1] // 2]  # the left panel: counts
        centres[name] = centre(counts, darkest)
        assert centres[name][2] > 200, name  # one dark cell of the counts panel
        assert centre(picture[:, picture.shape[1] // 2:], darkest)[2] > 200, name  # and of the row-normalised one
    # The predicted class runs along x, the true class down y.
    (x00, y00, _), (x02, y02, _), (x20, y20, _) = centres["0 as 0"], centres["0 as 2"], centres["2 as 0"]
    assert x02 > x00 + 60 and abs(y02 - y00) < 5
    assert y20 > y00 + 40 and abs(x20 - x00) < 5
    # Two levels: one row of panels each.
    plots.plot_confusion({"window": np.eye(3, dtype=np.int64), "segment": np.eye(3, dtype=np.int64)}, classes, "two",
                         tmp_path / "two.png")
    assert image(tmp_path / "two.png").shape[0] == round((1.5 + 0.8 * 3) * 2 * DPI)


def test_per_person_dots_sit_at_each_persons_score(tmp_path):
    people = pd.DataFrame({"person": [f"p{i}" for i in range(8)], "a_segment_uar": [10.0] * 8,
                           "b_segment_uar": [90.0] * 8})
    scores = pd.DataFrame([{"method": m, "level": "segment", "metric": "uar", "value": v, "ci_low": v - 5,
                            "ci_high": v + 5} for m, v in (("a", 10.0), ("b", 90.0))])
    out = tmp_path / "pp.png"
    plots.plot_per_person(people, scores, {"a": "method A", "b": "method B"}, "person", out)
    picture = image(out)
    assert picture.shape == (round((1.2 + 0.55 * 2) * DPI), 8 * DPI, 3)
    dots = (np.abs(picture - np.array([121, 173, 210])) <= 40).all(axis=2)  # tab:blue at alpha 0.6, overlapping
    ys, xs = np.nonzero(dots)
    upper, lower = xs[ys < np.median(ys)], xs[ys >= np.median(ys)]  # method A's row above method B's
    assert len(upper) > 30 and len(lower) > 30
    # 80 points apart on an x axis of 106 points that spans most of the 880 px width.
    assert lower.mean() - upper.mean() > 400 and upper.max() < lower.min()


def test_a_difference_is_drawn_on_its_side_of_zero(tmp_path):
    def draw(value: float, name: str) -> np.ndarray:
        rows = pd.DataFrame([
            {"name": "x vs y", "level": "window", "metric": "uar", "value": value, "ci_low": value - 10,
             "ci_high": value + 10, "p_value": 0.01},
            {"name": "x vs y", "level": "segment", "metric": "uar", "value": 0.5 * value, "ci_low": 0.5 * value - 10,
             "ci_high": 0.5 * value + 10, "p_value": 0.2},
            {"name": "x vs z", "level": "segment", "metric": "war", "value": 50.0, "ci_low": 40.0, "ci_high": 60.0,
             "p_value": 0.5}])  # another metric: not drawn
        plots.plot_differences(rows, tmp_path / name)
        picture = image(tmp_path / name)
        assert picture.shape == (round((1.2 + 0.7 * 1) * DPI), 10 * DPI, 3)  # one name on the y axis
        return picture

    for value in (30.0, -30.0):
        picture = draw(value, f"{value}.png")
        dashed = (np.abs(picture - 127) <= 40).all(axis=2).sum(axis=0)  # the grey dashed line at zero
        zero = int(dashed.argmax())
        assert dashed[zero] > 40
        # The window-level difference is orange (so is its legend entry: the median is the interval's).
        xs = np.nonzero((np.abs(picture - np.array([255, 127, 14])) <= 30).all(axis=2))[1]
        assert len(xs) > 100
        x = np.median(xs)
        assert x > zero + 100 if value > 0 else x < zero - 100, (value, x, zero)


def test_the_interval_labels_say_the_configured_confidence(tmp_path, monkeypatch):
    labels = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: labels.append(fig.axes[0].get_xlabel()))
    people = pd.DataFrame({"person": ["p0", "p1"], "a_segment_uar": [10.0, 20.0]})
    scores = pd.DataFrame([{"method": "a", "level": "segment", "metric": "uar", "value": 15.0, "ci_low": 10.0,
                            "ci_high": 20.0}])
    rows = pd.DataFrame([{"name": "a vs b", "level": "segment", "metric": "uar", "value": 5.0, "ci_low": 1.0,
                          "ci_high": 9.0, "p_value": 0.04}])
    for confidence in (0.9, 0.975):
        plots.plot_per_person(people, scores, {"a": "method A"}, "person", tmp_path / "pp.png", confidence)
        plots.plot_differences(rows, tmp_path / "d.png", confidence=confidence)
    assert labels == [
        "segment-level UAR per test person (%); black: all pooled, with 90% interval",
        "difference in UAR (percentage points), 90% interval",
        "segment-level UAR per test person (%); black: all pooled, with 97.5% interval",
        "difference in UAR (percentage points), 97.5% interval"]
