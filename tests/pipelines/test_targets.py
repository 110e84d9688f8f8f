"""Default layers to adapt per architecture (PEFT's LoRA defaults; the paper's set for commonsense on Llama)."""

from __future__ import annotations

import pytest

from kasa_peft.pipelines.targets import default_target_modules
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama


@pytest.mark.parametrize(("make", "family", "expected"), [
    (tiny_bert, "glue", ["query", "value"]),
    (tiny_llama, "e2e", ["q_proj", "v_proj"]),
    (tiny_llama, "commonsense", ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]),
    (tiny_gpt2, "e2e", ["c_attn"]),
    (tiny_gpt2, "commonsense", ["c_attn"]),
])
def test_default_targets(make, family, expected):
    assert default_target_modules(make(), family) == expected


def test_unknown_architecture_asks_for_target_modules():
    class Custom:
        config = type("Config", (), {"model_type": "my-model"})()

    with pytest.raises(ValueError, match="pass --target-modules"):
        default_target_modules(Custom(), "glue")
