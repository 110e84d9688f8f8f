"""Tiny saved bases and trained-looking adapters for the interop tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tiny_models import VOCAB, tiny_bert, tiny_gpt2, tiny_llama
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

import kasa_peft as kp
from kasa_peft.interop import load_pretrained


def train_like(model: torch.nn.Module, adapter_name: str, seed: int) -> None:
    """Give an adapter values a trained one could have (B != 0, sigma of both signs, changed head)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in kp.kasa_layers(model):
            if adapter_name in layer.adapters:
                adapter = layer.adapters[adapter_name]
                adapter.B.copy_(0.3 * torch.randn(adapter.B.shape, generator=generator))
                adapter.sigma.copy_(torch.randn(adapter.sigma.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, kp.ModulesToSave) and adapter_name in module.copies:
                for param in module.copies[adapter_name].parameters():
                    param.add_(0.5 * torch.randn(param.shape, generator=generator))


def save_word_tokenizer(directory: Path) -> None:
    words = [f"w{i}" for i in range(VOCAB - 4)]
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(directory)


@dataclass(frozen=True)
class Setup:
    """A saved base model and a saved, trained-looking KaSA adapter for it."""

    base_dir: Path
    adapter_dir: Path
    config: kp.KasaConfig

    def base(self) -> torch.nn.Module:
        return load_pretrained(str(self.base_dir))

    def adapted(self, adapter_name: str = "default") -> torch.nn.Module:
        return kp.load_adapter(self.base(), self.adapter_dir, adapter_name)


CONFIGS = {
    "bert": (tiny_bert, kp.KasaConfig(r=3, alpha=6, target_modules=("query", "value", "intermediate.dense"),
                                      modules_to_save=("classifier",))),
    "llama": (tiny_llama, kp.KasaConfig(r=4, alpha=8, target_modules="all-linear")),
    "gpt2": (tiny_gpt2, kp.KasaConfig(r=3, alpha=12, target_modules=("c_attn", "attn.c_proj", "c_fc"))),
}


def build_setups(root: Path) -> dict[str, Setup]:
    """Save each tiny base (BERT with a tokenizer) and a trained-looking adapter for it under ``root``."""
    result = {}
    for seed, (name, (make, config)) in enumerate(CONFIGS.items()):
        base_dir = root / name / "base"
        make().save_pretrained(base_dir)
        if name == "bert":
            save_word_tokenizer(base_dir)
        model = load_pretrained(str(base_dir))
        kp.inject(model, config)
        train_like(model, "default", seed=seed)
        kp.save_adapter(model, root / name / "adapter")
        result[name] = Setup(base_dir, root / name / "adapter", config)
    return result


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())
