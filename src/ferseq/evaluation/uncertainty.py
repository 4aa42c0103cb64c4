"""How sure a score or a difference is: a paired bootstrap over test units and a sign-flip permutation test.

Items of one person (frames, windows, segments, videos) are not independent
draws: a person's expressions, face and recording conditions are shared by all
of them. So the unit of resampling is the person whenever the data names
people (the summary chooses it, :mod:`ferseq.evaluation.summary`), and every
method is scored on the same resampled units (paired): the interval of a
difference is that of the difference, not two intervals side by side.

Both the interval and the p-value of a difference are about one statistic: the
difference of the *pooled* scores (UAR, WAR or macro F1 of all test items of
the two methods), computed from per-unit confusion matrices:

- :func:`resample_counts`: how often each unit is drawn in each resample
  (drawn with replacement, as many units as there are).
- :func:`bootstrap_scores`: each resample's scores, from per-unit confusion
  matrices (2,000 resamples of 10,000 units are a few matrix products).
- :func:`interval`: the percentile interval.
- :func:`sign_flip`: the two-sided p-value of the pooled difference. Under the
  null hypothesis the two methods' outputs are exchangeable within each unit;
  a sign pattern exchanges the two methods' confusion matrices of the flipped
  units and the pooled difference is computed again. Exact over all patterns
  of the units whose two matrices differ (the others make no distinct
  pattern) when they are at most :data:`EXACT_UNITS`, else from
  :data:`PERMUTATIONS` seeded random patterns with the add-one estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ferseq.evaluation import metrics

#: Up to this many units whose two matrices differ the sign-flip test enumerates all 2**n sign patterns.
EXACT_UNITS = 16
PERMUTATIONS = 10_000
#: Sign patterns per block of the random branch: bounds its memory (a block of int8 signs and its float copy).
CHUNK = 1024
#: Values within this relative distance of the observed one count as "as extreme" (round-off; as scipy's
#: permutation_test does it).
RELATIVE_TIE = 100 * np.finfo(np.float64).eps


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
    unit_margins = metrics.margins(unit_confusion).reshape(n_units, 3 * c)
    pooled = np.asarray(counts, dtype=np.float64) @ unit_margins
    return metrics.margin_scores(pooled.reshape(-1, 3, c))


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` (resamples without items, NaN, left out)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return np.nan, np.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class SignFlip:
    """A sign-flip test of one pooled difference.

    ``p``: two-sided p-value; ``smallest_p``: the smallest p-value the test can
    give on these units (exact: the share of patterns as extreme as the most
    extreme one, at least 2 / 2**units; random: 1 / (patterns + 1));
    ``units``: units whose two confusion matrices differ (only they make
    distinct patterns); ``exact``: all 2**units patterns enumerated;
    ``patterns``: how many patterns were evaluated.
    """

    p: float
    smallest_p: float
    units: int
    exact: bool
    patterns: int


def comparable(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit confusion matrices of two methods scaled to the same total weight, as float64.

    Methods scored at different levels (windows against frames) count
    different items: each window of ``L`` frames is ``L`` frame items. Scaling
    leaves each method's pooled scores unchanged (UAR, WAR and F1 are ratios)
    and makes a unit's two matrices weigh the same when they are exchanged.
    Integer factors (``b_total / g`` and ``a_total / g``, ``g`` their greatest
    common divisor) keep the counts exact.
    """
    a, b = np.asarray(a), np.asarray(b)
    na, nb = int(a.sum()), int(b.sum())
    if na == nb or na == 0 or nb == 0:
        return a.astype(np.float64), b.astype(np.float64)
    g = math.gcd(na, nb)
    return a * float(nb // g), b * float(na // g)


def _random_signs(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``(rows, n)`` int8 signs (+1 keep, -1 exchange): bit ``j`` (least significant first) of the little-endian
    64-bit words ``rng.bit_generator.random_raw`` gives, ``ceil(n / 64)`` words a pattern, is unit ``j``'s flip.
    The raw stream makes block boundaries irrelevant: the patterns are those of one long draw."""
    words = -(-n // 64)
    raw = rng.bit_generator.random_raw(rows * words).astype("<u8").view(np.uint8).reshape(rows, words * 8)
    flips = np.unpackbits(raw, axis=1, bitorder="little")[:, :n]
    return (1 - 2 * flips.astype(np.int8)).astype(np.int8)


def random_signs(seed: int, n: int, patterns: int = PERMUTATIONS) -> np.ndarray:
    """All random sign patterns the test uses for ``n`` differing units and ``seed`` (``(patterns, n)`` int8), at
    once: what :func:`sign_flip` streams in blocks."""
    return _random_signs(np.random.default_rng([seed, n]), patterns, n)


def _differences(half_sum: np.ndarray, half_diff: np.ndarray, signs: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled ``a - b`` of each sign pattern: a's pooled margins are ``half_sum + signs @ half_diff``, b's the
    same minus (a unit with sign -1 gives a its b matrix and b its a matrix)."""
    shift = signs.astype(np.float64) @ half_diff
    shape = (-1, 3, half_sum.shape[0] // 3)
    a = metrics.margin_scores((half_sum + shift).reshape(shape))
    b = metrics.margin_scores((half_sum - shift).reshape(shape))
    return {k: a[k] - b[k] for k in a}


def sign_flip(a: np.ndarray, b: np.ndarray, seed: int,
              permutations: int = PERMUTATIONS) -> dict[str, SignFlip]:
    """Two-sided sign-flip p-values of the pooled difference ``score(sum a) - score(sum b)`` of each metric.

    ``a``, ``b``: per-unit confusion matrices ``(U, C, C)`` of the two methods
    (units in the same order; scaled by :func:`comparable` when their totals
    differ). p is the share of sign patterns whose ``|difference|`` is at
    least the observed one: exact over all ``2**n`` patterns of the ``n``
    units whose matrices differ when ``n <= EXACT_UNITS``, else ``(1 + k) /
    (1 + permutations)`` with ``k`` of ``permutations`` random patterns
    (:func:`random_signs`, streamed in blocks of :data:`CHUNK`) as extreme.
    No difference at all, or no item, gives p = 1 (NaN without items).
    """
    a, b = comparable(a, b)
    n_units, c, _ = a.shape
    ma, mb = metrics.margins(a).reshape(n_units, 3 * c), metrics.margins(b).reshape(n_units, 3 * c)
    differ = np.any(a.reshape(n_units, -1) != b.reshape(n_units, -1), axis=1)
    half_sum = (ma.sum(axis=0) + mb.sum(axis=0)) / 2
    half_diff = (ma[differ] - mb[differ]) / 2
    n = int(differ.sum())
    observed = _differences(half_sum, half_diff, np.ones((1, n), np.int8))
    if n <= EXACT_UNITS:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
        values = _differences(half_sum, half_diff, (1 - 2 * bits).astype(np.int8))
        out = {}
        for metric, value in values.items():
            t = float(observed[metric][0])
            if not np.isfinite(t):
                out[metric] = SignFlip(np.nan, np.nan, n, True, 2 ** n)
                continue
            extreme = np.abs(value)
            top = np.nanmax(extreme)
            p = np.mean(extreme >= abs(t) - RELATIVE_TIE * abs(t))
            smallest = np.mean(extreme >= top - RELATIVE_TIE * top)
            out[metric] = SignFlip(float(p), float(smallest), n, True, 2 ** n)
        return out
    rng = np.random.default_rng([seed, n])
    counts = {metric: 0 for metric in observed}
    done = 0
    while done < permutations:
        rows = min(CHUNK, permutations - done)
        values = _differences(half_sum, half_diff, _random_signs(rng, rows, n))
        for metric, value in values.items():
            t = abs(float(observed[metric][0]))
            counts[metric] += int(np.sum(np.abs(value) >= t - RELATIVE_TIE * t))
        done += rows
    out = {}
    for metric, k in counts.items():
        finite = np.isfinite(observed[metric][0])
        out[metric] = SignFlip(float((1 + k) / (1 + permutations)) if finite else np.nan,
                               1 / (1 + permutations) if finite else np.nan, n, False, permutations)
    return out
