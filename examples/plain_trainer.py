"""Fine-tune a causal LM with KaSA in a plain ``transformers.Trainer`` (no TRL needed).

    python examples/plain_trainer.py --model HuggingFaceTB/SmolLM2-135M --dataset roneneldan/TinyStories \
        --output-dir smollm2-kasa

``KasaTrainerMixin`` goes in front of any Trainer class: it adds KaSA's regulariser to the loss (and logs
``task_loss``, ``reg_l2``, ``reg_l3``), writes the KaSA adapter as every checkpoint and at ``save_model``, and
resumes from it exactly. The dataset has a ``text`` column (hub name or local .json / .jsonl).
"""

from __future__ import annotations

import argparse

import torch
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments,
)

from kasa_peft import KasaConfig, inject
from kasa_peft.training import KasaTrainerMixin

from sft_trl_chat import dataset


class KasaLMTrainer(KasaTrainerMixin, Trainer):
    """transformers' Trainer, training the model's KaSA adapter."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M", help="hub name or local folder")
    parser.add_argument("--dataset", default="roneneldan/TinyStories", help="text data: hub name or .json/.jsonl")
    parser.add_argument("--output-dir", default="kasa-lm")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = inject(AutoModelForCausalLM.from_pretrained(args.model),
                   KasaConfig(r=args.r, alpha=2 * args.r, target_modules="all-linear"))
    data = dataset(args.dataset).map(lambda row: tokenizer(row["text"], truncation=True, max_length=args.max_length),
                                     remove_columns=["text"])
    training = TrainingArguments(args.output_dir, max_steps=args.max_steps, learning_rate=args.learning_rate,
                                 per_device_train_batch_size=4, logging_steps=args.logging_steps, report_to="none",
                                 bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    trainer = KasaLMTrainer(model=model, args=training, train_dataset=data, processing_class=tokenizer,
                            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
