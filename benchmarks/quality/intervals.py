"""Intervals for "A against B" cells: a paired bootstrap over training seeds and test items together.

A cell compares two methods trained with the same seeds ``s = 1..S`` and tested on the same ``n`` items: its value
is the mean over seeds of ``d_s(I) = M(A_s, I) - M(B_s, I)``, a metric ``M`` (BLEU over the MRs, an accuracy) of
seed ``s``'s two runs on the items ``I``. Two things could have come out otherwise: the training seeds and the test
items. One bootstrap replicate draws ``S`` seeds with replacement and ``n`` items with replacement (within each
stratum, e.g. each commonsense test set, keeping its size) and takes ``mean_k d_{s_k}(I*)``:

* paired by seed: ``A_s`` and ``B_s`` are drawn together and scored on the same items;
* items crossed with seeds: every seed's runs were tested on the same items, so one item draw serves every seed of
  a replicate (Owen's pigeonhole bootstrap for crossed factors, 2007). Drawing items anew inside each seed would
  treat each seed as tested on its own test set and shrink the items' part of the spread by ``1 / S``.

The interval is the percentile interval of the replicates. Resampling only the items (seeds held fixed) gives
Koehn's paired bootstrap over the test set (2004); only the seeds, the bootstrap over seeds. With few seeds the
seeds' part is itself uncertain: over S seeds the bootstrap knows few seed multisets (10 for three seeds) and puts
the variance of their mean at (S - 1) / S of the usual s^2 / S (2/3 for three seeds; a t interval over three seeds
would be wider still), so read such an interval as the least the uncertainty is, not a guarantee.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

import numpy as np

Difference = Callable[[np.ndarray], float]  # the items' indices (repeats allowed) -> d_s of those items
RESAMPLES = 2000


class Interval(NamedTuple):
    estimate: float  # mean over seeds of d_s on all items
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def replicates(differences: Sequence[Difference], strata: Sequence[Hashable], *, resample_seeds: bool = True,
               resample_items: bool = True, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` bootstrap replicates of ``mean_s differences[s](items)`` (module docstring): seeds and/or items
    drawn with replacement, the items within their ``strata`` (one label per item; all equal: no strata)."""
    if not differences:
        raise ValueError("no seeds to compare: give one difference function per seed both methods ran")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(np.asarray(strata) == label) for label in dict.fromkeys(strata)]
    everything = np.arange(len(strata))
    values = np.empty(resamples)
    for b in range(resamples):
        weights = (np.bincount(rng.integers(len(differences), size=len(differences)), minlength=len(differences))
                   if resample_seeds else np.ones(len(differences), dtype=int))
        items = (np.concatenate([group[rng.integers(len(group), size=len(group))] for group in groups])
                 if resample_items else everything)
        values[b] = sum(w * differences[s](items) for s, w in enumerate(weights) if w) / len(differences)
    return values


def seed_item_interval(differences: Sequence[Difference], strata: Sequence[Hashable], *, level: float = 0.95,
                       resample_seeds: bool = True, resample_items: bool = True, resamples: int = RESAMPLES,
                       seed: int = 0) -> Interval:
    """The cell's value and its ``level`` percentile interval over the `replicates`."""
    everything = np.arange(len(strata))
    estimate = float(np.mean([difference(everything) for difference in differences]))
    values = replicates(differences, strata, resample_seeds=resample_seeds, resample_items=resample_items,
                        resamples=resamples, seed=seed)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high))
