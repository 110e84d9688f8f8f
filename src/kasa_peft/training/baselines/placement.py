"""Where the baselines attach in a transformer: its blocks, and in each block the outputs of attention and MLP.

Found by structure rather than by per-architecture name tables:

* the blocks are the longest `nn.ModuleList` whose items share one class (BERT ``bert.encoder.layer``, Llama
  ``model.layers``, GPT-2 ``transformer.h``);
* in a block, the attention is the child whose name holds ``attn`` or ``attention``; its output projection is the
  last linear layer registered under it (BERT ``attention.output.dense``, Llama ``self_attn.o_proj``, GPT-2
  ``attn.c_proj``);
* the MLP's output projection is the last linear layer of the block outside the attention (BERT ``output.dense``,
  Llama ``mlp.down_proj``, GPT-2 ``mlp.c_proj``); the MLP is one module when a child of the block holds all of the
  block's linear layers outside the attention (Llama ``mlp``, GPT-2 ``mlp``; BERT splits it in two).

Both projections' outputs are taken before the block adds its residual.
"""

from __future__ import annotations

from torch import nn


def is_linear(module: nn.Module) -> bool:
    """A dense layer: ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the list of the model's transformer blocks (module docstring)."""
    lists = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and len({type(b) for b in m}) == 1]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of transformer blocks (an nn.ModuleList of one block "
                         "class), so the adapters have no place to go")
    return max(lists, key=lambda item: len(item[1]))


def attention_child(block: nn.Module) -> str:
    names = [name for name, _ in block.named_children() if "attn" in name or "attention" in name]
    if not names:
        raise ValueError(f"{type(block).__name__} has no child named like an attention (attn / attention)")
    return names[0]


def attention_output(block: nn.Module) -> str:
    """The name, inside ``block``, of the attention's output projection."""
    attention = attention_child(block)
    return f"{attention}.{_last_linear(block.get_submodule(attention), type(block).__name__ + '.' + attention)}"


def mlp_output(block: nn.Module) -> str:
    """The name, inside ``block``, of the MLP's output projection."""
    return _mlp_linears(block)[-1]


def mlp_module(block: nn.Module) -> str:
    """The name, inside ``block``, of the child that is the whole MLP (module docstring)."""
    linears = _mlp_linears(block)
    owners = {name.split(".")[0] for name in linears}
    if len(owners) != 1 or "." not in linears[0]:
        raise ValueError(f"{type(block).__name__} splits its MLP over {', '.join(sorted(owners))}: a parallel adapter "
                         "needs the MLP as one module (as Llama's or GPT-2's blocks have it)")
    return owners.pop()


def _mlp_linears(block: nn.Module) -> list[str]:
    attention = attention_child(block)
    names = [name for name, m in block.named_modules() if is_linear(m) and not name.startswith(attention + ".")]
    if not names:
        raise ValueError(f"{type(block).__name__} has no linear layer outside its attention, so no MLP was found")
    return names


def _last_linear(module: nn.Module, where: str) -> str:
    names = [name for name, m in module.named_modules() if is_linear(m)]
    if not names:
        raise ValueError(f"{where} has no linear layer")
    return names[-1]
