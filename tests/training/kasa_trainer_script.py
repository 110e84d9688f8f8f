"""A user's Trainer script: KaSA on a tiny Llama with `KasaTrainer`, for ``accelerate launch`` / ``torchrun``.

    accelerate launch --config_file configs/accelerate/ddp.yaml --cpu SCRIPT OUT [--resume]

(``SCRIPT``: this file; ``configs/accelerate/fsdp.yaml`` for FSDP2 on GPUs).

Trains 4 optimizer steps (global batch 4, checkpoint after steps 2 and 4) and saves the adapter to ``OUT/final``;
with ``--resume``, continues from the last checkpoint in ``OUT/checkpoints``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny_models

from kasa_peft.training import KasaTrainer, MethodSpec, prepare_model  # noqa: E402
from tiny_models import tiny_llama, token_batch  # noqa: E402

STEPS = 4
GLOBAL_BATCH = 4
SPEC = MethodSpec(method="kasa", r=4, target_modules="all-linear", beta=0.05, gamma=0.05)


def main(out: Path, resume: bool = False) -> None:
    model = tiny_llama()
    torch.manual_seed(100)
    prepared = prepare_model(model, SPEC)
    data = [{"input_ids": ids, "labels": ids} for ids in token_batch(GLOBAL_BATCH * STEPS, 8, seed=1)]
    per_device = GLOBAL_BATCH // int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(output_dir=str(out / "checkpoints"), per_device_train_batch_size=per_device,
                             max_steps=STEPS, learning_rate=1e-2, lr_scheduler_type="constant", save_steps=2,
                             report_to="none", seed=0, logging_steps=1, train_sampling_strategy="sequential")
    trainer = KasaTrainer(model=prepared.model, args=args, train_dataset=data, prepared=prepared)
    trainer.train(resume_from_checkpoint=get_last_checkpoint(args.output_dir) if resume else None)
    trainer.save_model(str(out / "final"))
    if trainer.is_world_process_zero():
        sharded = any(hasattr(p, "full_tensor") for p in prepared.model.parameters())
        record = {"world_size": trainer.args.world_size, "fsdp": trainer.is_fsdp_enabled, "sharded": sharded}
        (out / "launch.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), resume="--resume" in sys.argv[2:])
