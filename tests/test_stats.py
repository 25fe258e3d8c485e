"""ctxbench.bench.report.stats: the recomputed metrics equal sklearn's, the bootstrap CI covers a known
mean at about the nominal rate, and the paired tests flag a planted difference but not
a null one (at about the nominal false-positive rate)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from ctxbench.bench.report import stats


def _rows(y, p):
    return [{"label": int(a), "pred": int(b), "correct": bool(a == b)} for a, b in zip(y, p)]


# --------------------------------------------------------------------------- statistics


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 60), k=st.integers(1, 6))
def test_macro_f1_matches_sklearn_on_resamples(data, n, k):
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    p = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    stat = stats.macro_f1()
    f = stat.features([_rows(y, p)])[0]  # (n, 3C)
    assert stat.value(f) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    w = stats.resample_counts(n, 3, np.random.default_rng(data.draw(st.integers(0, 99))))
    for b in range(3):
        idx = np.repeat(np.arange(n), w[b].astype(int))
        expected = f1_score(y[idx], p[idx], average="macro", zero_division=0)
        assert stat.finish(w[b] @ f) == pytest.approx(expected, abs=1e-12)


def test_micro_f1_and_mean():
    rows = [{"tp": 2, "fp": 1, "fn": 0}, {"tp": 0, "fp": 0, "fn": 3}, {"tp": 1, "fp": 0, "fn": 0}]
    stat = stats.micro_f1()
    assert stat.value(stat.features([rows])[0]) == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))
    m = stats.mean_of("f1")
    assert m.value(m.features([[{"f1": 0.5}, {"f1": 1.0}]])[0]) == pytest.approx(0.75)


def test_resample_counts_sum_to_n():
    w = stats.resample_counts(17, 50, np.random.default_rng(0))
    assert w.shape == (50, 17) and (w.sum(1) == 17).all()


def test_jackknife_is_leave_one_out():
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 3, 25), rng.integers(0, 3, 25)
    stat = stats.macro_f1()
    f = stat.features([_rows(y, p)])  # (1, n, k): one seed
    jack = stats.jackknife(stat, f)
    for i in (0, 7, 24):
        keep = np.arange(25) != i
        assert jack[i] == pytest.approx(f1_score(y[keep], p[keep], average="macro", zero_division=0))


@pytest.mark.parametrize("task,metric,row,expected", [
    ("clf", "macro_f1", {"label": "a", "pred": "b", "correct": False}, "macro_f1"),
    ("clf", "accuracy", {"label": "a", "pred": "b", "correct": False}, "mean(correct)"),
    ("qa", "f1", {"f1": 0.5, "exact_match": 0.0}, "mean(f1)"),
    ("qa", "exact_match", {"f1": 0.5, "exact_match": 0.0}, "mean(exact_match)"),
    ("ner", "f1", {"tp": 1, "fp": 0, "fn": 2}, "micro_f1"),
    ("ner", "f1", {"tokens": 3}, None),
])
def test_statistic_for_picks_from_the_rows(task, metric, row, expected):
    stat = stats.statistic_for(task, metric, row)
    assert (stat.name if stat else None) == expected


def test_registered_task_statistic_wins():
    stats.register_statistic("f1", stats.micro_f1, task="ner-test")
    try:
        row = {"f1": 0.3, "tp": 1, "fp": 0, "fn": 0}
        assert stats.statistic_for("ner-test", "f1", row).name == "micro_f1"
        assert stats.statistic_for("other", "f1", row).name == "mean(f1)"
    finally:
        stats._REGISTRY.pop(("ner-test", "f1"))


# --------------------------------------------------------------------------- bootstrap CI


def _coverage(draw, true_mean: float, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        ci = stats.bootstrap_ci(draw(rng), n_boot=1000, seed=r)
        hits += ci.covers(true_mean)
    return hits / reps


@pytest.mark.parametrize("name,draw,true_mean", [
    ("bernoulli(0.3), n=150", lambda rng: rng.random(150) < 0.3, 0.3),
    ("exponential(1), n=60", lambda rng: rng.exponential(1.0, 60), 1.0),
])
def test_bootstrap_ci_covers_true_mean_at_nominal_rate(name, draw, true_mean):
    cov = _coverage(draw, true_mean, reps=400, seed=1)
    # 95% nominal; with 400 replications the standard error of the rate is ~0.011
    assert 0.92 <= cov <= 0.98, f"{name}: coverage {cov:.3f}"


def test_seed_combined_ci_covers_the_population_mean():
    """Seeds share the test examples: per-example difficulty plus per-seed noise."""
    rng = np.random.default_rng(7)
    hits, reps = 0, 300
    for r in range(reps):
        difficulty = rng.beta(2, 2, size=120)  # P(correct) of each example, mean 0.5
        scores = rng.random((3, 120)) < difficulty  # (seeds, n)
        hits += stats.bootstrap_ci(scores, n_boot=1000, seed=r).covers(0.5)
    assert 0.92 <= hits / reps <= 0.98, hits / reps


def test_bootstrap_is_seeded():
    x = np.random.default_rng(0).random(50)
    assert stats.bootstrap_ci(x, seed=5) == stats.bootstrap_ci(x, seed=5)
    assert stats.bootstrap_ci(x, seed=5) != stats.bootstrap_ci(x, seed=6)


def test_macro_f1_bca_ci_brackets_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
    stat = stats.macro_f1()
    f = stat.features([_rows(y, p)])
    point = stats.seed_mean_point(stat, f)
    iv = stats.bca_interval(point, stats.bootstrap(stat, {0: f})[0], stats.jackknife(stat, f))
    assert iv.lo < point < iv.hi and iv.hi - iv.lo < 0.2


# --------------------------------------------------------------------------- paired tests


def _pair(rng, n, p_a, p_b, shared=0.7):
    """Correctness of two systems on the same examples, correlated through shared draws."""
    u = rng.random(n)
    a = np.where(rng.random(n) < shared, u, rng.random(n)) < p_a
    b = np.where(rng.random(n) < shared, u, rng.random(n)) < p_b
    return a.astype(float), b.astype(float)


def test_paired_tests_flag_a_planted_difference():
    a, b = _pair(np.random.default_rng(0), 400, 0.75, 0.62)
    cmp = stats.paired_bootstrap(a, b)
    assert cmp.significant() and cmp.lo > 0 and cmp.diff == pytest.approx(a.mean() - b.mean())
    assert stats.approximate_randomization(a, b) < 0.05


def test_paired_tests_do_not_flag_a_null_difference():
    a, b = _pair(np.random.default_rng(1), 400, 0.7, 0.7)
    assert not stats.paired_bootstrap(a, b).significant()
    assert stats.approximate_randomization(a, b) >= 0.05
    same = stats.paired_bootstrap(a, a)
    assert same.diff == 0 and same.p == 1.0


def test_null_false_positive_rate_is_near_alpha():
    rng = np.random.default_rng(2)
    boot, perm, reps = 0, 0, 200
    for r in range(reps):
        a, b = _pair(rng, 150, 0.6, 0.6)
        boot += stats.paired_bootstrap(a, b, n_boot=500, seed=r).significant()
        perm += stats.approximate_randomization(a, b, n_perm=500, seed=r) < 0.05
    assert boot / reps <= 0.10, boot / reps
    assert perm / reps <= 0.10, perm / reps


def test_p_value_agrees_with_interval():
    rng = np.random.default_rng(4)
    for r in range(40):
        a, b = _pair(rng, 120, 0.65, 0.65 - 0.004 * r)
        cmp = stats.paired_bootstrap(a, b, seed=r)
        excludes_zero = cmp.lo > 0 or cmp.hi < 0
        assert excludes_zero == cmp.significant(), cmp


def test_macro_f1_randomization_flags_planted_difference():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 300)
    good = np.where(rng.random(300) < 0.8, y, rng.integers(0, 4, 300))
    bad = np.where(rng.random(300) < 0.55, y, rng.integers(0, 4, 300))
    stat = stats.macro_f1()
    f = stat.features([_rows(y, good), _rows(y, bad), _rows(y, good)])  # shared vocabulary
    assert stats.randomization_test(stat, f[:1], f[1:2]) < 0.05
    assert stats.randomization_test(stat, f[:1], f[2:3]) == 1.0  # identical systems


# --------------------------------------------------------------------------- seeds, clusters, Holm, power


def _two_source_experiment(rng, n_seeds=3, n=150, seed_sd=0.05):
    """Per-example difficulty (test-sample noise) plus a per-seed shift of every example's
    P(correct) (training noise); the population mean over seeds and examples is 0.5."""
    difficulty = rng.beta(2, 2, size=n)
    shift = rng.normal(0.0, seed_sd, size=n_seeds)
    return rng.random((n_seeds, n)) < np.clip(difficulty[None] + shift[:, None], 0, 1)  # (S, n)


def test_two_level_interval_covers_when_both_noise_sources_exist():
    """200 simulated experiments: the two-level interval covers the population mean near 95%, while
    the old interval over test examples alone (seeds fixed) under-covers."""
    rng = np.random.default_rng(11)
    both = only = 0
    reps = 200
    for r in range(reps):
        scores = _two_source_experiment(rng)
        both += stats.bootstrap_ci(scores, n_boot=1000, seed=r).covers(0.5)
        only += stats.bootstrap_ci(scores, n_boot=1000, seed=r, seeds=False).covers(0.5)
    assert 0.90 <= both / reps <= 0.99, both / reps
    assert only / reps < 0.88, only / reps
    assert only < both


def test_seed_weights_pair_cells_and_average_to_one():
    w = stats.seed_weights(3, 500, seed=0)
    assert w.shape == (500, 3) and np.allclose(w.mean(1), 1.0)
    assert np.array_equal(w, stats.seed_weights(3, 500, seed=0))  # every 3-seed cell gets the same draws
    assert (stats.seed_weights(1, 10, 0) == 1).all()  # one seed: no seed noise to estimate


def test_clusters_move_together():
    """A question scored over two contexts with identical results is one unit: clustered, its interval
    is the single-context interval; treated as two independent rows it would be narrower."""
    rng = np.random.default_rng(3)
    x = (rng.random((2, 120)) < 0.6).astype(float)  # (S, n) one context
    stat = stats.mean_of("score")
    f = np.stack([x, np.ones_like(x)], axis=-1)  # (S, n, 2)
    twice = np.concatenate([f, f], axis=1)  # (S, 2n, 2): the same questions again
    clustered, keys = stats.cluster_sum(twice, list(range(120)) * 2)
    assert clustered.shape == (2, 120, 2) and keys == list(range(120))
    one = np.percentile(stats.bootstrap(stat, {0: f}, 4000, 1)[0], [2.5, 97.5])
    grouped = np.percentile(stats.bootstrap(stat, {0: clustered}, 4000, 1)[0], [2.5, 97.5])
    naive = np.percentile(stats.bootstrap(stat, {0: twice}, 4000, 1)[0], [2.5, 97.5])
    assert np.allclose(one, grouped)
    assert np.diff(naive)[0] < 0.8 * np.diff(one)[0]


def test_holm_matches_the_step_down_rule():
    adj = stats.holm([0.01, 0.04, 0.03, np.nan, 0.5])
    assert np.allclose(adj[[0, 1, 2, 4]], [0.04, 0.09, 0.09, 0.5]) and np.isnan(adj[3])
    assert (stats.holm([0.2, 0.6]) == [0.4, 0.6]).all()


def test_monte_carlo_error_of_ten_thousand_resamples_is_small_beside_alpha():
    assert stats.N_BOOT >= 10_000 and stats.mc_error(0.05) < 0.0025
    assert stats.mc_error(0.05, 1000) > 0.006  # the old 1,000: p = 0.052 was a coin flip


def test_units_needed():
    z = stats.z_power()
    assert z == pytest.approx(1.95996 + 0.84162, abs=1e-4)
    # no seed noise: SE shrinks as 1/sqrt(n), so the n whose SE is |d|/z
    assert stats.units_needed(0.02, 0.02, 0.02, 100) == pytest.approx(100 * z**2, rel=1e-9)
    # seed noise alone above the target: more examples cannot decide it
    assert stats.units_needed(0.02, 0.02, 0.005, 100) == float("inf")
    assert stats.units_needed(0.05, 0.02, 0.015, 100) < stats.units_needed(0.03, 0.02, 0.015, 100)


def test_a_two_seed_interval_of_a_bounded_metric_stays_inside_its_range():
    """Two seeds far apart near 0: the outer level's variance-corrected seed weights extrapolate past both
    seeds, so unclipped draws fell below 0 (an F1 interval of [-0.026, 0.202] was committed once)."""
    rng = np.random.default_rng(0)
    n = 300
    tp = np.stack([rng.random(n) < 0.01, rng.random(n) < 0.15]).astype(float)  # seed 0 near 0, seed 1 higher
    feats = np.stack([tp, np.ones((2, n)) - tp, np.zeros((2, n))], axis=-1)  # (S, n, 3): tp, fp, fn
    draws = stats.bootstrap(stats.micro_f1(), {"c": feats}, n_boot=2000)["c"]
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    assert np.percentile(draws, 97.5) > np.percentile(draws, 2.5)  # still an interval, not collapsed
