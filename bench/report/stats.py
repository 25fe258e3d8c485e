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

Two sources of noise enter every cell: the test sample and the training seed. Several
seeds of one configuration are scored on the *same* test examples, so a resample is
two-level (Davison & Hinkley 1997, §3.8): it draws test units (clusters: a QA question
scored over several contexts, a document cut into windows) once for every seed, recomputes
each seed's metric on them, then draws the seeds themselves with replacement and averages
the drawn seeds (the seed deviation scaled by sqrt(S/(S-1)), the usual small-sample
correction of a bootstrapped mean, and shrunk to the seed component, see
:func:`seed_share`). Comparisons against ``head`` reuse the very same unit
*and* seed draws (seeds paired by position), which pairs them; see :data:`METHOD`.

The simple API (:func:`bootstrap_ci`, :func:`paired_bootstrap`,
:func:`approximate_randomization`) takes per-example score vectors, shape (n,) or
(seeds, n); :func:`statistic_for` picks the statistic of a task's main metric from its
sidecar rows (label/pred for macro-F1, ``correct`` for accuracy, a per-example field
named like the metric, or tp/fp/fn counts).
"""
from __future__ import annotations

import warnings

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

_NORMAL = NormalDist()
Rows = Sequence[Mapping[str, Any]]

N_BOOT = 10_000
ALPHA = 0.05
POWER = 0.8

METHOD = (
    "95% CIs are two-level bootstrap intervals ({n_boot} resamples, seeded, vectorised), carrying both the "
    "test-sample and the training-seed noise: each resample draws test units with replacement (a unit is a "
    "cluster: one QA question over all its `context_paragraphs`, one document; rows of a unit move together), "
    "recomputes every seed's metric on them (macro-F1 from the resampled label/prediction pairs, entity F1 from "
    "the resampled counts), then draws the seeds with replacement and averages them (the seed deviation "
    "scaled by sqrt(S/(S-1)), and shrunk to the seed component of the between-seed spread: a random-effects "
    "split that keeps seed × unit noise, which the first level already carries, from counting twice); "
    "the interval is BCa (bias-corrected, accelerated by a leave-one-unit-out "
    "jackknife). With 2–3 seeds the seed part rests on few values: read the intervals as approximate. "
    "A strategy is compared with `head` at the same budget by the same scheme on the same draws (paired by "
    "test unit and by seed position: in QA a seed's model is shared by its strategies; in NER and clf each "
    "strategy trains its own, and the paired draw is still valid); p inverts the BCa interval of the "
    "difference. p-values are Holm-adjusted over the strategy-vs-`head` family of each table; ▲ / ▼ mark "
    "adjusted p < {alpha} (better / worse than `head`). Monte Carlo error of a p near {alpha}: ±{mc:.4f}. "
    "MDE: the smallest difference from `head` this test set and these seeds detect with {power:.0%} power "
    "at {alpha} (two-sided, unadjusted), (z_0.975 + z_0.8) × the median bootstrap SE of the table's "
    "differences; `n more`: about how many more test units (at the same seeds) would make an undecided "
    "difference of the observed size significant, or `seeds` where the seed noise alone is too large."
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


def seed_weights(n_seeds: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, S) seed weights of the outer level, the same for every cell with S seeds (so
    cells are paired by seed position): 1 + sqrt(S/(S-1)) * (multiplicity - 1), whose mean
    over seeds reweights the drawn seeds with the small-sample variance correction of a
    bootstrapped mean. One seed: all ones (no seed noise can be estimated from one)."""
    if n_seeds <= 1:
        return np.ones((n_boot, max(n_seeds, 1)))
    rng = np.random.default_rng([seed, 7919, n_seeds])
    counts = resample_counts(n_seeds, n_boot, rng)  # (B, S), rows sum to S
    return 1.0 + np.sqrt(n_seeds / (n_seeds - 1)) * (counts - 1.0)


def cluster_sum(features: np.ndarray, clusters: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, list]:
    """Sum a cell's features (S, n, k) within each cluster -> (S, c, k), and the cluster keys in order.

    Why it suffices: every statistic here is a function of feature *sums*, so resampling
    clusters of rows is resampling the clusters' summed features."""
    keys = list(dict.fromkeys(clusters))
    index = {c: j for j, c in enumerate(keys)}
    pos = np.array([index[c] for c in clusters], dtype=np.int64)
    out = np.zeros((features.shape[0], len(keys), features.shape[2]))
    np.add.at(out, (slice(None), pos), features)  # (S, n, k) -> (S, c, k)
    return out, keys


def bootstrap(stat: Statistic, cells: Mapping[Hashable, Cell], n_boot: int = N_BOOT,
              seed: int = 0, seeds: bool = True) -> dict[Hashable, np.ndarray]:
    """Bootstrap distributions of the seed-mean statistic, (n_boot,) per cell, under *shared* resamples.

    Every cell is an array (seeds, n, k) over the same n units (examples or clusters, see
    :func:`cluster_sum`) in the same order, or ``(features (seeds, m, k), idx (m,))`` for a
    subset of them (a length bucket: only its units are multiplied, so a breakdown costs one
    full pass, not one per bucket). The inner level draws units, shared by every seed and
    cell; the outer level (``seeds=True``) draws seeds (:func:`seed_weights`), shared by every
    cell with as many seeds. ``seeds=False`` gives the test-sample-only distribution (the
    seed mean on resampled units). Sharing the draws pairs the cells: differences of two
    distributions are a paired bootstrap of the difference.
    """
    return {key: d[0] if seeds else d[1] for key, d in bootstrap_both(stat, cells, n_boot, seed).items()}


def bootstrap_both(stat: Statistic, cells: Mapping[Hashable, Cell], n_boot: int = N_BOOT,
                   seed: int = 0) -> dict[Hashable, tuple[np.ndarray, np.ndarray]]:
    """(two-level, units-only) distributions per cell from one pass (see :func:`bootstrap`)."""
    if not cells:
        return {}
    full = {f.shape[1] for f in cells.values() if not isinstance(f, tuple)}
    if len(full) > 1:
        raise ValueError(f"cells disagree on the number of examples: {sorted(full)}")
    n = full.pop() if full else 1 + max((int(c[1].max()) for c in cells.values() if len(c[1])), default=-1)
    if n == 0:
        return {key: (np.full(n_boot, np.nan), np.full(n_boot, np.nan)) for key in cells}
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
    per_seed: dict[Hashable, list[np.ndarray]] = {key: [] for key in cells}
    rng = np.random.default_rng(seed)
    for size in _chunks(n, n_boot):
        w = resample_counts(n, size, rng)  # (b, n)
        for sel, layout, mat in mats.values():
            sums = (w if sel is None else w[:, sel]) @ mat  # (b, m) @ (m, sum S*k) -> (b, sum S*k)
            for key, start, s_, k in layout:
                t = sums[:, start:start + s_ * k].reshape(size, s_, k)  # (b, S, k)
                per_seed[key].append(stat.finish(t))  # (b, S)
    out = {}
    weights: dict[int, np.ndarray] = {}
    for key, parts in per_seed.items():
        m = np.concatenate(parts)  # (B, S)
        s_ = m.shape[1]
        if s_ not in weights:
            weights[s_] = seed_weights(s_, n_boot, seed)
        base = np.mean(m, axis=1)  # (B,) units only: the seed mean on resampled units
        dev = np.mean(weights[s_] * m, axis=1) - base  # (B,) the outer level's seed deviation
        # the seed weights extrapolate (1 + sqrt(S/(S-1)) * (count - 1) can be negative), so near a bound a draw
        # can leave every value the metric took; draws are held inside the range of all resampled per-seed values
        # (an F1 interval never reaches below 0), which leaves draws away from the bounds as they are
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            two = np.clip(base + seed_share(m) * dev, np.nanmin(m), np.nanmax(m)) if np.isfinite(m).any() \
                else base + seed_share(m) * dev
        out[key] = (two, base)  # (B,) two-level, units only
    return out


def seed_share(m: np.ndarray) -> float:
    """How much of the between-seed spread is seed noise proper, as a factor on the outer deviation.

    Why: seeds scored on the same units differ by a seed effect *and* by seed × unit noise (a
    model getting one example right by luck); the inner level already carries the latter, so
    drawing seeds as they are counts it twice and over-covers. The random-effects split (one-way
    ANOVA on the resampled per-seed metrics m (B, S)): per-seed resampling variance minus that of
    their mean is (1 - 1/S) × the interaction variance; what the between-seed variance holds beyond
    it is the seed component. Returns sqrt(seed component / between-seed variance), 0 with no spread."""
    s_ = m.shape[1]
    if s_ <= 1:
        return 0.0
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (metric undefined everywhere)
        v_single = float(np.nanmean(np.nanvar(m, axis=0, ddof=1)))
        v_mean = float(np.nanvar(np.nanmean(m, axis=1), ddof=1))
        between = float(np.nanvar(np.nanmean(m, axis=0), ddof=1))
    if not (np.isfinite(v_single) and np.isfinite(v_mean) and np.isfinite(between)) or between <= 0:
        return 0.0
    interaction = max(v_single - v_mean, 0.0) * s_ / (s_ - 1)
    return float(np.sqrt(max(0.0, 1.0 - interaction / between)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment (controls the family-wise error); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not ok.size:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate([(m - j) * p[i] for j, i in enumerate(order)])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def mc_error(p: float = ALPHA, n_boot: int = N_BOOT) -> float:
    """Monte Carlo standard error of a resampled p-value (or tail share) near ``p``."""
    return float(np.sqrt(p * (1 - p) / n_boot))


def z_power(alpha: float = ALPHA, power: float = POWER) -> float:
    return _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)


def units_needed(diff: float, se_total: float, se_units: float, n_units: int, alpha: float = ALPHA,
                 power: float = POWER) -> float:
    """About how many test units in all a difference of ``diff`` needs to be detected at ``power``.

    Only the test-sample part of the variance shrinks with more units (as 1/n); the seed part
    does not, so where it alone exceeds the target variance the answer is inf (more seeds
    are needed, not more examples)."""
    if not (np.isfinite(diff) and np.isfinite(se_total) and np.isfinite(se_units)) or diff == 0:
        return float("inf")
    target = (abs(diff) / z_power(alpha, power)) ** 2
    seed_var = max(se_total**2 - se_units**2, 0.0)
    if target <= seed_var or se_units == 0:
        return float("inf")
    return float(n_units * se_units**2 / (target - seed_var))


def jackknife(stat: Statistic, features: np.ndarray) -> np.ndarray:
    """Leave-one-unit-out seed-mean statistic, (n,); feeds the BCa acceleration.
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
                 seed: int = 0, seeds: bool = True) -> Interval:
    """Mean of a per-example score vector, (n,) or (seeds, n), with its BCa CI (two-level
    over seeds and examples; ``seeds=False``: over examples only, the old interval)."""
    stat = scores_statistic()
    f = _score_features(scores)
    dist = bootstrap(stat, {0: f}, n_boot, seed, seeds=seeds)[0]
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


__all__ = ["ALPHA", "METHOD", "N_BOOT", "POWER", "Comparison", "Interval", "Statistic", "approximate_randomization",
           "bca_interval", "bca_p_value", "bootstrap", "bootstrap_both", "bootstrap_ci", "cluster_sum", "compare",
           "holm", "jackknife", "macro_f1", "mc_error", "mean_of", "micro_f1", "paired_bootstrap",
           "percentile_interval", "randomization_test", "register_statistic", "resample_counts", "seed_mean_point",
           "seed_share", "seed_weights", "statistic_for", "units_needed", "z_power"]
