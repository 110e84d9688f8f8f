"""Issue 24: the same E2E SFT run through ``kasa-peft train --task e2e`` and through ``KasaSFTTrainer`` (TRL), on
SmolLM2-135M, gives the same training-loss curve.

Both runs train KaSA (the CLI's defaults: r=8, alpha=16, beta=1e-4, gamma=1e-3, the paper's truncation) on the
same rows (``--max-train-samples``' fixed subset of ``e2e/train.csv``), in the same order (Trainer's sampler, seed
0), with the same schedule (AdamW, lr 2e-4, linear decay after 6% warm-up, batch, steps, fp32). The CLI renders
each MR prompt through the tokenizer's chat template and appends ``" " + reference`` and EOS, the loss on the
continuation only; the TRL run gets the same rendered prompt as text and the same continuation as a
prompt/completion dataset, and TRL tokenizes, masks (completion-only loss) and batches it. The token ids and loss
masks of both are compared before training. The CLI runs as a subprocess while the TRL run trains in this one,
each with ``--threads`` torch threads.

    nice -n 5 python benchmarks/trl_e2e_parity.py [--max-steps 12] [--batch-size 2] [--max-train-samples 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import machine_info, machine_sentence, write_results
from datasets import Dataset
from trl import SFTConfig

import kasa_peft
from kasa_peft.integrations.trl import KasaSFTTrainer
from kasa_peft.models import load_model
from kasa_peft.pipelines.base import fixed_subset
from kasa_peft.pipelines.causal_lm import IGNORE_INDEX, encode_prompt_target
from kasa_peft.pipelines.evaluation import training_losses
from kasa_peft.pipelines.run import CHECKPOINTING_ARGUMENT
from kasa_peft.tasks.e2e import format_mr, format_target, load_e2e

MODEL, LR, WARMUP, MAX_LENGTH, SEED, TARGETS = "smollm2", 2e-4, 0.06, 128, 0, ("q_proj", "v_proj")
TOLERANCE = 1e-3  # of the logged loss; below it the runs differ by float rounding (padding, summation order)


def cli_command(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """``kasa-peft train --task e2e`` with the run's settings; its evaluation cut to one MR, greedy, 8 tokens."""
    return ["kasa-peft", "train", "--task", "e2e", "--model", MODEL, "--data-dir", args.data_dir,
            "--output-dir", str(output_dir), "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size),
            "--max-train-samples", str(args.max_train_samples), "--lr", str(LR), "--warmup-ratio", str(WARMUP),
            "--max-length", str(MAX_LENGTH), "--seed", str(SEED), "--target-modules", ",".join(TARGETS),
            "--max-eval-samples", "1", "--num-beams", "1", "--max-new-tokens", "8"]


def prompt_completion_rows(tokenizer, data_dir: str, count: int) -> list[dict[str, str]]:
    """The CLI's E2E training rows as a TRL prompt/completion dataset: the prompt rendered by the chat template
    (as the CLI renders it), the completion ``" " + reference`` (TRL appends EOS)."""
    rows = fixed_subset(load_e2e(data_dir, "train"), count)
    return [{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": format_mr(mr)}],
                                                     add_generation_prompt=True, tokenize=False),
             "completion": format_target(ref)} for mr, ref in rows]


def token_mismatches(tokenizer, trl_dataset: Dataset, data_dir: str, count: int) -> list[dict]:
    """The examples TRL tokenized or masked differently from the CLI (`encode_prompt_target`), with their lengths
    untruncated."""
    rows = fixed_subset(load_e2e(data_dir, "train"), count)
    mismatches = []
    for index, ((mr, ref), theirs) in enumerate(zip(rows, trl_dataset, strict=True)):
        ours = encode_prompt_target(tokenizer, format_mr(mr), format_target(ref), MAX_LENGTH, use_chat_template=True)
        trained = [label != IGNORE_INDEX for label in ours["labels"]]
        masked = [label != IGNORE_INDEX for label in theirs["labels"]]  # TRL folds its completion mask in
        if ours["input_ids"] != theirs["input_ids"] or trained != masked:
            full = encode_prompt_target(tokenizer, format_mr(mr), format_target(ref), 10**6, use_chat_template=True)
            mismatches.append({"example": index, "tokens": len(full["input_ids"]), "reference": ref})
    return mismatches


def trl_run(args: argparse.Namespace, output_dir: Path) -> tuple[list[dict], list[dict]]:
    """The KasaSFTTrainer run: its logged losses and the examples tokenized unlike the CLI's."""
    model, tokenizer = load_model(MODEL, "causal_lm")
    rows = prompt_completion_rows(tokenizer, args.data_dir, args.max_train_samples)
    config = SFTConfig(str(output_dir), learning_rate=LR, warmup_steps=WARMUP, lr_scheduler_type="linear",
                       weight_decay=0.0, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
                       seed=SEED, logging_steps=max(1, min(50, args.max_steps // 10)), max_length=MAX_LENGTH,
                       truncation_mode="keep_end",  # as the CLI: a long example loses its prompt's start
                       bf16=False, save_strategy="no", report_to="none", dataloader_num_workers=0,
                       use_cpu=not torch.accelerator.is_available(), **{CHECKPOINTING_ARGUMENT: False})
    kasa_config = kasa_peft.KasaConfig(r=8, alpha=16.0, beta=1e-4, gamma=1e-3, target_modules=TARGETS)
    trainer = KasaSFTTrainer(model, config, kasa_config=kasa_config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
    mismatches = token_mismatches(tokenizer, trainer.train_dataset, args.data_dir, args.max_train_samples)
    trainer.train()
    return training_losses(trainer.state.log_history), mismatches


def markdown(record: dict, info: dict) -> str:
    lines = ["# E2E SFT: `kasa-peft train --task e2e` vs `KasaSFTTrainer` (TRL)", "",
             f"{machine_sentence(info, ('torch', 'transformers', 'peft', 'trl'))} SmolLM2-135M, KaSA r=8 on "
             f"{', '.join(TARGETS)}, {record['settings']['max_train_samples']} E2E training rows, batch "
             f"{record['settings']['batch_size']}, {record['settings']['max_steps']} steps, lr {LR}, seed {SEED}, at "
             f"most {MAX_LENGTH} tokens. Largest difference of the logged loss: "
             f"{record['max_abs_loss_difference']:.2e} (task loss: {record['max_abs_task_loss_difference']:.2e}); "
             f"first step differing by more than {TOLERANCE}: {record['first_step_beyond_tolerance']}.", "",
             f"Examples TRL tokenized or masked unlike the CLI: {len(record['token_mismatches'])}."]
    for mismatch in record["token_mismatches"]:
        lines.append(f"Example {mismatch['example']} has {mismatch['tokens']} tokens, more than {MAX_LENGTH}: both "
                     "keep the whole target and cut the prompt from the left (`truncation_mode=\"keep_end\"`), but "
                     "the CLI keeps the prompt's leading special token (the chat template's opening "
                     "`<|im_start|>`, `truncate_prompt_target`) where TRL cuts it with the rest, so the two runs "
                     "train on slightly different tokens from the step whose batch holds it, and their parameters "
                     "differ a little from then on.")
    lines += ["",
             "| step | CLI loss | TRL loss | CLI task loss | TRL task loss |", "|---|---|---|---|---|"]
    for cli, trl in zip(record["cli"], record["trl"], strict=True):
        lines.append(f"| {cli['step']} | {cli['loss']:.6f} | {trl['loss']:.6f} | {cli['task_loss']:.6f} | "
                     f"{trl['task_loss']:.6f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-train-samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each run")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    info["versions"]["trl"] = __import__("trl").__version__
    with tempfile.TemporaryDirectory() as tmp:
        command = cli_command(args, Path(tmp) / "cli")
        cli = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        trl_losses, mismatches = trl_run(args, Path(tmp) / "trl")
        _, errors = cli.communicate()
        if cli.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{errors}")
        cli_losses = json.loads((Path(tmp) / "cli" / "metrics.json").read_text())["losses"]
    if [e["step"] for e in cli_losses] != [e["step"] for e in trl_losses]:
        raise SystemExit(f"the runs logged different steps: {cli_losses} vs {trl_losses}")
    record = {"machine": info, "settings": vars(args), "cli_command": command, "token_mismatches": mismatches,
              "cli": cli_losses, "trl": trl_losses,
              **{f"max_abs_{key}_difference": max(abs(a[key] - b[key]) for a, b in zip(cli_losses, trl_losses,
                                                                                         strict=True))
                 for key in ("loss", "task_loss")},
              "first_step_beyond_tolerance": next((a["step"] for a, b in zip(cli_losses, trl_losses, strict=True)
                                                   if abs(a["loss"] - b["loss"]) > TOLERANCE), None)}
    json_path, md_path = write_results("trl_e2e_parity", record, markdown(record, info))
    print(markdown(record, info))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
