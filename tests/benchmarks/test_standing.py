"""`quality.standing`: KaSA against each method, by the interval over seeds (and items where they were kept)."""

from __future__ import annotations

import numpy as np
import pytest
from quality.intervals import Interval
from quality.standing import Column, full_precision, glance, seeds_only, standing, verdict


SEEDS = (0, 1, 2)


def record(method: str, seed: int, accuracy: float) -> dict:
    return {"id": f"{method}-s{seed}", "labels": {"method": method, "seed": seed},
            "run": {"main_metric": "accuracy", "best": {"metrics": {"accuracy": accuracy}}}}


@pytest.mark.parametrize(("interval", "expected"), [(Interval(1.0, 0.5, 2.0), "above"),
                                                     (Interval(-1.0, -2.0, -0.1), "below"),
                                                     (Interval(0.1, -0.5, 0.6), "level"),
                                                     (Interval(0.0, 0.0, 1.0), "level")])
def test_the_verdict_is_where_the_interval_lies_against_zero(interval, expected):
    assert verdict(interval) == expected


def test_seed_only_columns_resample_the_seed_differences():
    ours, theirs = [0.80, 0.82, 0.81], [0.70, 0.71, 0.72]  # per-seed differences: 10, 11, 9 (x100)
    records = [record("kasa", s, a) for s, a in enumerate(ours)] + [record("lora", s, a) for s, a in enumerate(theirs)]
    interval, seeds = standing(Column("t", records, seeds_only, SEEDS), "kasa", "lora")
    assert seeds == [0, 1, 2] and interval.estimate == pytest.approx(10.0)
    assert 9.0 - 1e-9 <= interval.low < interval.high <= 11.0 + 1e-9  # a mean of draws from {9, 10, 11}
    assert verdict(interval) == "above"
    assert standing(Column("t", records, seeds_only, SEEDS), "kasa", "pissa") is None  # no common seed
    assert standing(Column("t", records[:1] + records[3:4], seeds_only, SEEDS), "kasa", "lora") is None  # one seed


def test_a_seed_without_kept_items_is_left_out_and_items_resample_within_the_kept_ones():
    scores = {("kasa", 0): np.array([1.0, 1, 0, 1]), ("lora", 0): np.array([0.0, 1, 0, 1]),
              ("kasa", 1): np.array([1.0, 0, 0, 1]), ("lora", 1): np.array([1.0, 0, 0, 1])}

    def pairing(ours: dict, theirs: dict):
        key = (ours["labels"]["method"], ours["labels"]["seed"])
        if ours["labels"]["seed"] == 2:
            return None  # kept nothing
        a, b = scores[key], scores[("lora", ours["labels"]["seed"])]
        return (lambda items: 100 * float((a - b)[items].mean())), [0, 0, 0, 0]

    records = [record(m, s, 0.5) for m in ("kasa", "lora") for s in (0, 1, 2)]
    interval, seeds = standing(Column("t", records, pairing, SEEDS), "kasa", "lora")
    assert seeds == [0, 1] and interval.estimate == pytest.approx((25.0 + 0.0) / 2)
    assert interval.low >= 0.0 and interval.high <= 100.0  # every item's difference is 0 or +1


@pytest.mark.parametrize(("found", "expected"), [(None, "—"),
                                                 ((Interval(1.0, 0.5, 2.0), [0, 1, 2]), "above"),
                                                 ((Interval(0.1, -0.5, 0.6), [0]), "level (1 seed)"),
                                                 ((Interval(-1.0, -2.0, -0.1), [0, 2]), "below (2 seeds)")])
def test_at_a_glance_a_verdict_over_fewer_than_three_seeds_says_how_many(found, expected):
    assert glance(found, SEEDS) == expected


def test_rows_trained_on_a_quantized_base_are_not_methods_to_stand_against():
    runs = [{"id": i, "run": {"config": {"quantize": q}}} for i, q in (("lora", None), ("lora-4bit", "4bit"),
                                                                        ("pissa", None))]
    assert [r["id"] for r in full_precision(runs)] == ["lora", "pissa"]
