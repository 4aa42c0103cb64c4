"""The evaluation's figures: confusion matrices, per-person scores, and the paired differences (forest plot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferseq.common.outputs import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path, dpi: int = 110) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _pyplot().close(fig)


def plot_confusion(counts: dict[str, np.ndarray], classes: list[str], title: str, out_png: str | Path) -> None:
    """Confusion matrices (``level -> (C, C)`` counts), one row per level: counts and row-normalised, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(counts), 2, figsize=(4 + 1.6 * len(classes), (1.5 + 0.8 * len(classes)) * len(counts)),
                             squeeze=False)
    for row, (level, matrix) in zip(axes, counts.items()):
        sums = matrix.sum(axis=1, keepdims=True)
        normalised = np.divide(matrix, sums, out=np.zeros_like(matrix, dtype=float), where=sums > 0)
        for ax, data, name, fmt in ((row[0], matrix, "counts", "d"), (row[1], normalised, "row-normalised", ".2f")):
            top = max(data.max(), 1e-9)
            ax.imshow(data, cmap="Blues", vmin=0, vmax=top)
            ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
                   xlabel="predicted", ylabel="true", title=f"{level}s ({int(matrix.sum())}): {name}")
            ax.tick_params(axis="x", rotation=45)
            for (i, j), value in np.ndenumerate(data):
                ax.text(j, i, format(value, fmt), ha="center", va="center", color="white" if value > 0.6 * top else "black")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out_png)


def _level(confidence: float) -> str:
    """An interval's coverage as its label says it: 0.95 -> "95%", 0.975 -> "97.5%"."""
    return f"{100 * confidence:g}%"


def plot_per_person(per_person: pd.DataFrame, scores: pd.DataFrame, names: dict[str, str], unit_noun: str,
                    out_png: str | Path, confidence: float = 0.95) -> None:
    """Each test unit's segment-level UAR per method as dots, with the pooled UAR and its interval (of
    ``confidence``, as the scores' intervals were computed)."""
    plt = _pyplot()
    methods = list(names)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(methods)))
    rng = np.random.default_rng(0)  # jitter only, so that dots of equal scores stay visible
    for row, method in enumerate(methods):
        values = per_person[f"{method}_segment_uar"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        ax.scatter(values, row + rng.uniform(-0.18, 0.18, len(values)), s=14, alpha=0.6, color="tab:blue", lw=0)
        pooled = scores[(scores["method"] == method) & (scores["level"] == "segment") & (scores["metric"] == "uar")]
        if len(pooled):
            value, low, high = pooled.iloc[0][["value", "ci_low", "ci_high"]].to_numpy(dtype=float)
            ax.errorbar(value, row, xerr=[[value - low], [high - value]] if np.isfinite(low) else None, fmt="D",
                        color="black", ms=6, capsize=4, zorder=3)
    ax.set(yticks=range(len(methods)), yticklabels=[names[m] for m in methods], xlim=(-3, 103),
           xlabel=f"segment-level UAR per test {unit_noun} (%); black: all pooled, with {_level(confidence)} interval")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, out_png)


def plot_differences(differences: pd.DataFrame, out_png: str | Path, metric: str = "uar",
                     confidence: float = 0.95) -> None:
    """Forest plot: each paired difference of ``metric`` with its interval (of ``confidence``) and p-value, at
    segment level and at the methods' own levels."""
    plt = _pyplot()
    rows = differences[differences["metric"] == metric]
    names = list(dict.fromkeys(rows["name"]))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.7 * len(names)))
    styles = {True: ("black", -0.14, "segment"), False: ("tab:orange", 0.14, "own levels (windows, frames)")}
    labelled = set()
    for _, r in rows.iterrows():
        colour, offset, label = styles[r["level"] == "segment"]
        y = names.index(r["name"]) + offset
        err = [[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]] if np.isfinite(r["ci_low"]) else None
        ax.errorbar(r["value"], y, xerr=err, fmt="o", color=colour, capsize=3,
                    label=None if label in labelled else label)
        labelled.add(label)
        if np.isfinite(r["p_value"]):
            right = r["ci_high"] if np.isfinite(r["ci_high"]) else r["value"]
            ax.annotate(f"p={r['p_value']:.2g}", (right, y), xytext=(5, -3), textcoords="offset points", fontsize=7,
                        color=colour)
    ax.axvline(0, color="0.5", lw=1, ls="--")
    low, high = np.nanmin(rows[["ci_low", "value"]].to_numpy(float)), np.nanmax(rows[["ci_high", "value"]].to_numpy(float))
    span = max(high - low, 1.0)
    ax.set_xlim(min(low, 0) - 0.05 * span, max(high, 0) + 0.2 * span)  # room for the p-values
    label = {"uar": "UAR", "war": "WAR", "macro_f1": "macro F1"}[metric]
    ax.set(yticks=range(len(names)), yticklabels=names,
           xlabel=f"difference in {label} (percentage points), {_level(confidence)} interval")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, out_png)
