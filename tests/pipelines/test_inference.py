"""`kasa-peft classify`'s inputs: single texts or pairs, never a mix in one request."""

from __future__ import annotations

import pytest

from kasa_peft.interop import TaggedInput
from kasa_peft.pipelines import inference


def test_pairs_reach_the_classifier_as_second_texts(monkeypatch):
    seen = []
    monkeypatch.setattr(inference, "predict", lambda model, tokenizer, examples, *args: seen.append(examples) or [0])
    inference.classify(None, None, 16, 2, [TaggedInput("a", {"text": "x", "text_pair": "y"})])
    inference.classify(None, None, 16, 2, [TaggedInput("a", {"text": "x"}), TaggedInput("a", {"text": "z",
                                                                                               "text_pair": None})])
    assert (seen[0].texts_a, seen[0].texts_b) == (["x"], ["y"]) and seen[1].texts_b is None


def test_a_mix_of_pairs_and_single_texts_is_refused():
    items = [TaggedInput("a", {"text": "x", "text_pair": "y"}), TaggedInput("a", {"text": "z"})]
    with pytest.raises(ValueError, match="1 of 2 inputs have a text_pair: a pair classifier needs one in every input"):
        inference.classify(None, None, 16, 2, items)
