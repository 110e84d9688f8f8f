"""benchmarks/quality/intervals.py: the paired bootstrap over training seeds and test items, checked against the
exact bootstrap distribution (every equally likely draw enumerated) on tiny examples, and its two reductions: to
the bootstrap over seeds when there is one item, to the bootstrap over items when every seed is the same."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from quality.intervals import Interval, replicates, seed_item_interval

RESAMPLES = 20_000
KS_TOLERANCE = 0.02  # a Kolmogorov-Smirnov distance of 20,000 draws from the right distribution stays under 0.012


def ratio_difference(a: np.ndarray, b: np.ndarray):
    """A corpus-level statistic like BLEU (not a mean over items): sum(a) / sum(b) over the drawn items."""
    return lambda items: float(a[items].sum() / b[items].sum())


def exact(differences, n: int) -> np.ndarray:
    """Every (seed draw, item draw) of the bootstrap over seeds and items, each equally likely: its statistic."""
    seeds = len(differences)
    return np.array([np.mean([differences[s](np.array(items)) for s in drawn])
                     for drawn in itertools.product(range(seeds), repeat=seeds)
                     for items in itertools.product(range(n), repeat=n)])


def ks_distance(sample: np.ndarray, reference: np.ndarray) -> float:
    """The largest gap between the two empirical distribution functions (values rounded to 9 digits, so that one
    atom computed in two orders of summation stays one atom)."""
    sample, reference = np.round(sample, 9), np.round(reference, 9)
    points = np.union1d(sample, reference)
    cdf = lambda values: np.searchsorted(np.sort(values), points, side="right") / len(values)  # noqa: E731
    return float(np.abs(cdf(sample) - cdf(reference)).max())


def test_the_replicates_follow_the_exact_bootstrap_distribution():
    rng = np.random.default_rng(1)
    differences = [ratio_difference(rng.uniform(1, 2, 3), rng.uniform(1, 2, 3)) for _ in range(2)]  # 2 seeds, 3 items
    values = replicates(differences, [0] * 3, resamples=RESAMPLES)
    assert ks_distance(values, exact(differences, 3)) < KS_TOLERANCE


def test_one_item_per_seed_is_the_bootstrap_over_seeds():
    per_seed = [0.3, -1.2, 2.0]
    differences = [lambda items, d=d: d * len(items) for d in per_seed]  # one item: d_s itself
    seed_bootstrap = np.array([np.mean(draw) for draw in itertools.product(per_seed, repeat=3)])
    values = replicates(differences, [0], resamples=RESAMPLES)
    assert ks_distance(values, seed_bootstrap) < KS_TOLERANCE


def test_identical_seeds_give_the_bootstrap_over_items_however_many_seeds():
    rng = np.random.default_rng(2)
    one = ratio_difference(rng.uniform(1, 2, 4), rng.uniform(1, 2, 4))
    item_bootstrap = exact([one], 4)  # one seed: only the items vary
    for seeds in (1, 3, 5):  # the items are crossed with the seeds: more copies of a seed do not narrow anything
        values = replicates([one] * seeds, [0] * 4, resamples=RESAMPLES, seed=seeds)
        assert ks_distance(values, item_bootstrap) < KS_TOLERANCE


def test_holding_seeds_fixed_leaves_only_the_items():
    rng = np.random.default_rng(3)
    differences = [ratio_difference(rng.uniform(1, 2, 3), rng.uniform(1, 2, 3)) for _ in range(2)]
    items_only = np.array([np.mean([d(np.array(items)) for d in differences])
                           for items in itertools.product(range(3), repeat=3)])
    values = replicates(differences, [0] * 3, resample_seeds=False, resamples=RESAMPLES)
    assert ks_distance(values, items_only) < KS_TOLERANCE
    assert np.all(replicates(differences, [0] * 3, resample_items=False, resample_seeds=False, resamples=5)
                  == np.mean([d(np.arange(3)) for d in differences]))


def test_items_are_drawn_within_their_strata():
    strata = ["a", "a", "b", "b", "b"]
    in_b = lambda items: float(np.isin(items, [2, 3, 4]).sum())  # noqa: E731
    assert set(replicates([in_b, in_b], strata, resamples=200)) == {3.0}


def test_the_interval_is_the_percentiles_of_the_replicates_around_the_seed_mean():
    x = np.array([0.0, 1.0])
    mean_of = lambda items: float(x[items].mean())  # noqa: E731
    # the item bootstrap of a mean of two items: 0, 1/2, 1/2, 1; 2.5% and 97.5% fall on 0 and 1
    assert seed_item_interval([mean_of, mean_of], [0, 0], resamples=4000) == Interval(0.5, 0.0, 1.0)
    shifted = [lambda items: mean_of(items) + 1, mean_of]
    assert seed_item_interval(shifted, [0, 0], resamples=10).estimate == pytest.approx(1.0)


def test_no_seeds_is_refused():
    with pytest.raises(ValueError, match="no seeds"):
        replicates([], [0])
