"""Fine-tune a chat model with KaSA through TRL's SFTTrainer (pip install 'kasa-peft[trl]').

    python examples/sft_trl_chat.py --model HuggingFaceTB/SmolLM2-135M-Instruct --dataset trl-lib/Capybara \
        --output-dir smollm2-kasa-sft

The dataset has a ``messages`` column (a Hugging Face dataset name, or a local .json / .jsonl file); TRL applies
the chat template and trains on the assistant turns. The output folder holds the KaSA adapter (a few MB):
``kasa_peft.load_adapter(base_model, DIR)`` reads it, and so do ``kasa-peft export`` and ``kasa-peft eval --adapter``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from kasa_peft import KasaConfig
from kasa_peft.integrations.trl import KasaSFTTrainer


def dataset(name_or_file: str):
    """A local .json / .jsonl file, or a dataset on the Hugging Face hub."""
    if Path(name_or_file).is_file():
        return load_dataset("json", data_files=name_or_file, split="train")
    return load_dataset(name_or_file, split="train")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="hub name or local folder")
    parser.add_argument("--dataset", default="trl-lib/Capybara", help="messages data: hub name or .json/.jsonl")
    parser.add_argument("--output-dir", default="kasa-sft")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    args = parser.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = SFTConfig(args.output_dir, max_steps=args.max_steps, learning_rate=args.learning_rate,
                       per_device_train_batch_size=4, logging_steps=args.logging_steps, report_to="none",
                       bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    trainer = KasaSFTTrainer(model=model, args=config, train_dataset=dataset(args.dataset), processing_class=tokenizer,
                             kasa_config=KasaConfig(r=args.r, alpha=2 * args.r, target_modules="all-linear"))
    trainer.train()
    trainer.save_model(args.output_dir)  # the KaSA adapter, the tokenizer and the training arguments


if __name__ == "__main__":
    main()
