"""Continue a KaSA adapter with DPO through TRL's DPOTrainer (pip install 'kasa-peft[trl]').

    python examples/dpo_after_sft.py --model HuggingFaceTB/SmolLM2-135M-Instruct --adapter smollm2-kasa-sft \
        --dataset trl-lib/ultrafeedback_binarized --output-dir smollm2-kasa-dpo

The preference data has ``prompt``, ``chosen`` and ``rejected`` columns (hub name or local .json / .jsonl). The
reference model is the SFT adapter as it starts, held as a frozen second adapter on the same base: no second copy of
the model is loaded, and the first DPO loss is ln 2.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig

from kasa_peft import load_adapter
from kasa_peft.integrations.trl import KasaDPOTrainer

from sft_trl_chat import dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="the base the SFT adapter is on")
    parser.add_argument("--adapter", required=True, help="the SFT run's output folder (a KaSA adapter)")
    parser.add_argument("--dataset", default="trl-lib/ultrafeedback_binarized", help="hub name or .json/.jsonl")
    parser.add_argument("--output-dir", default="kasa-dpo")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    args = parser.parse_args(argv)

    model = load_adapter(AutoModelForCausalLM.from_pretrained(args.model), args.adapter)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = DPOConfig(args.output_dir, max_steps=args.max_steps, learning_rate=args.learning_rate,
                       per_device_train_batch_size=4, logging_steps=args.logging_steps, report_to="none",
                       bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    trainer = KasaDPOTrainer(model=model, args=config, train_dataset=dataset(args.dataset), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
