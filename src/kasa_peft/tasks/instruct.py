"""Instruction-tuning data (Alpaca / prompt-completion files, Self-Instruct sets) and Super-NI metrics.

Every loader returns ``(prompt, target)`` pairs ready for a causal LM: train on
``prompt + target`` (loss on the target), generate from ``prompt``.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

from ._common import PathLike, check_choice, data_path, read_json_records, require_text_fields
from .hub import INSTRUCT_EVAL, T0_TRAIN, hub_records
from .metrics import check_lengths

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_SELF_INSTRUCT = "instruct/self_instruct"
_EVAL_FILES = {"user_oriented": "user_oriented_instructions.jsonl", "seed": "seed_tasks.jsonl"}
_T0_END_OF_TEXT = "<|endoftext|>"  # GPT-3 fine-tuning stop marker ending every T0 completion
Reference = str | Sequence[str]


def format_instruction(instruction: str, input: str = "") -> str:
    """The Stanford Alpaca prompt (also LLM-Adapters' ``generate_prompt``), ending in ``### Response:\\n``.

    The ``### Input:`` section and the "paired with an input" wording appear only
    when ``input`` is non-empty.
    """
    if input:
        return _ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return _ALPACA_NO_INPUT.format(instruction=instruction)


def load_sft_file(path: PathLike) -> list[tuple[str, str]]:
    """``(prompt, target)`` pairs from a ``.json`` list or ``.jsonl`` file.

    Records are either Alpaca-style (``instruction``, optional ``input``, ``output``;
    the prompt is ``format_instruction(instruction, input)``) or ``prompt``/``completion``
    (used verbatim).
    """
    return _sft_pairs(read_json_records(path), path)


def _sft_pairs(records: list[dict[str, Any]], source: object) -> list[tuple[str, str]]:
    return [_sft_pair(record, f"{source}, record {number}") for number, record in enumerate(records, start=1)]


def _sft_pair(record: dict[str, Any], where: str) -> tuple[str, str]:
    if "instruction" in record and "output" in record:
        require_text_fields(record, ("instruction", "output"), where, optional=("input",))
        return format_instruction(record["instruction"], record.get("input") or ""), record["output"]
    if "prompt" in record and "completion" in record:
        require_text_fields(record, ("prompt", "completion"), where)
        return record["prompt"], record["completion"]
    raise ValueError(
        f"{where}: has fields {sorted(record)}; expected instruction/input/output (Alpaca) or prompt/completion"
    )


def load_t0_train(data_dir: PathLike | None) -> list[tuple[str, str]]:
    """All ``instruct/self_instruct/t0_train_50k_subset/*.jsonl`` pairs, files in name order.

    Without ``data_dir``: the hub's ``yizhongw/self_instruct`` config ``p3``, Self-Instruct's
    whole T0 training set (52,657 pairs); the local files are a 6,800-pair subset of the
    same data (200 pairs of one prompt template per source dataset). Prompts are kept
    verbatim (they are complete P3 prompts ending in a newline, not Alpaca prompts); the
    trailing ``<|endoftext|>`` marker is removed from each completion, since the training
    layer appends its tokenizer's own EOS.
    """
    if data_dir is None:
        return _t0_pairs(hub_records(T0_TRAIN, "train"), T0_TRAIN)
    directory = data_path(data_dir, f"{_SELF_INSTRUCT}/t0_train_50k_subset")
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no .jsonl files: pass --data-dir pointing at the benchmark data")
    return [pair for file in files for pair in _t0_pairs(read_json_records(file), file)]


def _t0_pairs(records: list[dict[str, Any]], source: object) -> list[tuple[str, str]]:
    return [(prompt, completion.removesuffix(_T0_END_OF_TEXT)) for prompt, completion in _sft_pairs(records, source)]


def load_instruct_eval(data_dir: PathLike | None, which: str = "user_oriented") -> list[tuple[str, str]]:
    """Self-Instruct evaluation tasks as ``(format_instruction(instruction, input), output)`` pairs.

    ``which="user_oriented"``: the 252 expert-written tasks (evaluation only, never
    train on them); ``which="seed"``: the 175 seed tasks. Each task's first instance is used.
    Without ``data_dir`` they come from the hub (``hub.INSTRUCT_EVAL``).
    """
    check_choice(which, _EVAL_FILES, "instruction eval set")
    if data_dir is None:
        records = hub_records(INSTRUCT_EVAL[which], "train")
    else:
        records = read_json_records(data_path(data_dir, f"{_SELF_INSTRUCT}/{_EVAL_FILES[which]}"))
    return [_eval_pair(record) for record in records]


def _eval_pair(record: dict[str, Any]) -> tuple[str, str]:
    """The prompt and output of a task's first instance; ``instances`` is a list of ``{input, output}``,
    or, as ``datasets`` returns a sequence of such dicts (hub ``human_eval``), a dict of lists."""
    instances = record["instances"]
    first = {key: values[0] for key, values in instances.items()} if isinstance(instances, dict) else instances[0]
    return format_instruction(record["instruction"], first["input"]), first["output"]


def normalize_answer(text: str) -> str:
    """Super-NaturalInstructions' normalisation: lowercase, drop ASCII punctuation, collapse whitespace.

    Unlike SQuAD's, Super-NI's version keeps articles ("adapted from SQuAD v1.1
    evaluation, without removing the articles").
    """
    lowered = text.lower()
    return " ".join("".join(ch for ch in lowered if ch not in string.punctuation).split())


def exact_match(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Super-NI exact match in percent (0–100); a reference may be a list of accepted answers."""
    return _percent_best_match(predictions, references, lambda p, r: float(normalize_answer(p) == normalize_answer(r)))


def rouge_l(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Super-NI ROUGE-L in percent (0–100): ``rouge-score`` rougeL F-measure with the Porter
    stemmer, best over each example's references, averaged over examples."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return _percent_best_match(
        predictions, references, lambda p, r: scorer.score(target=r, prediction=p)["rougeL"].fmeasure)


def _percent_best_match(predictions: Sequence[str], references: Sequence[Reference],
                        score: Callable[[str, str], float]) -> float:
    check_lengths(predictions, references)
    total = 0.0
    for prediction, reference in zip(predictions, references, strict=True):
        candidates = [reference] if isinstance(reference, str) else list(reference)
        total += max(score(prediction, candidate) for candidate in candidates)
    return 100.0 * total / len(predictions)
