"""Greedy decoding with continuous batching against ``model.generate`` one prompt at a time (no padding, no
batch): identical tokens, on tiny random Llama and GPT-2 in float64 (so that float rounding cannot tip an argmax),
with responses that stop at EOS at different steps and others cut at the budget."""

from __future__ import annotations

import collections

import pytest
import torch
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

import kasa_peft
from kasa_peft.pipelines.continuous_batching import greedy_decode
from kasa_peft.pipelines.generation import Completion, Decoding
from tiny_models import VOCAB, tiny_gpt2, tiny_llama

from .helpers import save_tokenizer

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
BUDGET = 12
PAD = 0


def random_prompts(count: int = 9, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (count,), generator=generator).tolist()
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def generate_one(model, prompt: list[int], eos: int, budget: int = BUDGET) -> list[int]:
    """``model.generate``'s greedy new tokens for one unpadded prompt, up to and including EOS."""
    input_ids = torch.tensor([prompt])
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=budget,
                            do_sample=False, pad_token_id=PAD, eos_token_id=eos)
    return output[0, len(prompt):].tolist()


def frequent_token(model, prompts: list[list[int]]) -> int:
    """A token the model emits in many of its free-running continuations: as EOS, it stops rows at different steps."""
    counts = collections.Counter(t for p in prompts for t in set(generate_one(model, p, eos=-1)[1:-2]))
    return counts.most_common(1)[0][0]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("family", MODELS)
def test_tokens_equal_generate_one_prompt_at_a_time(family, batch_size):
    model, prompts = MODELS[family]().double(), random_prompts()
    eos = frequent_token(model, prompts)
    expected = [generate_one(model, p, eos) for p in prompts]
    lengths = {len(tokens) for tokens in expected}
    assert min(lengths) < BUDGET and BUDGET in lengths  # rows stop at different steps, some at the budget
    assert greedy_decode(model, prompts, max_new_tokens=BUDGET, eos_token_ids=[eos], pad_token_id=PAD,
                         batch_size=batch_size, progress=False) == expected


def test_kasa_model_in_training_mode_decodes_in_eval_mode():
    """Adapter dropout is active in training mode, so equal tokens show that decoding switched to eval."""
    model = tiny_llama().double()
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=2, dropout=0.5, target_modules="all-linear"))
    for _, layer in kasa_peft.kasa_layers(model):
        torch.nn.init.normal_(layer.adapters["default"].B, std=0.5)
    prompts = random_prompts(seed=1)
    model.eval()
    eos = frequent_token(model, prompts)
    expected = [generate_one(model, p, eos) for p in prompts]
    model.train()
    tokens = greedy_decode(model, prompts, max_new_tokens=BUDGET, eos_token_ids=[eos], pad_token_id=PAD,
                           batch_size=4, progress=False)
    assert model.training
    assert tokens == expected


def test_a_sliding_window_cache_is_refused_with_what_to_do():
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4)
    with pytest.raises(ValueError, match="full-attention layers.*DynamicSlidingWindowLayer.*generate"):
        greedy_decode(MistralForCausalLM(config), [[5, 6, 7]], max_new_tokens=2, eos_token_ids=[2], pad_token_id=PAD,
                      progress=False)


@pytest.mark.parametrize(("prompts", "settings", "message"), [
    ([[5]], {"batch_size": 0}, "batch_size and max_new_tokens must be at least 1"),
    ([[5]], {"max_new_tokens": 0}, "batch_size and max_new_tokens must be at least 1"),
    ([[5], []], {}, "a prompt encodes to no tokens"),
])
def test_bad_arguments_are_refused(prompts, settings, message):
    with pytest.raises(ValueError, match=message):
        greedy_decode(tiny_llama(), prompts, **{"max_new_tokens": 2, "eos_token_ids": [2], "pad_token_id": PAD,
                                                "progress": False, **settings})


def test_decoding_completions_count_new_tokens_and_budget_hits(tmp_path):
    """``Decoding.complete`` gives the same completions with and without continuous batching, and their lengths and
    budget hits are those of ``generate`` one prompt at a time."""
    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = tiny_llama().double()
    texts = ["The Eagle is a coffee shop", "answer", "the plot was bad", "Please answer the question",
             "food[French]", "The movie was good", "Below is an instruction"]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    # relabel the token the model emits most often as EOS (swapping its embedding and output rows with EOS's
    # gives the same model under new token names), so that some responses stop before the budget
    frequent, eos = frequent_token(model, encoded), tokenizer.eos_token_id
    with torch.no_grad():
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            matrix[[frequent, eos]] = matrix[[eos, frequent]]
    expected = [generate_one(model, ids, eos) for ids in encoded]
    assert {len(tokens) for tokens in expected} > {BUDGET}
    decoding = Decoding(batch_size=3, max_new_tokens=BUDGET, num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                        use_chat_template=False, continuous=True)
    completions = decoding.complete(model, tokenizer, texts)
    assert completions == [Completion(tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens),
                                      len(tokens) == BUDGET and tokens[-1] != eos) for tokens in expected]
    assert any(c.hit_budget for c in completions) and not all(c.hit_budget for c in completions)
    plain = Decoding(batch_size=3, max_new_tokens=BUDGET, num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                     use_chat_template=False)
    assert plain.complete(model, tokenizer, texts) == completions
