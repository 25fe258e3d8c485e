"""Resampling statistics over per-example results: bootstrap CIs and paired tests.

Why this shape: every metric the benchmark reports (accuracy, macro-F1, micro-F1,
SQuAD EM/F1) is a smooth function of *sums over test examples* of per-example
feature vectors: accuracy = Σcorrect / Σ1, macro-F1 = g(Σ per-class tp, Σ gold,
Σ predicted), micro-F1 = g(Σtp, Σfp, Σfn). Writing a metric as
``finish(Σ_i features(row_i))`` makes both resampling schemes one matrix product:

* bootstrap: a resample is a vector of example multiplicities ``w`` (B, n), and the
  resampled sums are ``w @ F`` (B, k); no per-resample Python loop and no copying rows;
* approximate randomisation: a swap mask ``m`` mixes two systems' features,
  ``m @ F_a + (1 - m) @ F_b``, which is again a product.

Several seeds of one configuration are evaluated on the *same* test examples, so a
bootstrap resample draws example indices once and applies them to every seed; the
statistic of a resample is the mean of the seeds' statistics (see :data:`METHOD`).
Comparisons against ``head`` reuse the very same resamples, which pairs them.

The simple API (:func:`bootstrap_ci`, :func:`paired_bootstrap`,
:func:`approximate_randomization`) takes per-example score vectors, shape (n,) or
(seeds, n); :func:`statistic_for` picks the statistic of a task's main metric from its
sidecar rows (label/pred for macro-F1, ``correct`` for accuracy, a per-example field
named like the metric, or tp/fp/fn counts).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

_NORMAL = NormalDist()
Rows = Sequence[Mapping[str, Any]]

N_BOOT = 1000
ALPHA = 0.05

METHOD = (
    "95% CIs are BCa bootstrap intervals over test examples ({n_boot} resamples, seeded). "
    "All seeds of a cell were scored on the same test examples, so each resample draws example indices once, "
    "applies them to every seed, recomputes the metric per seed (macro-F1 is recomputed from the resampled "
    "label/prediction pairs, not averaged) and averages over seeds; the interval is taken over those seed means "
    "(bias-corrected and accelerated, with a leave-one-example-out jackknife). "
    "It measures test-sample uncertainty of the seed-averaged score; seed-to-seed spread is the `metric_std` "
    "column of the CSV. A strategy is compared with `head` at the same budget by a two-sided paired bootstrap "
    "on the same resamples: the BCa interval of the difference, and p = the smallest alpha whose interval "
    "excludes 0, so ≈ (p ≥ {alpha}, not significant) marks the cells whose 95% interval of the difference "
    "contains 0. "
    "No correction for multiple comparisons."
)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Statistic:
    """A metric written as ``finish(Σ_i features(row_i))``.

    ``featurize`` maps several aligned runs (same examples, same order) to one array
    (runs, n, k) with a shared feature layout, e.g. one label vocabulary, so that
    features of two systems can be mixed by a randomisation test.
    ``finish`` maps summed features (..., k) to the metric (...), NaN where undefined.
    """

    name: str
    fields: tuple[str, ...]
    featurize: Callable[[Sequence[Rows]], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray]

    def features(self, runs: Sequence[Rows]) -> np.ndarray:
        return self.featurize(runs)

    def value(self, features: np.ndarray) -> float:
        """The metric on the unresampled examples of one run, features (n, k)."""
        return float(self.finish(features.sum(0)))


def _ratio(t: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return t[..., 0] / t[..., 1]


def mean_of(field: str) -> Statistic:
    """The mean of a per-example number (``correct``, a per-example F1, a loss)."""

    def featurize(runs: Sequence[Rows]) -> np.ndarray:
        x = np.array([[float(r[field]) for r in rows] for rows in runs], dtype=float).reshape(len(runs), -1)
        return np.stack([x, np.ones_like(x)], axis=-1)  # (R, n, 2)

    return Statistic(f"mean({field})", (field,), featurize, _ratio)


def scores_statistic() -> Statistic:
    """The mean of raw score vectors; used by the score-vector API below."""
    return mean_of("score")


def macro_f1(label: str = "label", pred: str = "pred") -> Statistic:
    """Macro-F1 as sklearn computes it (``average="macro", zero_division=0``): the
    unweighted mean F1 over the classes present as gold *or* predicted in the sample,
    which in a resample is recomputed from that resample's counts."""

    def featurize(runs: Sequence[Rows]) -> np.ndarray:
        vocab = sorted({str(r[f]) for rows in runs for r in rows for f in (label, pred)})
        index = {v: j for j, v in enumerate(vocab)}
        c = len(vocab)
        out = []
        for rows in runs:
            y = np.array([index[str(r[label])] for r in rows], dtype=int)
            p = np.array([index[str(r[pred])] for r in rows], dtype=int)
            gold = np.eye(c)[y] if len(y) else np.zeros((0, c))  # (n, C)
            predicted = np.eye(c)[p] if len(p) else np.zeros((0, c))  # (n, C)
            out.append(np.concatenate([gold * predicted, gold, predicted], axis=1))  # (n, 3C): tp | gold | pred
        return np.stack(out) if out else np.zeros((0, 0, 3 * c))

    def finish(t: np.ndarray) -> np.ndarray:
        tp, gold, predicted = np.split(t, 3, axis=-1)  # (..., C) each
        support = gold + predicted
        present = support > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(present, 2 * tp / np.where(present, support, 1), 0.0)
            return f1.sum(-1) / present.sum(-1)

    return Statistic("macro_f1", (label, pred), featurize, finish)


def micro_f1(tp: str = "tp", fp: str = "fp", fn: str = "fn") -> Statistic:
    """Micro-F1 from per-example counts (entity-level NER): 2Σtp / (2Σtp + Σfp + Σfn)."""

    def featurize(runs: Sequence[Rows]) -> np.ndarray:
        return np.array([[[float(r[tp]), float(r[fp]), float(r[fn])] for r in rows] for rows in runs],
                        dtype=float).reshape(len(runs), -1, 3)

    def finish(t: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2 * t[..., 0] / (2 * t[..., 0] + t[..., 1] + t[..., 2])

    return Statistic("micro_f1", (tp, fp, fn), featurize, finish)


# (task or None for any task, metric name) -> factory. Tasks whose metric name clashes with a
# per-example field of another meaning register themselves here (see statistic_for).
_REGISTRY: dict[tuple[str | None, str], Callable[[], Statistic]] = {
    (None, "macro_f1"): macro_f1,
    (None, "accuracy"): lambda: mean_of("correct"),
    (None, "micro_f1"): micro_f1,
    (None, "f1"): micro_f1,  # only when the rows carry tp/fp/fn and no per-example "f1"
}


def register_statistic(metric: str, factory: Callable[[], Statistic], task: str | None = None) -> None:
    """Declare how a task's metric is recomputed from its sidecar rows."""
    _REGISTRY[(task, metric)] = factory


def statistic_for(task: str, metric: str, row: Mapping[str, Any]) -> Statistic | None:
    """The statistic of ``metric`` for sidecar rows shaped like ``row``, or None.

    Order: a task-specific registration; a numeric per-example field named like the
    metric (its mean); a generic registration whose fields the rows carry. Callers
    still check that the statistic reproduces the run's recorded metric.
    """
    candidates: list[Callable[[], Statistic]] = []
    if (task, metric) in _REGISTRY:
        candidates.append(_REGISTRY[(task, metric)])
    if isinstance(row.get(metric), (int, float, bool)):
        candidates.append(lambda: mean_of(metric))
    if (None, metric) in _REGISTRY:
        candidates.append(_REGISTRY[(None, metric)])
    for make in candidates:
        stat = make()
        if all(f in row for f in stat.fields):
            return stat
    return None


# --------------------------------------------------------------------------- resampling


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities of each example in each bootstrap resample."""
    idx = rng.integers(0, n, size=(n_boot, n))  # (B, n) drawn indices
    flat = idx + n * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _chunks(n: int, n_boot: int) -> list[int]:
    """Split the resamples so a (chunk, n) weight matrix stays around 16 MB."""
    per = max(1, min(n_boot, (1 << 21) // max(1, n)))
    sizes = [per] * (n_boot // per)
    if n_boot % per:
        sizes.append(n_boot % per)
    return sizes


def seed_mean_point(stat: Statistic, features: np.ndarray) -> float:
    """The metric of each seed on all examples, averaged over seeds; features (S, n, k)."""
    return float(np.mean(stat.finish(features.sum(1))))  # (S, k) -> (S,) -> ()


Cell = np.ndarray | tuple[np.ndarray, np.ndarray]


def bootstrap(stat: Statistic, cells: Mapping[Hashable, Cell], n_boot: int = N_BOOT,
              seed: int = 0) -> dict[Hashable, np.ndarray]:
    """Seed-mean bootstrap distributions, (n_boot,) per cell, under *shared* resamples.

    Every cell is an array (seeds, n, k) over the same n examples in the same order, or
    ``(features (seeds, m, k), idx (m,))`` for a subset of them (a length bucket: only
    its examples are multiplied, so a breakdown costs one full pass, not one per bucket).
    Sharing the resamples pairs the cells, so differences of two distributions are a
    paired bootstrap of the difference. Cells over the same examples are stacked into
    one matrix product per chunk of resamples.
    """
    if not cells:
        return {}
    full = {f.shape[1] for f in cells.values() if not isinstance(f, tuple)}
    if len(full) > 1:
        raise ValueError(f"cells disagree on the number of examples: {sorted(full)}")
    n = full.pop() if full else 1 + max((int(c[1].max()) for c in cells.values() if len(c[1])), default=-1)
    if n == 0:
        return {key: np.full(n_boot, np.nan) for key in cells}
    # stack cells that share their examples: (m, sum of S*k) and where each cell's columns are
    stacks: dict[bytes | None, tuple[np.ndarray | None, list[tuple[Hashable, int, int, int]], list[np.ndarray]]] = {}
    for key, cell in cells.items():
        f, idx = cell if isinstance(cell, tuple) else (cell, None)
        tag = None if idx is None else np.asarray(idx, dtype=np.int64).tobytes()
        sel, layout, blocks = stacks.setdefault(tag, (idx, [], []))
        s_, m, k = f.shape
        start = sum(b.shape[1] for b in blocks)
        blocks.append(f.transpose(1, 0, 2).reshape(m, s_ * k))  # (S, m, k) -> (m, S*k)
        layout.append((key, start, s_, k))
    mats = {tag: (sel, layout, np.concatenate(blocks, axis=1)) for tag, (sel, layout, blocks) in stacks.items()}
    out: dict[Hashable, list[np.ndarray]] = {key: [] for key in cells}
    rng = np.random.default_rng(seed)
    for size in _chunks(n, n_boot):
        w = resample_counts(n, size, rng)  # (b, n)
        for sel, layout, mat in mats.values():
            sums = (w if sel is None else w[:, sel]) @ mat  # (b, m) @ (m, sum S*k) -> (b, sum S*k)
            for key, start, s_, k in layout:
                t = sums[:, start:start + s_ * k].reshape(size, s_, k)  # (b, S, k)
                out[key].append(np.mean(stat.finish(t), axis=1))  # (b, S) -> (b,)
    return {key: np.concatenate(parts) for key, parts in out.items()}


def jackknife(stat: Statistic, features: np.ndarray) -> np.ndarray:
    """Leave-one-example-out seed-mean statistic, (n,); feeds the BCa acceleration.
    Cheap here: leaving example i out is subtracting its features from the sums."""
    total = features.sum(1)  # (S, k)
    return np.mean(stat.finish(total[:, None, :] - features), axis=0)  # (S, n, k) -> (S, n) -> (n,)


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float

    def covers(self, value: float) -> bool:
        return self.lo <= value <= self.hi


def percentile_interval(estimate: float, dist: np.ndarray, alpha: float = ALPHA) -> Interval:
    """Percentile interval; resamples where the metric is undefined (NaN) are ignored."""
    dist = dist[np.isfinite(dist)]
    if dist.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    lo, hi = np.percentile(dist, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(estimate, float(lo), float(hi))


def _bca_params(estimate: float, dist: np.ndarray, jack: np.ndarray | None) -> tuple[float, float]:
    """Bias correction z0 (median bias of the resamples) and acceleration a (jackknife skewness)."""
    b = dist.size
    share = np.mean(dist < estimate) + 0.5 * np.mean(dist == estimate)
    z0 = _NORMAL.inv_cdf(float(np.clip(share, 1 / (b + 1), b / (b + 1))))
    a = 0.0
    if jack is not None:
        jack = jack[np.isfinite(jack)]
        d = jack.mean() - jack if jack.size else jack
        denom = 6 * float(np.sum(d**2)) ** 1.5
        a = float(np.sum(d**3)) / denom if denom > 0 else 0.0
    return z0, a


def bca_interval(estimate: float, dist: np.ndarray, jack: np.ndarray | None = None,
                 alpha: float = ALPHA) -> Interval:
    """Bias-corrected and accelerated (BCa) bootstrap interval (Efron 1987).

    Why not the plain percentile interval: macro-F1 on a few examples per class is
    biased (a resample repeats examples, so fewer classes are hit), and the percentile
    interval then sits on the wrong side of the estimate; BCa shifts it back. For a
    mean it is close to the percentile interval. ``jack`` are leave-one-out values
    (see :func:`jackknife`); without them the acceleration is 0 (the BC interval).
    """
    dist = dist[np.isfinite(dist)]
    if dist.size == 0 or not np.isfinite(estimate):
        return Interval(estimate, float("nan"), float("nan"))
    z0, a = _bca_params(estimate, dist, jack)
    qs = []
    for z in (_NORMAL.inv_cdf(alpha / 2), _NORMAL.inv_cdf(1 - alpha / 2)):
        qs.append(_NORMAL.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    lo, hi = np.percentile(dist, [100 * qs[0], 100 * qs[1]])
    return Interval(estimate, float(lo), float(hi))


def bca_p_value(observed: float, dist: np.ndarray, jack: np.ndarray | None = None, null: float = 0.0) -> float:
    """Two-sided p for "the difference is ``null``", by inverting the BCa interval: the
    smallest alpha whose (1 - alpha) interval excludes ``null``.

    Why: the test and the interval printed next to it then agree (p < 0.05 exactly
    when the 95% interval excludes 0, up to ties), which a separately computed
    shifted-null p does not guarantee.
    """
    dist = np.sort(dist[np.isfinite(dist)])
    if dist.size == 0 or not np.isfinite(observed):
        return float("nan")
    b = dist.size
    if dist[0] == dist[-1]:  # no spread: the interval is one point
        return 1.0 if dist[0] == null else 1 / (b + 1)
    z0, a = _bca_params(observed, dist, jack)
    # the percentile (linear interpolation, as np.percentile) at which ``null`` sits
    q = float(np.interp(null, dist, np.linspace(0.0, 1.0, b)))
    q = float(np.clip(q, 0.5 / b, 1 - 0.5 / b))
    w = _NORMAL.inv_cdf(q) - z0
    if 1 + a * w <= 0:  # beyond what any BCa interval reaches
        return 1 / (b + 1)
    z = w / (1 + a * w) - z0
    return float(max(2 * min(_NORMAL.cdf(z), 1 - _NORMAL.cdf(z)), 1 / (b + 1)))


@dataclass(frozen=True)
class Comparison:
    """Strategy minus reference, with its bootstrap interval and p-value."""

    diff: float
    lo: float
    hi: float
    p: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return bool(self.p < alpha)


def compare(observed: float, dist: np.ndarray, jack: np.ndarray | None = None, alpha: float = ALPHA) -> Comparison:
    """A difference with its BCa interval and paired-bootstrap p (dist, jack: of the difference)."""
    ci = bca_interval(observed, dist, jack, alpha)
    return Comparison(observed, ci.lo, ci.hi, bca_p_value(observed, dist, jack))


def randomization_test(stat: Statistic, a: np.ndarray, b: np.ndarray, n_perm: int = N_BOOT,
                       seed: int = 0) -> float:
    """Two-sided approximate randomisation p-value for seed-mean(a) - seed-mean(b).

    a and b are features (S, n, k) of the same examples (and matched seeds); each
    permutation swaps the two systems' outputs on a random half of the examples, in
    every seed at once.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired features must have the same shape: {a.shape} vs {b.shape}")
    observed = seed_mean_point(stat, a) - seed_mean_point(stat, b)
    rng = np.random.default_rng(seed)
    total = a.sum(1) + b.sum(1)  # (S, k)
    delta = a - b  # (S, n, k)
    base = b.sum(1)  # (S, k)
    hits = 0
    n = a.shape[1]
    for size in _chunks(n, n_perm):
        m = rng.integers(0, 2, size=(size, n)).astype(float)  # (p, n): 1 = keep, 0 = swap
        ta = base[:, None, :] + m @ delta  # (p, n) @ (S, n, k) -> (S, p, k)
        tb = total[:, None, :] - ta
        d = np.mean(stat.finish(ta), 0) - np.mean(stat.finish(tb), 0)  # (p,)
        hits += int(np.sum(np.abs(d) >= abs(observed) - 1e-12))
    return float((1 + hits) / (1 + n_perm))


# --------------------------------------------------------------------------- score-vector API


def _score_features(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    x = np.asarray(scores, dtype=float)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError("scores must be (n,) or (seeds, n)")
    return np.stack([x, np.ones_like(x)], axis=-1)  # (S, n, 2)


def bootstrap_ci(scores: np.ndarray | Sequence[float], n_boot: int = N_BOOT, alpha: float = ALPHA,
                 seed: int = 0) -> Interval:
    """Mean of a per-example score vector, (n,) or (seeds, n), with its BCa CI."""
    stat = scores_statistic()
    f = _score_features(scores)
    dist = bootstrap(stat, {0: f}, n_boot, seed)[0]
    return bca_interval(seed_mean_point(stat, f), dist, jackknife(stat, f), alpha)


def paired_bootstrap(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float], n_boot: int = N_BOOT,
                     alpha: float = ALPHA, seed: int = 0) -> Comparison:
    """mean(a) - mean(b) on the same examples: paired bootstrap CI and two-sided p."""
    stat = scores_statistic()
    fa, fb = _score_features(a), _score_features(b)
    dists = bootstrap(stat, {"a": fa, "b": fb}, n_boot, seed)
    observed = seed_mean_point(stat, fa) - seed_mean_point(stat, fb)
    return compare(observed, dists["a"] - dists["b"], jackknife(stat, fa) - jackknife(stat, fb), alpha)


def approximate_randomization(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float],
                              n_perm: int = N_BOOT, seed: int = 0) -> float:
    """Two-sided approximate randomisation p-value for mean(a) - mean(b) on the same examples."""
    return randomization_test(scores_statistic(), _score_features(a), _score_features(b), n_perm, seed)


__all__ = ["ALPHA", "METHOD", "N_BOOT", "Comparison", "Interval", "Statistic", "approximate_randomization",
           "bca_interval", "bca_p_value", "bootstrap", "bootstrap_ci", "compare", "jackknife", "macro_f1", "mean_of",
           "micro_f1", "paired_bootstrap", "percentile_interval", "randomization_test", "register_statistic",
           "resample_counts", "seed_mean_point", "statistic_for"]
