"""Causal-LM utilities on tiny random Llama / GPT-2 with a tiny BPE tokenizer trained here (offline)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import kasa_peft
from kasa_peft.pipelines.causal_lm import (
    IGNORE_INDEX, CausalLMCollator, choose_option, encode_prompt_target, generate_texts, option_logliks,
)
from tiny_models import VOCAB, tiny_gpt2, tiny_llama

CORPUS = [
    "name : The Eagle , eatType : coffee shop , food : French , priceRange : moderate , area : riverside",
    "The Eagle is a moderately priced coffee shop serving French food by the riverside .",
    "question : is the sky blue ? answer : yes . question : do cats bark ? answer : no",
    "Aromi is a family friendly Italian restaurant in the city centre near the river .",
    "the quick brown fox jumps over the lazy dog while the cat sat on the mat",
    "Please choose the correct answer : the sun rises in the east and sets in the west",
]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<s><|user|> {{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = ["name : The Eagle , food : French", "is the sky blue ?", "the cat",
           "Aromi is a family friendly Italian restaurant in the city", "the sun rises in the"]
MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Sentencepiece-style BPE (``▁`` word prefix, BOS added), exactly as large as the tiny models' vocab."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>", unk_token="<unk>",
                                      additional_special_tokens=["<|user|>", "<|assistant|>"])
    assert len(wrapped) == VOCAB and wrapped.bos_token_id == 1
    return wrapped


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    chat = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    chat.chat_template = CHAT_TEMPLATE
    return chat


def ids(tokenizer, text: str, special: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


# --- encode_prompt_target -------------------------------------------------------------------------------

def test_labels_mask_exactly_the_prompt(tokenizer):
    prompt, target = "name : The Eagle , food : French", "The Eagle serves French food ."
    example = encode_prompt_target(tokenizer, prompt, target, max_length=64)
    prompt_ids = [tokenizer.bos_token_id] + ids(tokenizer, prompt, special=False)
    target_ids = ids(tokenizer, target, special=False) + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt_ids + target_ids
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + target_ids
    assert example["attention_mask"] == [1] * len(prompt_ids + target_ids)


def test_ids_equal_the_whole_text_tokenised_at_once(tokenizer):
    """With a word-prefix (``▁``) tokenizer, prompt and target tokenised apart = the joined text tokenised."""
    for prompt, target in [("is the sky blue ? answer :", "yes"), ("the quick brown", "fox jumps over")]:
        example = encode_prompt_target(tokenizer, prompt, target, max_length=64)
        assert example["input_ids"] == ids(tokenizer, f"{prompt} {target}") + [tokenizer.eos_token_id]
        target_labels = [t for t in example["labels"] if t != IGNORE_INDEX]
        assert tokenizer.decode(target_labels, skip_special_tokens=True) == target


def test_train_on_prompt_labels_every_token(tokenizer):
    example = encode_prompt_target(tokenizer, "the cat", "sat on the mat", max_length=64, train_on_prompt=True)
    assert example["labels"] == example["input_ids"]


def test_chat_template_renders_the_prompt_once_with_the_assistant_header(chat_tokenizer):
    example = encode_prompt_target(chat_tokenizer, "is the sky blue ?", "yes", max_length=64, use_chat_template=True)
    rendered = ids(chat_tokenizer, "<s><|user|> is the sky blue ?<|assistant|>", special=False)
    target_ids = ids(chat_tokenizer, "yes", special=False) + [chat_tokenizer.eos_token_id]
    assert example["input_ids"] == rendered + target_ids
    assert example["input_ids"].count(chat_tokenizer.bos_token_id) == 1
    assert example["labels"] == [IGNORE_INDEX] * len(rendered) + target_ids
    assert chat_tokenizer.convert_ids_to_tokens(rendered[-1]) == "<|assistant|>"


def test_chat_template_missing_is_an_actionable_error(tokenizer):
    with pytest.raises(ValueError, match="chat_template"):
        encode_prompt_target(tokenizer, "the cat", "sat", max_length=64, use_chat_template=True)


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_bos(tokenizer):
    prompt, target = "the quick brown fox jumps over the lazy dog", "the cat sat"
    body = ids(tokenizer, prompt, special=False)
    target_ids = ids(tokenizer, target, special=False) + [tokenizer.eos_token_id]
    max_length = 1 + 3 + len(target_ids)
    example = encode_prompt_target(tokenizer, prompt, target, max_length=max_length)
    assert example["input_ids"] == [tokenizer.bos_token_id] + body[-3:] + target_ids
    assert example["labels"] == [IGNORE_INDEX] * 4 + target_ids
    assert len(example["attention_mask"]) == max_length


def test_truncation_cuts_a_target_longer_than_max_length_from_the_right(tokenizer):
    target = "the quick brown fox jumps over the lazy dog"
    target_ids = ids(tokenizer, target, special=False)
    example = encode_prompt_target(tokenizer, "the cat", target, max_length=5)
    assert example["input_ids"] == [tokenizer.bos_token_id] + target_ids[:4]
    assert example["labels"] == [IGNORE_INDEX] + target_ids[:4]
    with pytest.raises(ValueError, match="max_length"):
        encode_prompt_target(tokenizer, "the cat", target, max_length=1)


# --- collator -------------------------------------------------------------------------------------------

def test_collator_right_pads_ids_mask_and_labels():
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
                {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    batch = CausalLMCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert CausalLMCollator(pad_token_id=0, pad_to_multiple_of=4)(features)["labels"].shape == (2, 4)


# --- generation -----------------------------------------------------------------------------------------

def generate_one_by_one(model, tokenizer, prompts: list[str], **settings) -> list[str]:
    """Reference: each prompt alone through ``model.generate`` (no padding at all)."""
    texts = []
    for prompt in prompts:
        input_ids = torch.tensor([ids(tokenizer, prompt)])
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                **settings)
        texts.append(tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip())
    return texts


@pytest.mark.parametrize("family", MODELS)
def test_batched_greedy_generation_equals_one_by_one_in_input_order(family, tokenizer):
    model = MODELS[family]().train()
    texts = generate_texts(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    assert texts == generate_one_by_one(model.eval(), tokenizer, PROMPTS, max_new_tokens=8, do_sample=False)
    assert len(set(texts)) > 1  # distinct outputs, so an order mix-up would show
    assert tokenizer.padding_side == "right"


def test_kasa_model_in_training_mode_generates_and_scores_in_eval_mode(tokenizer):
    """Adapter dropout is active in training mode, so equal results show the functions switched to eval."""
    model = tiny_llama()
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=2, dropout=0.5, target_modules="all-linear"))
    for _, layer in kasa_peft.kasa_layers(model):
        torch.nn.init.normal_(layer.adapters["default"].B, std=0.5)  # a non-zero update on the dropout path
    model.train()
    texts = generate_texts(model, tokenizer, PROMPTS, batch_size=2, max_new_tokens=8, progress=False)
    scores = option_logliks(model, tokenizer, PROMPTS[:1], [["the cat", "is"]], progress=False)
    assert model.training
    model.eval()
    assert texts == generate_one_by_one(model, tokenizer, PROMPTS, max_new_tokens=8, do_sample=False)
    expected = [full_sequence_loglik(model, ids(tokenizer, PROMPTS[0]), ids(tokenizer, o, special=False))
                for o in ("the cat", "is")]
    assert scores[0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("family", MODELS)
def test_beam_settings_reach_generate(family, tokenizer):
    model = MODELS[family]()
    beam = {"num_beams": 3, "length_penalty": 0.9, "no_repeat_ngram_size": 2}
    texts = generate_texts(model, tokenizer, PROMPTS, batch_size=1, max_new_tokens=8, progress=False, **beam)
    assert texts == generate_one_by_one(model, tokenizer, PROMPTS, max_new_tokens=8, **beam)
    assert texts != generate_texts(model, tokenizer, PROMPTS, batch_size=1, max_new_tokens=8, progress=False)


# --- option scoring -------------------------------------------------------------------------------------

def full_sequence_loglik(model, prompt_ids: list[int], option_ids: list[int]) -> float:
    """Reference: one forward pass over the whole sequence, summing log p of the option's tokens."""
    sequence = torch.tensor([prompt_ids + option_ids])
    with torch.no_grad():
        log_probs = model(sequence).logits[0].log_softmax(-1)
    return sum(log_probs[len(prompt_ids) + t - 1, token].item() for t, token in enumerate(option_ids))


@pytest.mark.parametrize("family", MODELS)
def test_option_logliks_equal_a_plain_forward_pass_batched_or_not(family, tokenizer):
    model = MODELS[family]()
    prompts = ["is the sky blue ? answer :", "the quick brown fox jumps over the lazy"]
    options = [["yes", "no", "the cat sat on the mat"], ["dog", "cat"]]
    expected = [[full_sequence_loglik(model, ids(tokenizer, p), ids(tokenizer, o, special=False)) for o in row]
                for p, row in zip(prompts, options, strict=True)]
    for batch_size in (1, 3, 8):
        scores = option_logliks(model, tokenizer, prompts, options, batch_size=batch_size, progress=False)
        assert [len(row) for row in scores] == [3, 2]
        assert torch.allclose(torch.tensor(sum(scores, [])), torch.tensor(sum(expected, [])), atol=1e-4)


def test_option_logliks_of_a_peft_model_share_the_prompt_through_the_wrapper(tokenizer):
    """A PEFT wrapper takes the cache by the keyword of the model it wraps; one-token options are scored by the
    prompt's last logits alone."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # a non-zero update, so the adapter changes every score
    prompt, options = "is the sky blue ? answer :", ["?", "no", "the cat sat on the mat"]
    assert min(len(ids(tokenizer, o, special=False)) for o in options) == 1
    expected = [full_sequence_loglik(model, ids(tokenizer, prompt), ids(tokenizer, o, special=False)) for o in options]
    with model.disable_adapter():
        base = [full_sequence_loglik(model, ids(tokenizer, prompt), ids(tokenizer, o, special=False)) for o in options]
    assert max(abs(a - b) for a, b in zip(expected, base, strict=True)) > 1e-3
    scores = option_logliks(model, tokenizer, [prompt], [options], batch_size=2, progress=False)
    assert scores[0] == pytest.approx(expected, abs=1e-4)


def test_option_logliks_with_chat_template(chat_tokenizer):
    model = tiny_llama()
    prompt_ids = ids(chat_tokenizer, "<s><|user|> is the sky blue ?<|assistant|>", special=False)
    expected = [full_sequence_loglik(model, prompt_ids, ids(chat_tokenizer, o, special=False)) for o in ("yes", "no")]
    scores = option_logliks(model, chat_tokenizer, ["is the sky blue ?"], [["yes", "no"]], use_chat_template=True,
                            progress=False)
    assert scores[0] == pytest.approx(expected, abs=1e-4)


def test_option_logliks_rejects_mismatched_lists(tokenizer):
    with pytest.raises(ValueError, match="one list per prompt"):
        option_logliks(tiny_llama(), tokenizer, ["a", "b"], [["x"]], progress=False)


# --- choose_option --------------------------------------------------------------------------------------

def test_choose_option_argmax_and_length_normalisation():
    logliks = [[-3.0, -2.0, -5.0], [-4.0, -6.0], [-1.0, -1.0]]
    assert choose_option(logliks) == [1, 0, 0]
    # per-token: -1.5, -2.0, -1.25 | -4.0, -2.0 | -1.0, -0.5
    assert choose_option(logliks, normalize_by_length=[[2, 1, 4], [1, 3], [1, 2]]) == [2, 1, 1]
    with pytest.raises(ValueError, match="one length per option"):
        choose_option(logliks, normalize_by_length=[[1, 1, 1]])
