"""Issue 24: DPO with ``KasaDPOTrainer`` on preference pairs built from the shared E2E data, on SmolLM2-135M.

Each pair is a distinct MR (a fixed subset of ``e2e/train.csv``): the prompt is the MR as the CLI's E2E pipeline
renders it (chat template), ``chosen`` its first human reference, ``rejected`` what the untrained model (the base,
before any adapter) generates for it, greedily: a fluent but unfaithful description. (The fresh KaSA policy itself,
DPO's reference, writes no usable text on SmolLM2: the paper's truncation removes up to 10% of some value
projections' norm.) A fresh KaSA adapter then trains a few steps, and the DPO reward margin (``beta *
(log-ratio of chosen - log-ratio of rejected)``, policy against reference) is evaluated on all pairs before
training (0: the policy is the reference) and after.

    nice -n 5 python benchmarks/trl_dpo_e2e.py [--pairs 8] [--max-steps 16] [--batch-size 1] [--lr 5e-4] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
from common import machine_info, machine_sentence, write_results
from datasets import Dataset
from transformers import set_seed
from trl import DPOConfig

import kasa_peft
from kasa_peft.integrations.trl import KasaDPOTrainer
from kasa_peft.models import load_model
from kasa_peft.pipelines.base import fixed_subset
from kasa_peft.pipelines.causal_lm import generate_texts
from kasa_peft.pipelines.run import CHECKPOINTING_ARGUMENT
from kasa_peft.tasks.e2e import format_mr, format_target, group_references, load_e2e

MODEL, SEED, MAX_LENGTH, TARGETS, LOGGED = "smollm2", 0, 128, ("q_proj", "v_proj"), (
    "loss", "task_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def preference_pairs(model, tokenizer, data_dir: str, count: int, max_new_tokens: int) -> list[dict[str, str]]:
    """``count`` distinct E2E MRs: prompt, chosen (the first reference), rejected (``model``'s greedy output)."""
    mrs, references = group_references(load_e2e(data_dir, "train"))
    chosen = fixed_subset(list(zip(mrs, references, strict=True)), count)
    prompts = [format_mr(mr) for mr, _ in chosen]
    outputs = generate_texts(model, tokenizer, prompts, batch_size=count, max_new_tokens=max_new_tokens,
                             use_chat_template=True, progress=False)
    return [{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=False),
             "chosen": format_target(refs[0]), "rejected": format_target(output)}
            for prompt, (_, refs), output in zip(prompts, chosen, outputs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="length of the generated rejected texts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    info["versions"]["trl"] = __import__("trl").__version__
    model, tokenizer = load_model(MODEL, "causal_lm")
    pairs = preference_pairs(model, tokenizer, args.data_dir, args.pairs, args.max_new_tokens)
    set_seed(SEED)
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=8, alpha=16.0, target_modules=TARGETS))
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(tmp, learning_rate=args.lr, beta=args.beta, max_steps=args.max_steps,
                           per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
                           logging_steps=1, max_length=MAX_LENGTH, seed=SEED, bf16=False, save_strategy="no",
                           report_to="none", dataloader_num_workers=0, use_cpu=not torch.accelerator.is_available(),
                           **{CHECKPOINTING_ARGUMENT: False})
        data = Dataset.from_list(pairs)
        trainer = KasaDPOTrainer(model, args=config, train_dataset=data, eval_dataset=data, processing_class=tokenizer)
        before = trainer.evaluate()
        trainer.train()
        after = trainer.evaluate()
    curve = [{"step": e["step"], **{key: e[key] for key in LOGGED if key in e}}
             for e in trainer.state.log_history if "loss" in e]
    evaluations = {name: {key.removeprefix("eval_"): value for key, value in result.items()
                          if key.removeprefix("eval_") in LOGGED}
                   for name, result in (("before", before), ("after", after))}
    record = {"machine": info, "settings": vars(args), "pairs": pairs, "evaluation": evaluations, "curve": curve,
              "first_loss_minus_ln2": curve[0]["task_loss"] - math.log(2) if "task_loss" in curve[0] else None}
    json_path, md_path = write_results("trl_dpo_e2e", record, markdown(record, info))
    print(markdown(record, info))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


def markdown(record: dict, info: dict) -> str:
    settings, evaluations = record["settings"], record["evaluation"]
    lines = ["# DPO with KasaDPOTrainer on E2E preference pairs", "",
             f"{machine_sentence(info, ('torch', 'transformers', 'peft', 'trl'))} SmolLM2-135M, a fresh KaSA adapter "
             f"(r=8 on {', '.join(TARGETS)}), {settings['pairs']} pairs (chosen: the human reference; rejected: the "
             f"untrained base model's greedy output, at most {settings['max_new_tokens']} tokens), DPO beta "
             f"{settings['beta']}, lr {settings['lr']}, batch {settings['batch_size']}, {settings['max_steps']} "
             "steps. Evaluation on all pairs, policy against its reference (the adapter as training started):", "",
             "| | DPO loss | reward margin | reward accuracy | chosen reward | rejected reward |",
             "|---|---|---|---|---|---|"]
    for name, result in evaluations.items():
        lines.append(f"| {name} training | {result['loss']:.4f} | {result['rewards/margins']:.4f} | "
                     f"{result['rewards/accuracies']:.2f} | {result['rewards/chosen']:.4f} | "
                     f"{result['rewards/rejected']:.4f} |")
    lines += ["", "Training curve (each step's batch; `loss` includes KaSA's regulariser, `task_loss` is DPO's):", "",
              "| step | loss | task loss | reward margin | reward accuracy |", "|---|---|---|---|---|"]
    lines += [f"| {e['step']} | {e['loss']:.4f} | {e.get('task_loss', float('nan')):.4f} | "
              f"{e.get('rewards/margins', float('nan')):.4f} | {e.get('rewards/accuracies', float('nan')):.2f} |"
              for e in record["curve"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
