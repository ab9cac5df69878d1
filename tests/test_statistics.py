"""Clustered statistics on simulated storyboards with known effects: interval coverage at the default suite size,
the exact sign-flip test, the minimum detectable effect against the noncentral t, honest significance.

`python tests/test_statistics.py` prints the coverage table (clustered vs frame-level) for the report."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from scipy import stats

from aldar_lit.config.evaluate import SuiteConfig, register_evaluate_configs
from aldar_lit.evaluation.statistics import (MAX_EXACT_CLUSTERS, cluster_mean, cluster_totals,
                                             minimum_detectable_effect, paired_difference, sign_flip_test)

REPO_ROOT = Path(__file__).resolve().parents[1]
CORRELATIONS = (0.1, 0.3, 0.5)


def default_suite_size() -> tuple[int, int]:
    """(storyboards, frames per storyboard) of evaluate.py's composed suite: one story per seed."""
    register_evaluate_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        suite = compose(config_name="evaluate").suite
    return len(suite.seeds) * (1 + len(suite.story_files)), len(suite.prompts)


def storyboard_differences(rng: np.random.Generator, storyboards: int, frames: int, correlation: float,
                           effect: float = 0.0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Paired differences with a random storyboard effect (variance `correlation`) plus frame noise (the rest),
    so that two frames of one storyboard correlate at `correlation`; and each unit's (storyboard, frame)."""
    board = rng.normal(0.0, np.sqrt(correlation), (storyboards, 1))
    noise = rng.normal(0.0, np.sqrt(1 - correlation), (storyboards, frames))
    units = list(itertools.product(range(storyboards), range(frames)))
    return (effect + board + noise).ravel(), units


def coverage(correlation: float, storyboards: int, frames: int, clustered: bool, repetitions: int,
             num_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Share of repetitions whose interval holds the true difference 0, and share called significant.

    `clustered=False` gives every frame its own cluster: the frame-level bootstrap this module replaced."""
    rng = np.random.default_rng(seed)
    covered = significant = 0
    for repetition in range(repetitions):
        differences, units = storyboard_differences(rng, storyboards, frames, correlation)
        labels = [u[0] for u in units] if clustered else units
        estimate = paired_difference(differences, np.zeros_like(differences), labels, num_resamples, seed=repetition)
        covered += estimate.ci_low <= 0.0 <= estimate.ci_high
        significant += estimate.significant
    return covered / repetitions, significant / repetitions


def test_default_suite_is_the_size_the_coverage_test_checks():
    storyboards, frames = default_suite_size()
    assert len(SuiteConfig().seeds) == storyboards >= 10 and frames == 25


@pytest.mark.parametrize("correlation", CORRELATIONS)
def test_clustered_interval_covers_a_zero_difference_at_the_nominal_rate(correlation):
    storyboards, frames = default_suite_size()
    covered, significant = coverage(correlation, storyboards, frames, clustered=True, repetitions=400)
    assert 0.90 <= covered <= 0.98, covered
    assert significant <= 0.07, significant  # false "significant" calls near the nominal 5 %


def test_frame_level_bootstrap_under_covers_correlated_storyboards():
    """What the clustered interval replaced: frames resampled as if independent miss the truth far too often."""
    storyboards, frames = default_suite_size()
    covered, _ = coverage(0.3, storyboards, frames, clustered=False, repetitions=100)
    assert covered < 0.75, covered


def test_a_storyboard_of_identical_frames_counts_once():
    """Frames that repeat their storyboard's value add no information: the interval equals that of the
    storyboard means alone, however many frames there are."""
    board_values = np.array([0.1, 0.4, -0.2, 0.3, 0.0, 0.25])
    values = np.repeat(board_values, 25)
    labels = [("story", seed) for seed in np.repeat(np.arange(6), 25)]
    by_frame = cluster_mean(values, labels, num_resamples=2000, seed=3)
    by_board = cluster_mean(board_values, list(range(6)), num_resamples=2000, seed=3)
    assert (by_frame.n, by_frame.clusters, by_board.clusters) == (150, 6, 6)
    assert (by_frame.mean, by_frame.ci_low, by_frame.ci_high) == pytest.approx(
        (by_board.mean, by_board.ci_low, by_board.ci_high))


def test_sign_flip_p_value_is_exact_over_every_pattern():
    differences = np.array([0.3, 0.1, 0.2, -0.05, 0.4, 0.15, 0.2, 0.25, np.nan])
    labels = ["a", "a", "b", "c", "c", "d", "e", "f", "f"]  # 6 storyboards of unequal size, one missing value
    totals = cluster_totals(differences, labels)
    assert totals.counts.tolist() == [2, 1, 2, 1, 1, 1]
    observed = abs(totals.sums.sum())
    flips = [abs(np.dot(signs, totals.sums)) for signs in itertools.product([1, -1], repeat=6)]
    expected = np.mean([f >= observed - 1e-12 for f in flips])
    p_value, method = sign_flip_test(totals, num_resamples=1000, seed=0)
    assert p_value == pytest.approx(expected) and method == "exact sign-flip (all 64 patterns)"
    estimate = paired_difference(differences, np.zeros(9), labels)
    assert estimate.p_value == pytest.approx(expected) and estimate.n == 8 and estimate.clusters == 6


def test_sign_flip_beyond_exact_size_is_seeded_monte_carlo():
    rng = np.random.default_rng(5)
    clusters = MAX_EXACT_CLUSTERS + 4
    differences, units = storyboard_differences(rng, clusters, 5, 0.3, effect=0.2)
    labels = [u[0] for u in units]
    first = paired_difference(differences, np.zeros_like(differences), labels, num_resamples=2000, seed=1)
    again = paired_difference(differences, np.zeros_like(differences), labels, num_resamples=2000, seed=1)
    assert first.p_method == "Monte Carlo sign-flip (2000 random patterns, seed 1)"
    assert first == again


def test_few_storyboards_never_reach_significance():
    """4 storyboards: the smallest exact two-sided p is 2/16, so however large the difference, no claim."""
    differences = np.repeat([1.0, 1.1, 0.9, 1.2], 25)
    labels = list(np.repeat(np.arange(4), 25))
    estimate = paired_difference(differences, np.zeros(100), labels)
    assert estimate.p_value == pytest.approx(2 / 16) and not estimate.significant


def test_minimum_detectable_effect_has_80_percent_power_by_the_noncentral_t():
    """At the MDE the paired t test's power, from scipy's noncentral t distribution, is about 0.8."""
    rng = np.random.default_rng(2)
    means = rng.normal(0.0, 0.05, 10)
    mde = minimum_detectable_effect(means, confidence=0.95)
    k, sd = len(means), np.std(means, ddof=1)
    critical = stats.t.ppf(0.975, k - 1)
    noncentrality = mde / (sd / np.sqrt(k))
    power = stats.nct.sf(critical, k - 1, noncentrality) + stats.nct.cdf(-critical, k - 1, noncentrality)
    assert power == pytest.approx(0.8, abs=0.02)


def test_real_effects_at_twice_the_mde_are_found():
    rng = np.random.default_rng(7)
    storyboards, frames = default_suite_size()
    found = 0
    for repetition in range(40):
        differences, units = storyboard_differences(rng, storyboards, frames, 0.3, effect=0.0)
        labels = [u[0] for u in units]
        mde = paired_difference(differences, np.zeros_like(differences), labels, 500, seed=repetition).mde
        shifted = paired_difference(differences - differences.mean() + 2 * mde, np.zeros_like(differences), labels,
                                    500, seed=repetition)
        found += shifted.significant
    assert found >= 36, found


def test_pairing_removes_storyboard_variance():
    """A storyboard's seed shifts both modes alike; the paired difference does not see that shift."""
    rng = np.random.default_rng(0)
    board = np.repeat(rng.normal(0.3, 0.05, 10), 25)
    labels = list(np.repeat(np.arange(10), 25))
    treatment = board + 0.01 + rng.normal(0, 0.005, 250)
    control = board + rng.normal(0, 0.005, 250)
    paired = paired_difference(treatment, control, labels, seed=0)
    level = cluster_mean(treatment, labels, seed=0)
    assert paired.ci_high - paired.ci_low < (level.ci_high - level.ci_low) / 2
    assert paired.significant


def test_missing_values_drop_only_their_pair_and_are_counted():
    treatment = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    control = np.array([0.0, 1.0, np.nan, 3.0, 4.0])
    estimate = paired_difference(treatment, control, ["a", "a", "b", "c", "c"])
    assert (estimate.n, estimate.clusters) == (3, 2) and estimate.mean == pytest.approx(1.0)
    assert estimate.ci_low == pytest.approx(1.0) and estimate.ci_high == pytest.approx(1.0)


def test_degenerate_inputs():
    assert cluster_mean([], []).n == 0 and np.isnan(cluster_mean([], []).mean)
    single = cluster_mean([0.5, 0.7], ["a", "a"])
    assert (single.n, single.clusters) == (2, 1) and single.mean == pytest.approx(0.6)
    assert np.isnan(single.ci_low) and not single.significant
    one_board = paired_difference([1.0, 2.0], [0.0, 0.0], ["a", "a"])
    assert np.isnan(one_board.p_value) and not one_board.significant
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0], ["a", "b"])
    with pytest.raises(ValueError, match="one cluster label per value"):
        cluster_mean([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="confidence"):
        cluster_mean([1.0, 2.0], ["a", "b"], confidence=1.5)


def test_same_seed_same_interval():
    values = np.random.default_rng(3).normal(size=30)
    labels = list(np.repeat(np.arange(6), 5))
    assert cluster_mean(values, labels, seed=5) == cluster_mean(values, labels, seed=5)


if __name__ == "__main__":
    boards, frames_per_board = default_suite_size()
    for size in sorted({4, boards}):
        for rho in CORRELATIONS:
            for clustered_ in (False, True):
                cov, sig = coverage(rho, size, frames_per_board, clustered_, repetitions=1000)
                print(f"{size} storyboards x {frames_per_board} frames, correlation {rho}, "
                      f"{'clustered' if clustered_ else 'frame-level'}: coverage {cov:.3f}, significant {sig:.3f}")
