"""FT-Top2 (Li & Liang 2021's baseline): full fine-tuning of the top two transformer blocks only.

Every parameter of the last ``n`` blocks trains (``n = 2``); embeddings, lower blocks and the output head stay
frozen (a classifier's new head trains, as with every method).
"""

from __future__ import annotations

from torch import nn

from .placement import transformer_blocks

TOP_BLOCKS = 2


def check_has_blocks(model: nn.Module, n: int = TOP_BLOCKS) -> None:
    name, blocks = transformer_blocks(model)
    if len(blocks) < n:
        raise ValueError(f"method 'ft-top{n}' trains the top {n} blocks, and {type(model).__name__} has {len(blocks)} "
                         f"({name}): choose another method")


def train_top_blocks(model: nn.Module, n: int = TOP_BLOCKS) -> None:
    """Make the last ``n`` transformer blocks of ``model`` trainable."""
    check_has_blocks(model, n)
    _, blocks = transformer_blocks(model)
    for block in list(blocks)[-n:]:
        block.requires_grad_(True)
