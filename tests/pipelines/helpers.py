"""Tiny random models saved with a tiny BPE tokenizer, and the CLI run in-process, for end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kasa_peft.cli import main
from tiny_models import VOCAB

CORPUS = [
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], area[riverside]",
    "The Eagle is a moderately priced coffee shop serving French food by the riverside.",
    "Please answer the following question with true or false. Answer format: true/false",
    "the correct answer is answer1 answer2 solution1 option1 ending1",
    "The movie was good, the plot was bad, and the acting was fine.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
]


def save_tokenizer(directory: Path) -> None:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>",
                                                                                               "<unk>"]))
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(directory)


def save_model(directory: Path, model) -> str:
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return str(directory)


def write_classification_files(directory: Path, rows: int = 24) -> tuple[Path, Path]:
    """``train.csv`` and ``eval.csv`` with columns ``review,label`` and three labels (neg, neutral, pos)."""
    labels = ["neg", "neutral", "pos"]
    words = ["bad", "fine", "good"]
    paths = []
    for name, count in (("train.csv", rows), ("eval.csv", rows // 2)):
        rows_text = [f"the movie was {words[i % 3]} and the plot {i},{labels[i % 3]}" for i in range(count)]
        lines = ["review,label", *rows_text]
        (directory / name).write_text("\n".join(lines) + "\n")
        paths.append(directory / name)
    return paths[0], paths[1]


def train_classifier(cli, model_dir: str, directory: Path, method: str) -> tuple[Path, dict]:
    """``kasa-peft train --task classify --method METHOD`` for two steps on `write_classification_files`' data:
    the run directory and its record (the run must succeed)."""
    train_file, eval_file = write_classification_files(directory)
    out = directory / method
    result = cli("train", "--task", "classify", "--model", model_dir, "--method", method, "--output-dir", out,
                 "--train-file", train_file, "--eval-file", eval_file, "--text-columns", "review",
                 "--label-column", "label", "--max-steps", 2, "--batch-size", 4, "--max-length", 64)
    assert result.code == 0, result.err
    return out, json.loads((out / "metrics.json").read_text())


def run_cli(capsys, *args) -> SimpleNamespace:
    """``kasa-peft ARGS`` in this process: its exit code and what it printed."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return SimpleNamespace(code=code, out=out, err=err)
