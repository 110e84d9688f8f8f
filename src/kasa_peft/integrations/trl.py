"""KaSA in TRL: `KasaSFTTrainer` and `KasaDPOTrainer` (``pip install 'kasa-peft[trl]'``).

Both are built exactly as TRL's own trainers (``model=``, ``args=``, ``train_dataset=``, ``processing_class=``, ...),
from a model already adapted by ``kasa_peft.inject`` / ``load_adapter``, or from a base model (an object or a path,
loaded as TRL loads it) plus ``kasa_config=KasaConfig(...)``, which adapts it (under ``torchrun`` / ``accelerate``
the truncation is computed once, shared by every rank). Everything else is TRL's: prompt/completion and
``messages`` data, completion-only loss, packing, its defaults. What `KasaTrainerMixin` adds: the loss is
``task loss + beta * L2 + gamma * L3`` with the three terms logged, ``save_model`` and every checkpoint hold the
KaSA adapter (a few MB, what ``load_adapter``, ``kasa-peft export`` and ``kasa-peft eval --adapter`` read) and
resume exactly, ``head_lr`` trains ``modules_to_save`` at its own rate.

DPO's reference is the policy as it starts, computed on the same base weights: a frozen copy of the adapter, held
as a second adapter (``<name>_dpo_reference``) that shares the adapter's truncation. For a fresh adapter
(``B = 0``) that is the truncated base with a zero update; for an adapter being continued (SFT, then DPO) it is
that adapter. No second model is loaded, so the first DPO loss is ``ln 2``. TRL calls the reference as a model
(`DPOReference`): it runs the policy with the reference adapter, also for ``precompute_ref_log_probs``.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from ..core import KasaConfig, kasa_state
from ..core.model import STATE_ATTRIBUTE, computing_with, copy_adapter, unchanged_on_error
from ..training.distributed import inject_distributed
from ..training.methods import prepared_from_adapter
from ..training.trainer import KasaTrainerMixin

try:
    from transformers import set_seed
    from trl import DPOTrainer, SFTTrainer
    from trl.trainer.utils import create_model_from_path
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(f"kasa_peft.integrations.trl needs TRL ({err}): pip install 'kasa-peft[trl]'") from err

REFERENCE_SUFFIX = "_dpo_reference"
DEFAULT_SEED = 42  # TrainingArguments' default, used when no args are given


class KasaSFTTrainer(KasaTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` training a KaSA adapter.

    Args:
        model: a model adapted by ``kasa_peft.inject`` / ``load_adapter`` (one adapter), or with ``kasa_config`` a
            base model or its path (loaded with ``args.model_init_kwargs``, as TRL does).
        args: ``trl.SFTConfig`` (or ``TrainingArguments``).
        kasa_config: adapts ``model`` before training (seeded with ``args.seed``).
        head_lr: learning rate of ``modules_to_save`` (default: ``args.learning_rate``).
        **kwargs: the other arguments of ``trl.SFTTrainer`` (``train_dataset``, ``processing_class``, ...), except
            ``peft_config``.

    A failed construction leaves the model as it was given.
    """

    def __init__(self, model: nn.Module | str, args: Any = None, *, kasa_config: KasaConfig | None = None,
                 head_lr: float | None = None, **kwargs: Any) -> None:
        name = type(self).__name__
        refuse_peft_config(kwargs, name)
        model = loaded(model, kasa_config, args, name)
        with unchanged_on_error(model):
            adapt(model, kasa_config, args, name)
            super().__init__(model=model, args=args, head_lr=head_lr, **kwargs)


class KasaDPOTrainer(KasaTrainerMixin, DPOTrainer):
    """``trl.DPOTrainer`` training a KaSA adapter against the policy as it starts (module docstring).

    Args:
        model, kasa_config, head_lr: as for `KasaSFTTrainer`.
        ref_model: must be left out: the reference is the adapter's frozen copy on the same base.
        args: ``trl.DPOConfig``; ``sync_ref_model`` is refused (the reference is fixed).
        **kwargs: the other arguments of ``trl.DPOTrainer``, except ``peft_config``.

    The model keeps the reference adapter (``<name>_dpo_reference``) after training (``save_model`` and
    ``kasa_peft.save_adapter`` write the trained one); ``kasa_peft.delete_adapter`` removes it. A failed
    construction leaves the model as it was given.
    """

    def __init__(self, model: nn.Module | str, ref_model: nn.Module | None = None, args: Any = None, *,
                 kasa_config: KasaConfig | None = None, head_lr: float | None = None, **kwargs: Any) -> None:
        name = type(self).__name__
        if ref_model is not None:
            raise ValueError(f"{name} got a ref_model, but its reference is the KaSA policy as it starts, computed on "
                             "the same base weights (a frozen copy of the adapter; for a fresh adapter the truncated "
                             "base): that is what it uses, and no second model is needed. Leave ref_model out")
        if args is not None and getattr(args, "sync_ref_model", False):
            raise ValueError(f"{name} keeps the reference fixed (the adapter as training starts); set "
                             "sync_ref_model=False")
        refuse_peft_config(kwargs, name)
        model = loaded(model, kasa_config, args, name)
        with unchanged_on_error(model):
            adapt(model, kasa_config, args, name)
            prepared = prepared_from_adapter(model)
            active = cast(str, kasa_state(model).active)  # adapt made one active
            reference = active + REFERENCE_SUFFIX
            copy_adapter(model, active, reference)
            super().__init__(model=model, ref_model=DPOReference(model, reference), args=args, prepared=prepared,
                             head_lr=head_lr, **kwargs)


class DPOReference(nn.Module):
    """What `KasaDPOTrainer` gives TRL as its reference model: ``policy`` computing with adapter ``adapter_name``.

    It holds no parameters of its own (the policy is not registered as a submodule, so Accelerate prepares nothing
    twice). Calling it runs the policy (``__call__``, not ``forward``: TRL replaces the reference's ``forward`` with
    its fused LM head, which the policy already has); ``state_dict`` is the policy's, reference adapter included, so
    TRL's cache of precomputed reference log-probabilities is keyed on the reference's values.
    """

    policy: nn.Module  # in __dict__, not registered as a submodule

    def __init__(self, policy: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.__dict__["policy"] = policy
        self.adapter_name = adapter_name
        self.config = policy.config

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with computing_with(self.policy, self.adapter_name):
            return self.policy(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy.state_dict(*args, **kwargs)


def refuse_peft_config(kwargs: dict[str, Any], trainer: str) -> None:
    if kwargs.get("peft_config") is not None:
        raise ValueError(f"{trainer} trains a KaSA adapter, not a PEFT one: pass kasa_config=kasa_peft.KasaConfig(...) "
                         "instead of peft_config (or use trl's own trainer for a PEFT adapter)")


def loaded(model: nn.Module | str, kasa_config: KasaConfig | None, args: Any, trainer: str) -> nn.Module:
    """``model``, or the model at path ``model`` loaded as TRL loads it (``args.model_init_kwargs``) when
    ``kasa_config`` will adapt it."""
    if not isinstance(model, str):
        return model
    if kasa_config is None:
        raise ValueError(f"{trainer} got the path {model!r} and no kasa_config: pass kasa_config=KasaConfig(...) to "
                         "adapt it, or a model adapted with kasa_peft.inject / load_adapter")
    return create_model_from_path(model, **dict(getattr(args, "model_init_kwargs", None) or {}))


def adapt(model: nn.Module, kasa_config: KasaConfig | None, args: Any, trainer: str) -> None:
    """Check that ``model`` can train: with ``kasa_config`` a base model, which it adapts (the truncation shared by
    the ranks of a distributed run); without it, a model carrying exactly one KaSA adapter."""
    if kasa_config is None:
        prepared_from_adapter(model)  # one clear error before TRL does anything
        return
    if not isinstance(kasa_config, KasaConfig):
        raise TypeError(f"{trainer}: kasa_config must be a kasa_peft.KasaConfig, got {type(kasa_config).__name__}")
    if getattr(model, STATE_ATTRIBUTE, None) is not None:
        raise ValueError(f"{trainer} got kasa_config and a model that already has the KaSA adapters "
                         f"{sorted(kasa_state(model).configs)}: pass one or the other (kasa_config adapts a base "
                         "model; an adapted model trains with its own config)")
    if hasattr(model, "peft_config"):
        raise ValueError(f"{trainer} got a PEFT model ({type(model).__name__}); KaSA adapts the base model: pass "
                         "model.get_base_model() (or the model before get_peft_model) with kasa_config")
    set_seed(getattr(args, "seed", DEFAULT_SEED))  # the adapter's initialisation (A, sigma), as TRL seeds PEFT's
    inject_distributed(model, kasa_config)
