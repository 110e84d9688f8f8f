"""KaSA under ``torch.distributed`` (DDP, FSDP2, DeepSpeed ZeRO-3, as launched by Accelerate or torchrun).

Truncation is computed once and identically for all ranks. Layer ``i`` with weight (out x in),
``k = min(out, in)``, costs about ``k^2 * max(out, in)`` flops (the Gram matrix; its eigendecomposition,
``k^3``, is no more), so the targeted layers are dealt to ranks by longest-processing-time-first: each
layer, most expensive first, goes to the least-loaded rank. The owner computes ``truncate_smallest`` (with
``drop_rank="auto"`` that also chooses the layer's ``d``), one all-reduce tells every rank each layer's ``d``, and
the owner broadcasts the dropped factors ``us`` (out x d) and ``vt`` (d x in), ``4 d (out + in)`` bytes per layer;
then every rank calls ``inject`` with the same factors, so they are bit-identical everywhere. Adapter
initialisation (``A`` Kaiming, ``sigma`` randn and its record ``sigma_init``) is broadcast from rank 0 too: FSDP
does not do it.

Order of operations: inject into the full, unsharded model, then shard / wrap (``accelerator.prepare``,
``fully_shard``, ``DistributedDataParallel``, ``deepspeed.initialize``). A model whose weights are
already sharded is refused, so no rank ever truncates a shard. Each rank converts one weight at a time to
float64, never the whole model.

Sharded training: core ``regularization_loss`` and ``adapter_contents`` gather FSDP2 ``DTensor``
parameters (``full_tensor``), so the regulariser is the single-process value with the single-process
gradient, and ``save_adapter_distributed`` writes one complete adapter from rank 0.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
from accelerate import PartialState
from torch import nn

from ..core import KasaConfig, inject, target_layer_names, truncate_smallest
from ..core.io import adapter_contents, write_adapter
from ..core.layer import weight_matrix, weight_shape
from ..core.model import _adapter_parameters, _base_layer, kasa_layers
from ..core.truncation import DroppedComponents, check_drop, dropped_share, warn_if_large

Group = dist.ProcessGroup | None


def is_distributed(group: Group = None) -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank (in ``group``).

    Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) the default group is first initialised
    the way ``transformers.Trainer`` will (``accelerate.PartialState``), so injection can already share work.
    """
    if not dist.is_available():
        return False
    if group is None and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" or not torch.accelerator.is_available()
        PartialState(cpu=cpu)  # gloo on CPU, NCCL (or the accelerator's backend) otherwise
    return dist.is_initialized() and dist.get_world_size(group) > 1


def truncation_cost(out_features: int, in_features: int) -> int:
    """``k^2 * max(out, in)``, ``k = min(out, in)``: the flops of the Gram matrix, which dominate."""
    k = min(out_features, in_features)
    return k * k * max(out_features, in_features)


def layer_owners(shapes: Sequence[tuple[int, int]], world_size: int) -> list[int]:
    """The rank that truncates each (out, in) weight: longest-processing-time-first on ``truncation_cost``.

    Deterministic (ties go to the lower rank), so every rank computes the same assignment without talking.
    """
    order = sorted(range(len(shapes)), key=lambda i: (-truncation_cost(*shapes[i]), i))
    loads = [(0, rank) for rank in range(world_size)]
    owners = [0] * len(shapes)
    for i in order:
        load, rank = heapq.heappop(loads)
        owners[i] = rank
        heapq.heappush(loads, (load + truncation_cost(*shapes[i]), rank))
    return owners


def inject_distributed(model: nn.Module, config: KasaConfig, adapter_name: str = "default",
                       group: Group = None) -> nn.Module:
    """``inject`` with the truncation shared among ranks; a collective: call it on every rank.

    Each rank truncates its share of the targeted layers (``layer_owners``), the owners broadcast the dropped
    components, every rank injects the same ones and takes rank 0's adapter initialisation. Call it on the
    full model before any sharding or wrapping. Without a process group of 2+ ranks it is ``inject``.
    """
    check_not_sharded(model)
    if not is_distributed(group):
        return inject(model, config, adapter_name)
    names = target_layer_names(model, config)
    shapes = [weight_shape(_base_layer(model, name)) for name in names]
    for name, shape in zip(names, shapes, strict=True):
        check_drop(config, *shape, layer_name=name)
    owners = layer_owners(shapes, dist.get_world_size(group))
    rank = dist.get_rank(group)
    count, budget = config.drop_target()
    mine: dict[str, DroppedComponents] = {}
    my_shares: dict[str, float] = {}
    error = None
    try:  # one weight at a time: a quantized layer's dequantized copy lives only while it is truncated
        for name, owner in zip(names, owners, strict=True):
            if owner == rank:
                mine[name], my_shares[name] = _truncated(_base_layer(model, name), config, count, budget)
    except Exception as err:  # noqa: BLE001  (re-raised below, after telling the other ranks)
        error = err
    raise_if_any_rank_failed(error, "truncation", group)
    counts = summed_over_ranks([mine[name].us.shape[1] if name in mine else 0 for name in names], torch.int64, group)
    shares = summed_over_ranks([my_shares.get(name, 0.0) for name in names], torch.float64, group)
    dropped = {name: broadcast_dropped(mine.get(name), shape, d, owner, group)
               for name, shape, owner, d in zip(names, shapes, owners, counts, strict=True)}
    inject(model, config, adapter_name, dropped=dropped)
    warn_if_large(dict(zip(names, shares, strict=True)) if rank == 0 else {}, config)
    initial_sigmas = [layer.adapter(adapter_name).sigma_init for _, layer in kasa_layers(model)
                      if adapter_name in layer.adapters]
    broadcast_tensors([*_adapter_parameters(model, adapter_name), *initial_sigmas], 0, group)
    return model


def _truncated(layer: nn.Module, config: KasaConfig, count: int, budget: float | None
               ) -> tuple[DroppedComponents, float]:
    """The layer's dropped components and the share of its weight's norm they carry, from one read of the weight
    (a quantized one is dequantized for it)."""
    weight = weight_matrix(layer)
    dropped = truncate_smallest(weight, count, config.truncation, budget)
    return dropped, dropped_share(weight, dropped)


def summed_over_ranks(local: Sequence[float], dtype: torch.dtype, group: Group = None) -> list:
    """A per-layer value on every rank, from the owners: each rank gives its own layers' and 0 elsewhere (one
    sum). Used for each layer's dropped count ``d`` and the share of its norm that the truncation removes."""
    values = torch.tensor(local, dtype=dtype, device=communication_device(group))
    dist.all_reduce(values, group=group)
    return values.tolist()


def broadcast_dropped(dropped: DroppedComponents | None, shape: tuple[int, int], r: int, owner: int,
                      group: Group = None) -> DroppedComponents:
    """The owner's ``r`` dropped components of one (out, in) weight, on every rank (one float32 broadcast)."""
    out_features, in_features = shape
    device = communication_device(group)
    if dist.get_rank(group) == owner:
        assert dropped is not None  # the owner truncated this weight
        flat = torch.cat([dropped.us.reshape(-1), dropped.vt.reshape(-1)]).to(device)
    else:
        flat = torch.empty(r * (out_features + in_features), dtype=torch.float32, device=device)
    dist.broadcast(flat, group=group, group_src=owner)
    us, vt = flat.split([out_features * r, r * in_features])
    return DroppedComponents(us.reshape(out_features, r), vt.reshape(r, in_features))


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0, group: Group = None) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s (one broadcast per dtype)."""
    device = communication_device(group)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        same = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.detach().reshape(-1).to(device) for t in same])
        dist.broadcast(flat, group=group, group_src=src)
        for tensor, value in zip(same, flat.split([t.numel() for t in same]), strict=True):
            tensor.copy_(value.view_as(tensor))


def communication_device(group: Group = None) -> torch.device:
    """Where collectives run: the CPU for gloo, the current accelerator (GPU) for NCCL and the like."""
    if dist.get_backend(group) == dist.Backend.GLOO or not torch.accelerator.is_available():
        return torch.device("cpu")
    accelerator = cast(torch.device, torch.accelerator.current_accelerator())  # is_available() above
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def is_main_process(group: Group = None) -> bool:
    """Rank 0 of a distributed run, or the only process."""
    return not is_distributed(group) or dist.get_rank(group) == 0


def barrier(group: Group = None) -> None:
    """Wait for every rank (nothing without a process group of 2+ ranks)."""
    if is_distributed(group):
        dist.barrier(group=group)


def on_main_process(work: Callable[[], object], what: str, group: Group = None) -> None:
    """Run ``work`` on rank 0 only, then let no rank go on before it is done (a collective; a failure raises on
    every rank). Without a process group of 2+ ranks it is ``work()``."""
    if not is_distributed(group):
        work()
        return
    error = None
    if dist.get_rank(group) == 0:
        try:
            work()
        except Exception as err:  # noqa: BLE001  (re-raised below, after telling the other ranks)
            error = err
    raise_if_any_rank_failed(error, what, group)


def raise_if_any_rank_failed(error: BaseException | None, what: str, group: Group = None) -> None:
    """A collective barrier that raises on every rank if ``what`` failed on any (so none waits forever)."""
    failed = torch.tensor([error is not None], dtype=torch.int32, device=communication_device(group))
    dist.all_reduce(failed, group=group)
    if error is not None:
        raise error
    if failed.item():
        raise RuntimeError(f"{what} failed on {failed.item()} other rank(s); their logs say why")


def check_not_sharded(model: nn.Module) -> None:
    """Refuse a model that is already wrapped or sharded: truncating a shard would be silently wrong."""
    fix = ("inject KaSA into the full model first, then wrap/shard it "
           "(accelerator.prepare, fully_shard, DDP, deepspeed.initialize)")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError(f"the model is already wrapped in DistributedDataParallel: {fix}")
    for name, module in model.named_modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            raise ValueError(f"module '{name or 'model'}' is already wrapped by FSDP (flat, sharded parameters): {fix}")
    for name, param in model.named_parameters():
        if hasattr(param, "full_tensor"):
            raise ValueError(f"parameter '{name}' is already sharded (a DTensor: FSDP2 fully_shard or tensor "
                             f"parallel): {fix}")
        if hasattr(param, "ds_id"):
            raise ValueError(f"parameter '{name}' is partitioned by DeepSpeed ZeRO-3 (zero.Init, accelerate's "
                             f"zero3_init_flag: true): load the model with zero3_init_flag: false, then {fix}")
        if param.is_meta:
            raise ValueError(f"parameter '{name}' has no values on this rank (meta device; with Accelerate FSDP set "
                             "fsdp_cpu_ram_efficient_loading: false): every rank needs the real weights to inject")


def save_adapter_distributed(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None,
                             group: Group = None) -> Path:
    """Write one complete adapter from rank 0; a collective: call it on every rank.

    FSDP2 shards are gathered tensor by tensor, DeepSpeed ZeRO-3 partitions layer by layer, on all ranks
    (core ``adapter_contents``); rank 0 writes atomically, and no rank returns before the files are in place.
    ``model`` may be wrapped in DDP or a DeepSpeed engine.
    """
    while isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = cast(nn.Module, model.module)
    metadata, tensors = adapter_contents(model, adapter_name, gathered=zero3_gathered)
    on_main_process(lambda: write_adapter(path, metadata, tensors), f"saving the adapter to {path}", group)
    return Path(path)


def zero3_gathered(module: nn.Module) -> AbstractContextManager:
    """A context in which ``module``'s DeepSpeed ZeRO-3 partitioned parameters are whole (a collective)."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
