"""Worker functions for tests/training/test_distributed.py: run on every rank of a 2-process gloo group.

Everything a worker learns is written under ``out`` (``torch.save`` / adapter directories) for the test to check.
The training recipe is shared with the single-process reference, so the two can only differ by distribution.
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import timedelta
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import kasa_peft.training.distributed as distributed
from accelerate.state import AcceleratorState
from kasa_peft import KasaConfig, dropped_components, inject, kasa_state, load_adapter, regularization_loss
from kasa_peft.training.distributed import inject_distributed, save_adapter_distributed
from tiny_models import tiny_llama, token_batch
from training import kasa_trainer_script

WORLD_SIZE = 2
GLOBAL_BATCH = 4
# large penalty weights, so that a wrong regulariser gradient shows in the trained adapter
CONFIG = KasaConfig(r=4, target_modules="all-linear", beta=0.05, gamma=0.05)
WITHOUT_REGULARIZER = CONFIG.replace(beta=0.0, gamma=0.0)
INIT_SEED = 100  # rank i seeds INIT_SEED + i before injecting: only rank 0's adapter init may survive
LEARNING_RATE = 1e-2
# a collective whose peer died fails after this instead of gloo's 30-minute default
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def launch(worker: Callable, out: Path, *args, world_size: int = WORLD_SIZE) -> None:
    """Run ``worker(rank, out, *args)`` on forked processes joined in a gloo group (a file store in ``out``);
    with ``world_size=1``, in one forked process without a group."""
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"store-{worker.__name__}-{len(list(out.glob('store-*')))}"
    mp.start_processes(_entry, args=(worker, str(store), out, args, world_size), nprocs=world_size,
                       start_method="fork")


def _entry(rank: int, worker: Callable, store: str, out: Path, args: tuple, world_size: int) -> None:
    torch.set_num_threads(1)
    if world_size == 1:
        return worker(rank, out, *args)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    worker(rank, out, *args)
    # only after success: a failed rank must exit at once, so that a peer waiting in a collective sees the
    # connection close (destroy_process_group's shutdown would wait for that peer, and the two would hang)
    dist.destroy_process_group()


def step_batch(step: int) -> torch.Tensor:
    return token_batch(GLOBAL_BATCH, 8, seed=step)


def rank_rows(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    share = batch.shape[0] // world_size
    return batch[rank * share:(rank + 1) * share]


def train_steps(model: nn.Module, kasa_model: nn.Module, optimizer: torch.optim.Optimizer, steps: range,
                rank: int = 0, world_size: int = 1, crash_at: int | None = None) -> None:
    """AdamW steps on ``step_batch(step)``, this rank's rows; loss = causal-LM loss + KaSA regulariser.

    ``model`` is what is called (possibly DDP-wrapped), ``kasa_model`` the module holding the adapters.
    """
    for step in steps:
        if step == crash_at:
            raise RuntimeError(f"simulated crash of rank {rank} at step {step}")
        rows = rank_rows(step_batch(step), rank, world_size)
        loss = model(input_ids=rows, labels=rows).loss + regularization_loss(kasa_model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)


def single_process_model(steps: int, config: KasaConfig = CONFIG) -> nn.Module:
    """The reference: one process, the whole global batch, rank 0's seed."""
    model = tiny_llama()
    torch.manual_seed(INIT_SEED)
    inject(model, config)
    train_steps(model, model, optimizer_for(model), range(steps))
    return model


def injected_on_rank(rank: int, config: KasaConfig = CONFIG) -> nn.Module:
    model = tiny_llama()
    torch.manual_seed(INIT_SEED + rank)
    return inject_distributed(model, config)


def gathered(value: object) -> list[object]:
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def truncation_worker(rank: int, out: Path) -> None:
    """Record every rank's dropped factors, initial adapter, warnings, and number of SVDs computed and weights read
    (a quantized weight is dequantized at each read)."""
    calls, reads = [], []
    truncate, read = distributed.truncate_smallest, distributed.weight_matrix
    distributed.truncate_smallest = lambda *args, **kwargs: calls.append(1) or truncate(*args, **kwargs)
    distributed.weight_matrix = lambda *args, **kwargs: reads.append(1) or read(*args, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = injected_on_rank(rank)
    distributed.truncate_smallest, distributed.weight_matrix = truncate, read
    dropped = {name: (d.us.clone(), d.vt.clone()) for name, d in dropped_components(model, "default").items()}
    adapter = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    everything = gathered({"dropped": dropped, "adapter": adapter, "svd_calls": len(calls),
                           "weight_reads": len(reads), "warnings": [str(w.message) for w in caught]})
    if rank == 0:
        torch.save(everything, out / "truncation.pt")


def failing_truncation_worker(rank: int, out: Path) -> None:
    """Rank 1's truncation raises; record what each rank raised (none may hang)."""
    if rank == 1:
        distributed.truncate_smallest = lambda *args, **kwargs: (_ for _ in ()).throw(ValueError("broken weight"))
    try:
        injected_on_rank(rank)
        message = "no error"
    except Exception as err:  # noqa: BLE001
        message = f"{type(err).__name__}: {err}"
    (out / f"failure-{rank}.txt").write_text(message)


def ddp_worker(rank: int, out: Path, steps: int) -> None:
    model = injected_on_rank(rank)
    wrapped = DistributedDataParallel(model)
    try:
        inject_distributed(wrapped, CONFIG, "again")
    except ValueError as err:
        (out / f"refusal-{rank}.txt").write_text(str(err))
    train_steps(wrapped, model, optimizer_for(wrapped), range(steps), rank, WORLD_SIZE)
    save_adapter_distributed(wrapped, out / "ddp")


def fsdp_worker(rank: int, out: Path, steps: int) -> None:
    model = injected_on_rank(rank)
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    regularizer = regularization_loss(model).item()
    try:
        inject_distributed(model, CONFIG, "again")
    except ValueError as err:
        (out / f"refusal-{rank}.txt").write_text(str(err))
    train_steps(model, model, optimizer_for(model), range(steps), rank, WORLD_SIZE)
    save_adapter_distributed(model, out / "fsdp")
    local_rows = {name: p.to_local().shape[0] for name, p in model.named_parameters() if p.requires_grad}
    if rank == 0:
        torch.save({"regularizer_at_start": regularizer, "local_rows": local_rows}, out / "fsdp.pt")


def zero3_worker(rank: int, out: Path, steps: int) -> None:
    """DeepSpeed ZeRO-3 (adapter and base partitioned after injection), trained without the regulariser."""
    import deepspeed

    os.environ["LOCAL_RANK"] = str(rank)  # what a launcher sets; this process is forked
    model = injected_on_rank(rank, WITHOUT_REGULARIZER)
    ds_config = {"train_micro_batch_size_per_gpu": GLOBAL_BATCH // WORLD_SIZE, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},  # partition all
                 "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer_for(model), config=ds_config)
    kasa_state(model).configs["default"] = CONFIG
    try:
        regularization_loss(model)
    except ValueError as err:
        (out / f"refusal-{rank}.txt").write_text(str(err))
    kasa_state(model).configs["default"] = WITHOUT_REGULARIZER
    for step in range(steps):
        rows = rank_rows(step_batch(step), rank, WORLD_SIZE)
        engine.backward(engine(input_ids=rows, labels=rows).loss)
        engine.step()
    save_adapter_distributed(engine, out / "zero3")


def trainer_script_worker(rank: int, out: Path, launch_env: dict[str, str] | None = None,
                          resume: bool = False) -> None:
    """tests/training/kasa_trainer_script.py on this rank, with the environment torchrun gives it, plus
    ``launch_env`` (what ``accelerate launch --config_file`` adds, from `accelerate_launch_env`)."""
    launched(rank, launch_env)
    kasa_trainer_script.main(out, resume)


def cli_worker(rank: int, out: Path, argv: list[str], launch_env: dict[str, str] | None = None) -> None:
    """``kasa-peft ARGV`` on this rank, launched as by `trainer_script_worker`; its exit code goes to
    ``out/exit-RANK.txt``."""
    from kasa_peft.cli import main

    launched(rank, launch_env)
    (out / f"exit-{rank}.txt").write_text(str(main(argv)))


def launched(rank: int, launch_env: dict[str, str] | None) -> None:
    """The environment ``torchrun`` gives a rank, plus ``launch_env``; on CPU, Trainer then runs on gloo."""
    if dist.is_initialized():
        size = str(dist.get_world_size())
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=size, LOCAL_WORLD_SIZE=size,
                          ACCELERATE_USE_CPU="true", **(launch_env or {}))
    AcceleratorState._reset_state(reset_partial_state=True)  # forked: forget the parent's single-process state
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        allow_fsdp_on_cpu()


def accelerate_launch_env(config_file: Path, num_processes: int = WORLD_SIZE) -> dict[str, str]:
    """The variables ``accelerate launch --config_file CONFIG_FILE`` sets for its processes (accelerate's own
    launcher code), less the torch thread count."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(["--config_file", str(config_file), "--num_processes",
                                                 str(num_processes), "script.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(parsed)[0])
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def allow_fsdp_on_cpu() -> None:
    """Let Accelerate's FSDP plugin run on a CPU gloo group: Accelerate enables FSDP only for GPU-type runs
    and would silently fall back to DDP. Everything else (fully_shard, checkpointing) is Accelerate's code."""
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def checkpointed_ddp_worker(rank: int, out: Path, steps: int, checkpoint_at: int, crash_at: int | None) -> None:
    """Train under DDP to ``steps``, checkpointing after step ``checkpoint_at``; resume from the checkpoint
    if one exists; rank 1 raises at ``crash_at``."""
    checkpoint = out / "checkpoint"
    model = tiny_llama()
    if checkpoint.exists():
        load_adapter(model, checkpoint / "adapter")
        start = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    else:
        torch.manual_seed(INIT_SEED + rank)
        inject_distributed(model, CONFIG)
        start = 0
    wrapped = DistributedDataParallel(model)
    optimizer = optimizer_for(wrapped)
    if start:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt"))
    first, rest = range(start, max(start, checkpoint_at)), range(max(start, checkpoint_at), steps)
    train_steps(wrapped, model, optimizer, first, rank, WORLD_SIZE)
    if first:
        save_checkpoint(wrapped, optimizer, checkpoint, checkpoint_at)
    train_steps(wrapped, model, optimizer, rest, rank, WORLD_SIZE, crash_at=crash_at if rank == 1 else None)
    save_adapter_distributed(wrapped, out / "final")


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, step: int) -> None:
    """Adapter (atomic, rank 0), then optimizer state and step (rank 0, each by an atomic rename)."""
    save_adapter_distributed(model, directory / "adapter")
    if dist.get_rank() == 0:
        staged = directory / "optimizer.pt.tmp"
        torch.save(optimizer.state_dict(), staged)
        os.replace(staged, directory / "optimizer.pt")
        (directory / "trainer_state.json.tmp").write_text(json.dumps({"step": step}))
        os.replace(directory / "trainer_state.json.tmp", directory / "trainer_state.json")
    dist.barrier()
