"""A frozen copy of an adapter (`copy_adapter`) and computing with another adapter mid-training (`computing_with`)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama, token_batch

import kasa_peft
from kasa_peft.core.model import computing_with, copy_adapter

from .helpers import outputs, randomize_updates

pytestmark = pytest.mark.filterwarnings("ignore:KaSA.s truncation")

CONFIG = kasa_peft.KasaConfig(r=4, target_modules=("q_proj", "v_proj"), modules_to_save=("lm_head",))


def adapted() -> torch.nn.Module:
    model = kasa_peft.inject(tiny_llama(), CONFIG)
    randomize_updates(model)
    with torch.no_grad():
        model.lm_head.copies["default"].weight.add_(0.1)
    return model


def test_the_copy_computes_as_the_source_shares_its_truncation_and_is_frozen():
    model = adapted()
    x = token_batch()
    expected = outputs(model, x)
    copy_adapter(model, "default", "ref")
    assert kasa_peft.kasa_state(model).active == "default"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    for _, layer in kasa_peft.kasa_layers(model):
        source, copy = layer.adapters["default"], layer.adapters["ref"]
        assert copy.dropped_us.data_ptr() == source.dropped_us.data_ptr()  # no second truncation in memory
        assert copy.A.data_ptr() != source.A.data_ptr()
    kasa_peft.set_adapter(model, "ref")
    torch.testing.assert_close(outputs(model, x), expected, rtol=0, atol=0)


def test_computing_with_switches_what_the_model_computes_not_what_trains():
    model = adapted()
    copy_adapter(model, "default", "ref")
    x = token_batch()
    start = outputs(model, x)
    with torch.no_grad():  # the trained adapter moves, its frozen copy stays
        for _, layer in kasa_peft.kasa_layers(model):
            layer.adapters["default"].B.mul_(2.0)
    moved = outputs(model, x)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    with computing_with(model, "ref"):
        assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
        assert kasa_peft.kasa_state(model).active == "ref"
        torch.testing.assert_close(outputs(model, x), start, rtol=0, atol=0)
    assert kasa_peft.kasa_state(model).active == "default"
    torch.testing.assert_close(outputs(model, x), moved, rtol=0, atol=0)
    assert (start - moved).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        with computing_with(model, "other"):
            pass
