"""KaSA in ``transformers.Trainer``: `KasaTrainerMixin`, for any Trainer subclass (TRL's too), and `KasaTrainer`.

The mixin trains a `PreparedModel` (or a model adapted by ``kasa_peft.inject`` / ``load_adapter``) the way its
method is defined:

* the loss is ``task loss + beta * L2 + gamma * L3`` for ``kasa`` / ``peft-kasa`` (added automatically:
  forgetting it silently changes the method); ``task_loss``, ``reg_l2`` (``beta * L2``) and ``reg_l3``
  (``gamma * L3``) are logged next to ``loss``, averaged over the logging interval in the same units, so
  ``loss = task_loss + reg_l2 + reg_l3``. Evaluation losses are task losses only, comparable across methods;
* the optimizer trains the head (``modules_to_save``) at ``head_lr`` and the rest at ``learning_rate``;
* checkpoints hold what `PreparedModel.save` writes (an adapter, not the base model) plus Trainer's
  optimizer, scheduler and RNG states; resuming and ``load_best_model_at_end`` read them back. Under
  DDP and FSDP (``kasa`` only) one complete adapter is written, by rank 0;
* AdaLoRA's rank allocator runs after every optimizer step, DyLoRA draws its rank before each;
* gradient accumulation averages a sequence classifier's loss over micro-batches (Trainer would sum them);
* a non-finite training loss stops training with `NonFiniteLossError` at the step it appears, before that
  step's update or checkpoint, so no diverged adapter is saved.

``class T(KasaTrainerMixin, SomeTrainer)`` and ``class T(SomeTrainer, KasaTrainerMixin)`` both work: the mixin is a
``Trainer`` subclass, so it sits between ``SomeTrainer`` and ``Trainer`` in the second order, and it wraps the
instance's ``compute_loss`` (whichever class defines it) rather than overriding it, because trainers such as TRL's
compute their loss without calling ``super().compute_loss``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from transformers import TrainerCallback
from transformers.trainer import SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..core import RegularizationTerms
from ..core.files import reporting_full_disk
from .loop import param_groups
from .methods import PreparedModel, is_sequence_classifier, prepared_from_adapter, unwrap_peft

LOGGED_TERMS = ("task_loss", "reg_l2", "reg_l3")


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite: training diverged."""


class KasaTrainerMixin(transformers.Trainer):
    """``SomeTrainer``'s arguments plus ``prepared=None, head_lr=None``.

    The model is ``prepared.model``, or without ``prepared`` the ``model`` argument, which must carry exactly one
    KaSA adapter, active and unmerged (``kasa_peft.inject`` / ``load_adapter``; its config gives ``beta``, ``gamma``
    and ``modules_to_save``).
    """

    def __init__(self, *args, prepared: PreparedModel | None = None, head_lr: float | None = None, **kwargs) -> None:
        model = args[0] if args else kwargs.get("model")
        if prepared is None:
            prepared = prepared_from_adapter(cast(torch.nn.Module, model))  # it refuses what is not a model
        elif model is None:
            kwargs["model"] = model = prepared.model
        elif model is not prepared.model:
            raise ValueError(f"{type(self).__name__} trains prepared.model: pass prepared=prepare_model(model, spec) "
                             "and no other model")
        with _adapters_declared(cast(torch.nn.Module, model)):
            super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled and prepared.spec.method != "kasa":
            raise ValueError(f"FSDP runs method 'kasa' only; train '{prepared.spec.method}' under DDP "
                             "(configs/accelerate/ddp.yaml), which holds a whole model per GPU")
        self.prepared = prepared
        self.head_lr = head_lr
        if is_sequence_classifier(unwrap_peft(prepared.model)):
            # BERT/RoBERTa heads take **kwargs but ignore num_items_in_batch and return a per-batch mean, which
            # Trainer would then leave undivided under gradient accumulation; a per-batch mean divided by the
            # accumulation steps is right for every sequence classifier.
            self.model_accepts_loss_kwargs = False
        self._term_sums = torch.zeros(len(LOGGED_TERMS), dtype=torch.float64)
        self._term_steps: set[int] = set()
        self.add_callback(_AfterOptimizerStep(prepared))
        # module docstring: either base-class order; replacing the method on this instance is the point
        self.compute_loss = self._regularized(self.compute_loss)  # type: ignore[method-assign]

    def _regularized(self, task_loss_of: Callable) -> Callable:
        """``compute_loss`` giving ``task_loss_of``'s loss plus, in training, the method's regularization."""

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            result = task_loss_of(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            terms = self.prepared.regularization() if model.training else None
            if terms is None:
                return result
            task_loss, outputs = result if return_outputs else (result, None)
            steps = getattr(self, "current_gradient_accumulation_steps", 1)  # set by Trainer's loop
            # Trainer divides a per-batch loss by the accumulation steps itself; a loss already normalised over
            # the accumulated batch is not divided, so the penalty must be (it counts once per optimizer step).
            scaled = self._task_loss_scaled_for_accumulation(num_items_in_batch)
            share = 1.0 / steps if scaled else 1.0
            loss = task_loss + share * terms.total.to(task_loss.device)
            self._record(task_loss.detach() * (1.0 if scaled else 1.0 / steps), terms, steps)
            return (loss, outputs) if return_outputs else loss

        return compute_loss

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Trainer's step; raises `NonFiniteLossError` when its loss is NaN or infinite."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            raise NonFiniteLossError(
                f"the training loss became {loss.float().mean().item()} at step {self.state.global_step + 1}, so "
                "training diverged and no adapter was saved; lower --lr (and --head-lr), check the data for "
                "extreme values, then train again")
        return loss

    def _task_loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        """Trainer.training_step's rule for whether the loss is already normalised over accumulated batches."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _record(self, task_share: torch.Tensor, terms: RegularizationTerms, steps: int) -> None:
        """Add one micro-batch's contribution to the logged terms, as Trainer adds it to the logged loss."""
        values = torch.stack([task_share.float().cpu(), terms.singular_value.detach().float().cpu() / steps,
                              terms.orthogonality.detach().float().cpu() / steps])
        self._term_sums += values.double()
        self._term_steps.add(self.state.global_step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_steps:
            sums = nested_gather(self._term_sums.to(self.args.device), self.args.parallel_mode)
            means = sums.reshape(-1, len(LOGGED_TERMS)).mean(dim=0) / len(self._term_steps)
            logs.update({name: value.item() for name, value in zip(LOGGED_TERMS, means, strict=True)})
            self._term_sums.zero_()
            self._term_steps.clear()
        super().log(logs, start_time)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """``args.optim`` over `param_groups`: head at ``head_lr``, the rest at ``args.learning_rate``; weight
        decay on the parameters Trainer decays."""
        if self.optimizer is None:
            opt_model: Any = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            groups = param_groups(opt_model, self.args.learning_rate, self.head_lr, self.args.weight_decay,
                                  head_modules=self.prepared.head_modules,
                                  decay_names=self.get_decay_parameter_names(opt_model))
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`PreparedModel.save` (an adapter for every method but ``fft``) on every rank, then the tokenizer and
        training arguments from rank 0. Under DDP/FSDP every rank joins the adapter's gathering (Trainer's own
        FSDP saving would gather the whole model, or skip the model for sharded checkpoints)."""
        output_dir = cast(str, output_dir if output_dir is not None else self.args.output_dir)  # the args set it
        self.prepared.save(output_dir)
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP: the optimizer's shards and the scheduler, without the sharded copy of the whole model, base
        included, that Trainer would add (resuming reads the checkpoint's adapter)."""
        if not self.is_fsdp_enabled:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        from accelerate.utils import save_fsdp_optimizer

        plugin = self.accelerator.state.fsdp_plugin
        save_fsdp_optimizer(plugin, self.accelerator, self.optimizer, self.model, output_dir)
        if self.args.should_save:
            scheduler = cast(torch.optim.lr_scheduler.LRScheduler, self.lr_scheduler)  # made with the optimizer
            torch.save(scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's; when the disk fills up (or a file-size limit is hit) mid-way, the partial checkpoint is
        removed (a resume would skip it anyway) and the error names the file it was writing."""
        checkpoint = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            with reporting_full_disk(checkpoint):
                super()._save_checkpoint(model, trial)
        except OSError:
            if self.args.should_save:
                shutil.rmtree(checkpoint, ignore_errors=True)
            raise

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self.prepared.load_checkpoint(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.prepared.load_checkpoint(cast(str, self.state.best_model_checkpoint))  # Trainer calls this once it is set


class KasaTrainer(KasaTrainerMixin, transformers.Trainer):
    """``Trainer(*args, prepared=..., head_lr=None, **kwargs)``; the model is ``prepared.model``."""

    def __init__(self, *args, prepared: PreparedModel, head_lr: float | None = None, **kwargs) -> None:
        super().__init__(*args, prepared=prepared, head_lr=head_lr, **kwargs)


@contextlib.contextmanager
def _adapters_declared(model: torch.nn.Module) -> Iterator[None]:
    """Trainer refuses a quantized transformers model that carries no PEFT adapter ("purely quantized"); a KaSA
    adapter trains beside the quantized weights just as well, so for the check the model says it has adapters."""
    declare = getattr(model, "is_quantized", False) and not getattr(model, "_hf_peft_config_loaded", False)
    if declare:
        cast(Any, model)._hf_peft_config_loaded = True
    try:
        yield
    finally:
        if declare:
            del model._hf_peft_config_loaded


class _AfterOptimizerStep(TrainerCallback):
    """Runs `PreparedModel.on_optimizer_step` after the optimizer step, while gradients are still there (and
    `PreparedModel.on_step_begin` before each step)."""

    def __init__(self, prepared: PreparedModel) -> None:
        self.prepared = prepared

    def on_step_begin(self, args, state, control, **kwargs):
        self.prepared.on_step_begin(state.global_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.prepared.on_optimizer_step(state.global_step)  # 0-based: global_step is incremented afterwards
