"""What the documentation's snippets are given: tiny local stand-ins for the hub models they name (``ARTEFACTS``)
and the names and files they say the reader already has (``SETUPS``). Everything takes seconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

import kasa_peft
from tiny_models import VOCAB, tiny_bert, tiny_llama

from pipelines.helpers import save_model

SENTENCES = ["a gripping, well acted film", "the plot never gets going", "the acting was fine and good",
             "bad and dull", "a lovely movie", "the movie was bad"]


def tiny_bert_dir(root: Path) -> str:
    """A tiny random BERT encoder (no head) with a tokenizer and BERT's 512 positions, saved like a pretrained
    checkpoint."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=512)
    return save_model(root / "tiny-bert", BertModel(config).eval())


def tiny_llama_dir(root: Path) -> str:
    return save_model(root / "tiny-llama", tiny_llama())


ARTEFACTS: dict[str, Callable[[Path], str]] = {"tiny-bert-dir": tiny_bert_dir, "tiny-llama-dir": tiny_llama_dir}


def _bert_batch(artefacts: Callable[[str], str]) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artefacts("tiny-bert-dir"))
    batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
    return {**batch, "labels": torch.tensor([1, 0, 1, 0])}


def _kasa_bert() -> torch.nn.Module:
    model = tiny_bert()
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=4, target_modules=("query", "value"),
                                                 modules_to_save=("classifier",)))
    return model.train()


def classification_batch(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``batch``: a tokenized batch of four sentences with labels, from the tiny BERT's tokenizer."""
    return {"batch": _bert_batch(artefacts)}


def tiny_llama_model(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``model``: a tiny random Llama (grouped-query attention, ``in > out`` layers)."""
    return {"model": tiny_llama()}


def kasa_bert_batch(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``model``: a tiny BERT classifier with a KaSA adapter; ``batch``: as ``classification-batch``."""
    return {"model": _kasa_bert(), "batch": _bert_batch(artefacts)}


def kasa_bert_dataset(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``model``: as ``kasa-bert-batch``; ``dataset``: eight tokenized examples with labels."""
    batch = _bert_batch(artefacts)
    rows = [{"input_ids": ids, "attention_mask": mask, "labels": label}
            for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True)]
    return {"model": _kasa_bert(), "dataset": rows * 2}


def bert_dataset(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``model``: a tiny BERT classifier; ``dataset``: as ``kasa-bert-dataset``."""
    return {**kasa_bert_dataset(artefacts), "model": tiny_bert()}


def saved_bert_adapter(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``my-adapter``: a KaSA adapter of a tiny BERT classifier, saved in the working directory."""
    kasa_peft.save_adapter(_kasa_bert(), "my-adapter")
    return {}


def two_llama_adapters(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``model``: a tiny Llama; ``adapter_a``, ``adapter_b``: adapter directories saved from copies of it."""
    for name, targets in (("adapter_a", "all-linear"), ("adapter_b", ("q_proj", "v_proj"))):
        copy = tiny_llama()
        kasa_peft.inject(copy, kasa_peft.KasaConfig(r=2, target_modules=targets))
        kasa_peft.save_adapter(copy, name)
    return {"model": tiny_llama(), "adapter_a": "adapter_a", "adapter_b": "adapter_b"}


def classification_files(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``train.csv`` and ``dev.csv`` with columns ``sentence,label`` (two classes) in the working directory."""
    for name, count in (("train.csv", 12), ("dev.csv", 6)):
        rows = [f'"{SENTENCES[i % len(SENTENCES)]} {i}",{"pos" if i % 2 == 0 else "neg"}' for i in range(count)]
        Path(name).write_text("\n".join(["sentence,label", *rows]) + "\n")
    return {}


def empty_train_file(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``model_dir``: the tiny BERT's directory; ``train.csv``: a header and no examples."""
    Path("train.csv").write_text("sentence,label\n")
    return {"model_dir": artefacts("tiny-bert-dir")}


def prompt_completion_dataset(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``dataset``: eight prompt/completion records (E2E's format), as a ``datasets.Dataset``."""
    from datasets import Dataset

    return {"dataset": Dataset.from_list([{"prompt": "name[The Eagle], food[French] ||",
                                           "completion": " The Eagle serves French food."}] * 8)}


def sft_adapter_and_pairs(artefacts: Callable[[str], str]) -> dict[str, Any]:
    """``base_model`` (the tiny Llama), an SFT adapter for it in ``out/adapter``, its ``tokenizer`` and ``pairs``:
    prompt / chosen / rejected records."""
    from integrations.support import preferences, tokenizer

    kasa_peft.save_adapter(kasa_peft.inject(tiny_llama(), kasa_peft.KasaConfig(r=4, target_modules=("q_proj",))),
                           "out/adapter")
    return {"base_model": tiny_llama(), "tokenizer": tokenizer(), "pairs": preferences()}


SETUPS: dict[str, Callable[[Callable[[str], str]], dict[str, Any]]] = {
    "classification-batch": classification_batch,
    "tiny-llama": tiny_llama_model,
    "kasa-bert-batch": kasa_bert_batch,
    "kasa-bert-dataset": kasa_bert_dataset,
    "bert-dataset": bert_dataset,
    "saved-bert-adapter": saved_bert_adapter,
    "two-llama-adapters": two_llama_adapters,
    "classification-files": classification_files,
    "empty-train-file": empty_train_file,
    "prompt-completion-dataset": prompt_completion_dataset,
    "sft-adapter-and-pairs": sft_adapter_and_pairs,
}
