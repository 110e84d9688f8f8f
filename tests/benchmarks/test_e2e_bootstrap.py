"""benchmarks/quality/e2e_bootstrap.py: the seed-averaged BLEU difference and its bootstrap interval."""

from __future__ import annotations

import pytest
from quality import e2e, e2e_bootstrap

from kasa_peft.tasks.e2e import mteval_scores

REFERENCES = [[f"the {w} shop is cheap and near the river", f"{w} is a cheap shop by the river"]
              for w in ("red", "blue", "green", "gold", "grey", "pink", "teal", "jade", "rose", "plum", "sand", "mint")]


def test_a_method_that_copies_a_reference_beats_one_that_drops_words():
    good = [[refs[0] for refs in REFERENCES], [refs[1] for refs in REFERENCES]]  # seed 0, seed 1
    # poor drops 1-4 words from the end of segment i, by seed, so the difference varies from MR to MR
    poor = [[" ".join(refs[seed].split()[:-(1 + (i + seed) % 4)]) for i, refs in enumerate(REFERENCES)]
            for seed in (0, 1)]
    over_mrs, over_both = e2e_bootstrap.bleu_difference(good, poor, REFERENCES)
    by_hand = sum(mteval_scores(g, REFERENCES)["BLEU"] - mteval_scores(p, REFERENCES)["BLEU"]
                  for g, p in zip(good, poor, strict=True)) / 2
    assert over_mrs.estimate == over_both.estimate == pytest.approx(100 * by_hand)
    assert 0 < over_mrs.low < over_mrs.estimate < over_mrs.high
    assert 0 < over_both.low < over_both.estimate < over_both.high
    reverse = e2e_bootstrap.bleu_difference(poor, good, REFERENCES)
    assert reverse[0].estimate == pytest.approx(-over_mrs.estimate)
    assert reverse[0].high < 0 and reverse[1].high < 0


def test_the_seed_part_widens_the_interval_when_the_seeds_disagree():
    good = [[refs[0] for refs in REFERENCES]] * 2
    # seed 0 of the other method is as good, seed 1 drops words: the methods differ by seed, not by MR alone
    other = [good[0], [" ".join(refs[0].split()[:-2]) for refs in REFERENCES]]
    over_mrs, over_both = e2e_bootstrap.bleu_difference(good, other, REFERENCES)
    assert over_both.low < over_mrs.low  # a draw of seed 0 twice gives a difference of 0
    assert over_both.low == pytest.approx(0, abs=1e-9)


def test_the_e2e_table_compares_every_method_with_lora_and_the_4bit_rows_with_each_other():
    pairs = {(str(a), str(b)) for a, b in e2e_bootstrap.comparisons(e2e)}
    assert {(m, "lora") for m in e2e.ROWS if m != "lora"} <= pairs and ("prefix", "lora") in pairs
    assert ("kasa-auto-4bit", "lora-4bit") in pairs
    assert ("kasa-auto-4bit (decoded on the full-precision base)", "kasa-auto") in pairs


def test_a_4bit_adapter_decoded_on_the_full_precision_base_is_read_from_that_tables_run(tmp_path):
    from quality import e2e_4bit_on_full_precision as served

    record = {"id": "e2e-lora-4bit-s1"}
    on_full = e2e_bootstrap.Side("lora-4bit", e2e_bootstrap.FULL_PRECISION).predictions(tmp_path, e2e.TABLE, record)
    assert on_full == tmp_path / served.TABLE / "runs" / "e2e-lora-4bit-s1-on-full-precision.predictions.txt"
    assert e2e_bootstrap.Side("lora-4bit").predictions(tmp_path, e2e.TABLE, record) == (
        tmp_path / e2e.TABLE / "runs" / "e2e-lora-4bit-s1.predictions.txt")
