"""lm-evaluation-harness on our commonsense sets agrees with our option log-likelihood accuracy: same examples,
same prompt, same options, for the base model and with a (perturbed, so non-zero) KaSA adapter that lm-eval
sees merged.

The log-likelihoods themselves differ by one known term: lm-eval moves a context's trailing whitespace into the
continuation (``_encode_pair``), and our prompts end in "\n" (the Alpaca template's ``### Response:\n``), so lm-eval
scores ``log p("\n" the correct answer is X | prompt without "\n")``. The extra ``log p("\n" | ...)`` is the same
for every option of an example, so the chosen option, and the accuracy, are the same.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("lm_eval")

from kasa_peft.core import KasaConfig, inject, kasa_layers  # noqa: E402
from kasa_peft.pipelines.harness import harness_tasks, merged_model, run_harness  # noqa: E402
from kasa_peft.pipelines.causal_lm import choose_option, option_logliks  # noqa: E402
from kasa_peft.tasks.commonsense import (  # noqa: E402
    answer_options, answer_target, format_prompt, gold_option, load_commonsense,
)
from .helpers import CORPUS  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

VOCAB = 320  # the 256 byte symbols and some merges

QUESTIONS = ["is the sky blue", "is ice hot", "can fish swim", "do stones float", "is water wet", "is fire cold"]


@pytest.fixture
def commonsense_dir(tmp_path):
    boolq = [{"instruction": f"Please answer the following question with true or false, question: {q}?\n\n"
                             "Answer format: true/false", "input": "", "output": "", "answer": ["true", "false"][i % 2]}
             for i, q in enumerate(QUESTIONS)]
    arc = [{"instruction": f"Please choose the correct answer to the question: {q}?\n\nAnswer1: yes Answer2: no "
                           "Answer3: maybe\n\nAnswer format: answer1/answer2/answer3", "input": "", "output": "",
            "answer": f"answer{i % 3 + 1}"} for i, q in enumerate(QUESTIONS)]
    for name, records in (("boolq", boolq), ("ARC-Easy", arc)):
        (tmp_path / "commonsense" / name).mkdir(parents=True)
        for split in ("train", "test"):  # `kasa-peft eval` builds the whole pipeline, training data included
            (tmp_path / "commonsense" / name / f"{split}.json").write_text(json.dumps(records))
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE, as SmolLM2's and GPT-2's: a continuation after "\n" tokenises the same alone or appended.
    (A SentencePiece/Metaspace tokenizer does not: alone, "the" becomes "▁the"; after "\n", "t" "he". There our
    option log-likelihoods and lm-eval's, which splits the encoded whole, differ by those tokens.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_causal_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def ours(model, tokenizer, commonsense_dir, name: str) -> tuple[list[list[float]], list[float], float]:
    """Our option log-likelihoods, ``log p("\n" | prompt without it)`` per example, and our accuracy."""
    examples = load_commonsense(name, commonsense_dir, "test")
    prompts = [format_prompt(e) for e in examples]
    options = [[answer_target(o) for o in answer_options(name, e)] for e in examples]
    logliks = option_logliks(model, tokenizer, prompts, options, progress=False)
    newline = option_logliks(model, tokenizer, [p.removesuffix("\n") for p in prompts], [["\n"]] * len(prompts),
                             progress=False)
    golds = [gold_option(name, e) for e in examples]
    accuracy = sum(c == g for c, g in zip(choose_option(logliks), golds, strict=True)) / len(golds)
    return logliks, [row[0] for row in newline], accuracy


def lm_eval_logliks(model, tokenizer, commonsense_dir, name: str) -> list[list[float]]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks = harness_tasks([f"commonsense:{name}"], str(commonsense_dir), tokenizer, False, None)
    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=4),
                          tasks=tasks, log_samples=True)
    samples = sorted(next(iter(out["samples"].values())), key=lambda s: s["doc_id"])
    return [[response[0][0] for response in sample["resps"]] for sample in samples]


@pytest.mark.parametrize("name", ["boolq", "ARC-Easy"])
@pytest.mark.parametrize("adapter", [False, True], ids=["base", "adapter"])
def test_lm_eval_acc_equals_our_option_accuracy(commonsense_dir, tokenizer, name, adapter):
    model = tiny_causal_lm()
    if adapter:
        inject(model, KasaConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
        torch.manual_seed(3)
        for _, layer in kasa_layers(model):  # a trained adapter's B is not zero
            for parameter in layer.parameters():
                if parameter.requires_grad:
                    parameter.data.normal_(0, 0.5)
    logliks, newline, accuracy = ours(model, tokenizer, commonsense_dir, name)
    harness = run_harness(copy.deepcopy(model), tokenizer, [f"commonsense:{name}"], str(commonsense_dir), False, 4)
    assert harness[f"kasa_commonsense_{name}"]["acc,none"] == accuracy
    theirs = lm_eval_logliks(merged_model(copy.deepcopy(model)), tokenizer, commonsense_dir, name)
    shifted = [[value + extra for value in row] for row, extra in zip(logliks, newline, strict=True)]
    assert [len(row) for row in theirs] == [len(row) for row in logliks]
    assert sum(theirs, []) == pytest.approx(sum(shifted, []), abs=1e-4)


def test_eval_harness_command_matches_eval_option_accuracy(commonsense_dir, tokenizer, tmp_path, capsys):
    from kasa_peft.cli import main

    model_dir = tmp_path / "model"
    tiny_causal_lm().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    common = ["eval", "--model", str(model_dir), "--task", "commonsense:ARC-Easy", "--data-dir", str(commonsense_dir),
              "--max-eval-samples", "5", "--max-new-tokens", "2"]
    assert main([*common, "--harness", "commonsense:ARC-Easy"]) == 0
    harness = json.loads(capsys.readouterr().out)
    assert main(common) == 0
    ours_metrics = json.loads(capsys.readouterr().out)
    assert harness["kasa_commonsense_ARC-Easy"]["acc,none"] == ours_metrics["ARC-Easy/option_accuracy"]
