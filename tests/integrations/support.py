"""A tiny chat tokenizer and tiny SFT / DPO datasets for the TRL tests (offline, seconds)."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tiny_models import VOCAB, tiny_llama

CORPUS = [
    "name : The Eagle , eatType : coffee shop , food : French , priceRange : moderate , area : riverside",
    "The Eagle is a moderately priced coffee shop serving French food by the riverside .",
    "question : is the sky blue ? answer : yes . question : do cats bark ? answer : no",
    "Aromi is a family friendly Italian restaurant in the city centre near the river .",
]
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
# TRL's assistant-only loss reads {% generation %} blocks; plain SFT on messages needs none
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }}{% else %}"
                 "<|assistant|> {{ m['content'] }}</s>{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TARGETS = ("q_proj", "v_proj")


def tokenizer() -> PreTrainedTokenizerFast:
    """Sentencepiece-style BPE as large as the tiny models' vocabulary, with a chat template."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", additional_special_tokens=["<|user|>", "<|assistant|>"])
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tiny_model(directory: Path) -> Path:
    """tiny_llama and the tokenizer, saved as a model folder (what the examples take as --model)."""
    tiny_llama().save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    return directory


PAIRS = [("name : The Eagle , food : French", "The Eagle serves French food ."),
         ("is the sky blue ?", "yes ."),
         ("do cats bark ?", "no ."),
         ("name : Aromi , area : city centre", "Aromi is in the city centre ."),
         ("name : The Eagle , area : riverside", "The Eagle is by the riverside ."),
         ("is the river near ?", "yes , near the city centre .")]


def prompt_completion(n: int = 12) -> Dataset:
    return Dataset.from_list([{"prompt": p, "completion": " " + c} for p, c in (PAIRS * n)[:n]])


def messages(n: int = 12) -> Dataset:
    return Dataset.from_list([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
                              for p, c in (PAIRS * n)[:n]])


def text(n: int = 12) -> Dataset:
    return Dataset.from_list([{"text": f"{p} {c}"} for p, c in (PAIRS * n)[:n]])


def preferences(n: int = 8) -> Dataset:
    """Prompt, chosen (the right answer) and rejected (another prompt's answer)."""
    rows = [{"prompt": p, "chosen": " " + c, "rejected": " " + PAIRS[(i + 1) % len(PAIRS)][1]}
            for i, (p, c) in enumerate(PAIRS)]
    return Dataset.from_list((rows * n)[:n])
