"""Bootstrap intervals on synthetic paired data with known effects: coverage near 95 %, honest significance."""

from __future__ import annotations

import numpy as np
import pytest

from aldar_lit.evaluation.statistics import bootstrap_mean, paired_difference

REPETITIONS = 200


def synthetic_pairs(rng: np.random.Generator, n: int, effect: float, noise: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt difficulty shared by both modes (what pairing removes) plus per-image noise."""
    prompt = rng.normal(0.3, 0.05, n)
    draw = (lambda: rng.normal(0, 0.02, n)) if noise == "normal" else (lambda: rng.exponential(0.02, n) - 0.02)
    return prompt + effect + draw(), prompt + draw()


@pytest.mark.parametrize("effect,noise,n", [(0.0, "normal", 40), (0.01, "normal", 30), (0.05, "skewed", 50)])
def test_paired_interval_covers_the_true_difference_at_about_the_nominal_rate(effect, noise, n):
    rng = np.random.default_rng(1234)
    covered = 0
    for rep in range(REPETITIONS):
        treatment, control = synthetic_pairs(rng, n, effect, noise)
        estimate = paired_difference(treatment, control, num_resamples=2000, seed=rep)
        covered += estimate.ci_low <= effect <= estimate.ci_high
    assert 0.90 <= covered / REPETITIONS <= 0.99, covered / REPETITIONS


def test_significance_finds_real_effects_and_rarely_invents_them():
    rng = np.random.default_rng(7)
    real = sum(paired_difference(*synthetic_pairs(rng, 40, 0.02, "normal"), num_resamples=1000, seed=i).significant
               for i in range(100))
    null = sum(paired_difference(*synthetic_pairs(rng, 40, 0.0, "normal"), num_resamples=1000, seed=i).significant
               for i in range(100))
    assert real >= 95  # effect 0.02 vs noise sd 0.028 per difference, n=40: power ~1
    assert null <= 12  # nominal 5 %


def test_pairing_removes_prompt_variance():
    rng = np.random.default_rng(0)
    treatment, control = synthetic_pairs(rng, 40, 0.01, "normal")
    paired = paired_difference(treatment, control, seed=0)
    unpaired_width = (bootstrap_mean(treatment).ci_high - bootstrap_mean(treatment).ci_low) * np.sqrt(2)
    assert paired.ci_high - paired.ci_low < unpaired_width / 2
    assert paired.significant


def test_missing_values_drop_only_their_pair_and_are_counted():
    treatment = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    control = np.array([0.0, 1.0, np.nan, 3.0, 4.0])
    estimate = paired_difference(treatment, control)
    assert estimate.n == 3 and estimate.mean == pytest.approx(1.0)
    assert estimate.ci_low == pytest.approx(1.0) and estimate.ci_high == pytest.approx(1.0)


def test_degenerate_inputs():
    assert bootstrap_mean([]).n == 0 and np.isnan(bootstrap_mean([]).mean)
    single = bootstrap_mean([0.5])
    assert single.n == 1 and single.mean == 0.5 and np.isnan(single.ci_low) and not single.significant
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0, 2.0], confidence=1.5)


def test_same_seed_same_interval():
    values = np.random.default_rng(3).normal(size=30)
    assert bootstrap_mean(values, seed=5) == bootstrap_mean(values, seed=5)
