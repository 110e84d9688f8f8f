"""The automatic truncation under torch.distributed: every rank gets the same per-layer d and the same factors."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from torch.nn.parallel import DistributedDataParallel

from kasa_peft import KasaConfig, dropped_components, inject, kasa_layers, read_adapter
from kasa_peft.core.io import adapter_contents
from kasa_peft.training.distributed import inject_distributed, save_adapter_distributed
from tiny_models import MIXED_BUDGET, MIXED_TAILS, tiny_llama_with_tails
from training.distributed_workers import INIT_SEED, WORLD_SIZE, gathered, launch, optimizer_for, train_steps

MIXED = KasaConfig(r=4, target_modules=("q_proj", "v_proj"), drop_rank="auto", drop_budget=MIXED_BUDGET)


def mixed_truncation_worker(rank: int, out: Path) -> None:
    """Each rank injects with its own seed; rank 0 saves what every rank holds."""
    torch.manual_seed(INIT_SEED + rank)
    model = inject_distributed(tiny_llama_with_tails(), MIXED)
    state = {name: {key: getattr(layer.adapters["default"], key).detach().clone()
                    for key in ("A", "B", "sigma", "sigma_init", "dropped_us", "dropped_vt")}
             for name, layer in kasa_layers(model)}
    everything = gathered({"state": state, "world_size": dist.get_world_size()})
    if rank == 0:
        torch.save(everything, out / "mixed.pt")


def test_every_rank_gets_the_single_process_counts_and_factors(tmp_path) -> None:
    launch(mixed_truncation_worker, tmp_path)
    ranks = torch.load(tmp_path / "mixed.pt")
    assert [r["world_size"] for r in ranks] == [2, 2]
    torch.manual_seed(INIT_SEED)
    single = inject(tiny_llama_with_tails(), MIXED)
    expected = dropped_components(single, "default")
    for name, layer in kasa_layers(single):
        d = MIXED_TAILS[name][1]
        for rank in ranks:
            held = rank["state"][name]
            assert held["dropped_us"].shape[1] == d and held["dropped_vt"].shape[0] == d, name
            assert torch.equal(held["dropped_us"], expected[name].us), name
            assert torch.equal(held["dropped_vt"], expected[name].vt), name
            for key in ("A", "B", "sigma", "sigma_init"):  # rank 0's initialisation everywhere
                assert torch.equal(held[key], getattr(layer.adapters["default"], key)), (name, key)


def mixed_ddp_worker(rank: int, out: Path) -> None:
    torch.manual_seed(INIT_SEED + rank)
    model = inject_distributed(tiny_llama_with_tails(), MIXED)
    wrapped = DistributedDataParallel(model)
    train_steps(wrapped, model, optimizer_for(wrapped), range(3), rank, WORLD_SIZE)
    save_adapter_distributed(wrapped, out / "ddp")


def test_ddp_training_with_mixed_counts_gives_the_single_process_adapter(tmp_path) -> None:
    launch(mixed_ddp_worker, tmp_path)
    torch.manual_seed(INIT_SEED)
    single = inject(tiny_llama_with_tails(), MIXED)
    train_steps(single, single, optimizer_for(single), range(3))
    metadata, tensors = read_adapter(tmp_path / "ddp")
    _, expected = adapter_contents(single)
    assert set(tensors) == set(expected)
    assert {name: tensors[f"{name}.dropped_us"].shape[1] for name in metadata["layers"]} == \
        {name: d for name, (_, d) in MIXED_TAILS.items()}
    for key, value in expected.items():
        torch.testing.assert_close(tensors[key], value, rtol=0, atol=1e-5, msg=key)
