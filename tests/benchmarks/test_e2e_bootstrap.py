"""benchmarks/quality/e2e_bootstrap.py: the seed-averaged BLEU difference and its bootstrap interval."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from kasa_peft.tasks.e2e import mteval_scores  # noqa: E402
from quality import e2e_bootstrap  # noqa: E402

REFERENCES = [[f"the {w} shop is cheap and near the river", f"{w} is a cheap shop by the river"]
              for w in ("red", "blue", "green", "gold", "grey", "pink", "teal", "jade", "rose", "plum", "sand", "mint")]


def test_a_method_that_copies_a_reference_beats_one_that_drops_words():
    good = [[refs[0] for refs in REFERENCES], [refs[1] for refs in REFERENCES]]  # seed 0, seed 1
    # poor drops 1-4 words from the end of segment i, by seed, so the difference varies from MR to MR
    poor = [[" ".join(refs[seed].split()[:-(1 + (i + seed) % 4)]) for i, refs in enumerate(REFERENCES)]
            for seed in (0, 1)]
    difference, low, high = e2e_bootstrap.bleu_difference(good, poor, REFERENCES)
    by_hand = sum(mteval_scores(g, REFERENCES)["BLEU"] - mteval_scores(p, REFERENCES)["BLEU"]
                  for g, p in zip(good, poor, strict=True)) / 2
    assert difference == pytest.approx(100 * by_hand)
    assert 0 < low < difference < high
    reverse = e2e_bootstrap.bleu_difference(poor, good, REFERENCES)
    assert reverse[0] == pytest.approx(-difference)
    assert reverse[2] < 0
