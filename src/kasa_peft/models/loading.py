"""Load the model and tokenizer a ``--model`` spec points to (`kasa_peft.models.sources`).

GGUF files are dequantized once (tens of seconds) into a float32 safetensors copy kept in
``$KASA_PEFT_CACHE`` (default ``$XDG_CACHE_HOME/kasa-peft/models``, i.e. ``~/.cache/kasa-peft/models``);
later loads read that copy (`kasa_peft.models.cache`: an entry is published whole, or not read).

Quantized bases: ``--quantize 4bit|8bit`` loads the model through bitsandbytes, whose layers KaSA reads and
wraps through `kasa_peft.models.bitsandbytes` (imported only when asked for or when such a layer is met).
"""

from __future__ import annotations

import importlib.util
import inspect
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GgufConfig, PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..core.files import check_tensor_file
from ..tasks.hub import hub_reachable, unreachable_hub_message
from . import cache
from .cache import gguf_cache_dir
from .sources import SHORTCUTS, ModelLoadError, ModelSource, reloadable_spec, resolve_model_path

Task = Literal["sequence_classification", "causal_lm"]

_AUTO_CLASSES = {"sequence_classification": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def load_model(spec: str, task: Task, num_labels: int | None = None, dtype: torch.dtype = torch.float32,
               padding_side: Literal["left", "right"] = "right", quantize: Literal["4bit", "8bit"] | None = None,
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model and tokenizer a ``--model`` spec points to.

    Args:
        spec: see :func:`resolve_model_path`.
        task: ``"sequence_classification"`` (the checkpoint's body with a classification head, new and randomly
            initialised unless the checkpoint has one: seed torch first for reproducibility) or ``"causal_lm"``.
        num_labels: classification only: the number of classes, ``1`` for a regression task; ``None`` keeps the
            checkpoint's own head size. A checkpoint head of another size is replaced by a new one.
        dtype: the dtype of the loaded weights.
        padding_side: set explicitly on the tokenizer. ``"right"`` suits classification and training; pass
            ``"left"`` for batched generation with a causal LM.
        quantize: load the linear layers quantized with bitsandbytes (``"4bit"``: NF4 with double quantization,
            computing in ``dtype``; ``"8bit"``: LLM.int8()), as transformers' ``BitsAndBytesConfig`` does; the
            output head and a new classification head stay in ``dtype``. A GGUF file is dequantized first.

    Returns:
        ``(model, tokenizer)``, the model in eval mode. A tokenizer without a pad token gets its eos token as
        pad, and ``model.config.pad_token_id`` is set to match (decoder-only classifiers need it to find the
        last real token). ``model.config.name_or_path`` records a spec that loads the same model again
        (a shortcut name, a hub id or an absolute path), so adapters can name their base.

    Raises:
        ModelLoadError: the spec cannot be resolved or loaded (see the message for the fix).
        ValueError: an unknown task, or ``num_labels`` given for a causal LM.
    """
    model, tokenizer = _load(spec, task, num_labels, dtype, require_tokenizer=True, quantize=quantize)
    assert tokenizer is not None  # require_tokenizer loads one
    tokenizer.padding_side = padding_side
    return model, tokenizer


def load_base(spec: str, task: Task, num_labels: int | None = None) -> PreTrainedModel:
    """``load_model``'s model (float32) for a spec whose directory may hold no tokenizer (a model saved from
    Python): its pad token id then stays as its config says."""
    return _load(spec, task, num_labels, torch.float32, require_tokenizer=False)[0]


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer of a ``--model`` spec; ``None`` for a local directory that holds no tokenizer files."""
    source = resolve_model_path(spec)
    location = _location(source)
    if not _has_tokenizer(source, location):
        return None
    with _explain_load_failure(source):
        return AutoTokenizer.from_pretrained(location, **_hub_kwargs(source))


def _load(spec: str, task: Task, num_labels: int | None, dtype: torch.dtype, require_tokenizer: bool,
          quantize: Literal["4bit", "8bit"] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    model_kwargs = _model_kwargs(task, num_labels, dtype) | _quantization_kwargs(quantize, dtype)
    source = resolve_model_path(spec)
    location = _location(source)
    with _explain_load_failure(source):
        hub = _hub_kwargs(source)
        tokenizer = (AutoTokenizer.from_pretrained(location, **hub)
                     if require_tokenizer or _has_tokenizer(source, location) else None)
        model = _AUTO_CLASSES[task].from_pretrained(location, **model_kwargs, **hub)
    if tokenizer is not None:
        _ensure_pad_token(model, tokenizer)
    model.config.name_or_path = reloadable_spec(spec, source)
    return model.eval(), tokenizer


def natural_task(spec: str) -> Task:
    """The task a checkpoint was made for: ``causal_lm`` for a GGUF file or a ``...ForCausalLM`` /
    ``...LMHeadModel`` architecture, else ``sequence_classification`` (an encoder gets a classification head)."""
    source = resolve_model_path(spec)
    if source.kind == "gguf":
        return "causal_lm"
    with _explain_load_failure(source):
        architectures = AutoConfig.from_pretrained(source.path).architectures or ()
    return "causal_lm" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) \
        else "sequence_classification"


def _location(source: ModelSource) -> str:
    """What ``from_pretrained`` reads: the directory or hub id, or a GGUF file's dequantized copy."""
    return _gguf_converted_dir(source) if source.kind == "gguf" else source.path


def _has_tokenizer(source: ModelSource, location: str) -> bool:
    """Checked by file for local models: transformers 5 builds an empty tokenizer for a directory without one."""
    return source.kind == "hub_id" or any((Path(location) / name).is_file() for name in TOKENIZER_FILES)


def _model_kwargs(task: str, num_labels: int | None, dtype: torch.dtype) -> dict:
    """The ``from_pretrained`` keyword arguments for a task, after checking the arguments."""
    if task not in _AUTO_CLASSES:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(_AUTO_CLASSES)}")
    if task == "causal_lm" and num_labels is not None:
        raise ValueError("num_labels only applies to task='sequence_classification'")
    if num_labels is not None and num_labels < 1:
        raise ValueError(f"num_labels must be >= 1 (1 for regression), got {num_labels}")
    if num_labels is None:
        return {"dtype": dtype}
    # A checkpoint's own classification head of another size is replaced by a new one.
    return {"dtype": dtype, "num_labels": num_labels, "ignore_mismatched_sizes": True}


def _quantization_kwargs(quantize: Literal["4bit", "8bit"] | None, dtype: torch.dtype) -> dict:
    """The ``from_pretrained`` keyword arguments that load the model quantized with bitsandbytes."""
    if quantize is None:
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"--quantize {quantize} needs the bitsandbytes package: run "
                             "`pip install 'kasa-peft[quantized]'` (or `pip install bitsandbytes`).")
    from .bitsandbytes import quantization_config

    on_gpu = torch.cuda.is_available()
    kwargs = {"quantization_config": quantization_config(quantize, dtype), "device_map": "cuda" if on_gpu else "cpu"}
    # bitsandbytes quantizes on the layer's device. On the CPU the layers left in float (embedding, head, norms)
    # would view a memory-mapped checkpoint and keep all of it resident (SmolLM2: 405 MB next to 170 MB of
    # model), so the file is read into memory instead (where transformers has `disable_mmap`: 2026 releases) and
    # freed once the model holds its own tensors.
    if not on_gpu and "disable_mmap" in inspect.signature(PreTrainedModel.from_pretrained).parameters:
        kwargs["disable_mmap"] = True
    return kwargs


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a pad-less tokenizer its eos token as pad, and make the model's config agree."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {model.config.name_or_path!r} has neither a pad nor an eos "
                                 "token, so batches cannot be padded; add a pad token to the checkpoint's tokenizer.")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _hub_kwargs(source: ModelSource) -> dict:
    """``local_files_only=True`` for a hub id when the hub cannot be reached: the local cache, or a fast failure
    (instead of a minute of retries)."""
    return {"local_files_only": True} if source.kind == "hub_id" and not hub_reachable() else {}


@contextmanager
def _explain_load_failure(source: ModelSource) -> Iterator[None]:
    """Turn transformers' OSErrors (missing files, no network, unknown hub id) into an actionable error."""
    try:
        yield
    except pickle.UnpicklingError as error:  # a .bin / .pt holding more than tensors: name the file
        for path in sorted(Path(source.path).glob("*.bin")) + sorted(Path(source.path).glob("*.pt")):
            check_tensor_file(path, "convert the model to safetensors from a trusted copy, or use another model")
        raise ModelLoadError(f"could not load the model at {source.path!r}: a weights file holds more than tensors "
                             f"({error}); use a trusted copy saved as safetensors") from None
    except OSError as error:
        if source.kind == "hub_id":
            alternatives = f"a local model directory, a .gguf file or a shortcut ({', '.join(SHORTCUTS)})"
            if not hub_reachable():
                raise ModelLoadError(f"could not load {source.path!r}: {unreachable_hub_message()} and the model is "
                                     f"not in the local Hugging Face cache; pass {alternatives}") from error
            hint = ("Check the id and your network connection (downloads are off when HF_HUB_OFFLINE=1), or pass "
                    f"{alternatives}.")
            raise ModelLoadError(f"could not load {source.path!r} from the Hugging Face Hub: {error}\n{hint}"
                                 ) from error
        raise ModelLoadError(f"could not load the model at {source.path!r} ({source.description}): {error}") from error


def _gguf_converted_dir(source: ModelSource) -> str:
    """The dequantized copy of a GGUF source, converting (and caching) it on first use."""
    gguf_path = source.gguf_path
    entry = gguf_cache_dir(gguf_path)
    metadata = {"source": str(gguf_path), "transformers": transformers.__version__}
    return str(cache.ensure_cached(entry, lambda staging: _convert_gguf(source, staging), metadata))


def _convert_gguf(source: ModelSource, destination: Path) -> None:
    """Dequantize a GGUF file into a float32 safetensors checkpoint (model and tokenizer) in ``destination``.

    The weights are loaded as a causal LM, which keeps the LM head; :func:`load_model` then builds any task's
    model from the saved copy.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"loading the GGUF file {source.description!r} needs the gguf package: "
                             "run `pip install gguf` (or `pip install 'kasa-peft[gguf]'`).")
    from .gguf_file import read_gguf

    read_gguf(source.gguf_path)  # a damaged or cut-off file is named before transformers reads it
    with _explain_load_failure(source):
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def head_size(tensors: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = ("modules_to_save.",)) -> int | None:
    """The number of outputs of the classification head among an adapter's tensors (``None``: it has none).

    That is the output size of the last 2-D weight under ``prefixes`` (a classifier among the ``modules_to_save``).
    """
    head = [t for k, t in tensors.items() if k.startswith(prefixes) and k.endswith("weight") and t.dim() == 2]
    return head[-1].shape[0] if head else None

