"""How sure a score or a difference is: a paired bootstrap over test people and a sign-flip permutation test.

Items of one person (frames, windows, segments) are not independent draws: a
person's expressions, face and recording conditions are shared by all of them.
So the unit of resampling is the split's unit, the person unless ``split.unit``
says otherwise, and every method is scored on the same resampled people
(paired): the interval of a difference is that of the difference, not two
intervals side by side.

- :func:`resample_counts`: how often each unit is drawn in each resample
  (drawn with replacement, as many units as there are).
- :func:`bootstrap_scores`: each resample's scores, from per-unit confusion
  matrices (so 2,000 resamples of 500 people are a few matrix products).
- :func:`interval`: the percentile interval.
- :func:`sign_flip_p`: the p-value of the mean per-unit difference between two
  methods, by flipping the sign of each unit's difference (exchanging the two
  methods' predictions for that person): exact over all sign patterns for up
  to :data:`EXACT_UNITS` units, else from random patterns.
"""

from __future__ import annotations

import numpy as np

from ferseq.evaluation import metrics

#: Up to this many units the sign-flip test enumerates all 2**n sign patterns.
EXACT_UNITS = 16
PERMUTATIONS = 10_000


def resample_counts(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n_units)``: how many times each unit is drawn in each bootstrap resample."""
    rng = np.random.default_rng([seed, n_units, resamples])
    if n_units == 0:
        return np.zeros((resamples, 0), np.int64)
    return rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=resamples)


def bootstrap_scores(unit_confusion: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Scores (:func:`ferseq.evaluation.metrics.scores`) of each resample: ``counts`` (B, U) weights of per-unit
    confusion matrices ``(U, C, C)``."""
    n_units, c, _ = unit_confusion.shape
    pooled = counts.astype(np.float64) @ unit_confusion.reshape(n_units, c * c).astype(np.float64)
    return metrics.scores(pooled.reshape(-1, c, c))


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (resamples without items, NaN, left out)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return np.nan, np.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def sign_flip_p(differences: np.ndarray, seed: int, permutations: int = PERMUTATIONS) -> float:
    """Two-sided p-value of the mean of per-unit ``differences`` under random sign flips.

    Units whose difference is undefined (NaN) are left out. Identical methods
    (all differences 0) give p = 1; with n units no p is below 2 / 2**n.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return np.nan
    observed = abs(d.mean())
    # Round-off: a sign pattern whose mean equals the observed one must count as "as extreme".
    tolerance = 1e-12 * max(1.0, np.abs(d).max())
    if len(d) <= EXACT_UNITS:
        patterns = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))[None, :]) & 1)
        return float(np.mean(np.abs(patterns @ d) / len(d) >= observed - tolerance))
    rng = np.random.default_rng([seed, len(d)])
    signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, len(d)))
    extreme = np.sum(np.abs(signs @ d) / len(d) >= observed - tolerance)
    return float((1 + extreme) / (1 + permutations))
