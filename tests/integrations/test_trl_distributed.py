"""KasaSFTTrainer under torch.distributed: 2 forked CPU processes in a gloo group, launched as torchrun would."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from support import TARGETS, preferences, prompt_completion, tokenizer
from tiny_models import tiny_llama
from training.distributed_workers import WORLD_SIZE, accelerate_launch_env, launch, launched

import kasa_peft
from kasa_peft import KasaConfig, load_adapter, read_adapter, truncate_smallest
from kasa_peft.core.layer import weight_matrix
from kasa_peft.training import distributed

trl = pytest.importorskip("trl")

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]

REPO = Path(__file__).resolve().parents[2]

CONFIG = KasaConfig(r=4, target_modules="all-linear", beta=0.05, gamma=0.05)


def sft_worker(rank: int, out: Path) -> None:
    """KasaSFTTrainer with kasa_config on this rank: records its truncation calls and dropped components, trains
    2 steps, saves the model; every rank starts from another random state (only shared values may survive)."""
    from kasa_peft.integrations.trl import KasaSFTTrainer

    launched(rank, None)
    calls = []
    truncate = distributed.truncate_smallest

    def counted(weight, *args, **kwargs):
        calls.append(tuple(weight.shape))
        return truncate(weight, *args, **kwargs)

    distributed.truncate_smallest = counted
    torch.manual_seed(100 + rank)
    args = trl.SFTConfig(str(out / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                         use_cpu=True, report_to="none", save_strategy="steps", save_steps=2, disable_tqdm=True,
                         bf16=False, seed=100 + rank)
    trainer = KasaSFTTrainer(model=tiny_llama(), args=args, train_dataset=prompt_completion(8),
                             processing_class=tokenizer(), kasa_config=CONFIG)
    model = trainer.model
    start = {f"{name}.{key}": getattr(layer.adapters["default"], key).detach().clone()
             for name, layer in kasa_peft.kasa_layers(model) for key in ("dropped_us", "dropped_vt", "A", "sigma")}
    trainer.train()
    trainer.save_model(str(out / "final"))
    final = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"calls": calls, "start": start, "final": final}, out / f"rank-{rank}.pt")
    (out / f"world-{rank}.json").write_text(json.dumps(torch.distributed.get_world_size()))


def test_kasa_sft_trainer_truncates_once_identically_on_every_rank_and_rank0_writes_one_adapter(tmp_path):
    launch(sft_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank-{rank}.pt") for rank in range(WORLD_SIZE)]
    assert json.loads((tmp_path / "world-1.json").read_text()) == WORLD_SIZE
    layers = kasa_peft.target_layer_names(tiny_llama(), CONFIG)
    assert sum(len(r["calls"]) for r in ranks) == len(layers)  # each weight truncated once, on one rank
    assert all(r["calls"] for r in ranks)  # the work is shared
    base = tiny_llama()
    for name in layers:
        us, vt = truncate_smallest(weight_matrix(base.get_submodule(name)), CONFIG.r)
        torch.testing.assert_close(ranks[0]["start"][f"{name}.dropped_us"] @ ranks[0]["start"][f"{name}.dropped_vt"],
                                   us @ vt, rtol=0, atol=1e-5)
    for key, value in ranks[0]["start"].items():  # bit-identical truncation and initialisation on every rank
        assert torch.equal(ranks[1]["start"][key], value), key
    for key, value in ranks[0]["final"].items():  # DDP kept the ranks equal
        assert torch.equal(ranks[1]["final"][key], value), key
    metadata, _ = read_adapter(tmp_path / "final")
    assert sorted(metadata["layers"]) == sorted(layers)  # one complete adapter
    assert (tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    model = load_adapter(tiny_llama(), tmp_path / "final")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for key, value in ranks[0]["final"].items():
        assert torch.equal(trained[key], value), key


def dpo_worker(rank: int, out: Path, launch_env: dict[str, str] | None) -> None:
    """KasaDPOTrainer from a fresh adapter (no regulariser) for 2 steps; logs, sharding and the saved adapter."""
    from kasa_peft.integrations.trl import KasaDPOTrainer

    launched(rank, launch_env)
    args = trl.DPOConfig(str(out / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                         use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, bf16=False,
                         logging_steps=1)
    trainer = KasaDPOTrainer(model=tiny_llama(), args=args, train_dataset=preferences(8), processing_class=tokenizer(),
                             kasa_config=KasaConfig(r=4, target_modules=TARGETS, beta=0.0, gamma=0.0))
    trainer.train()
    trainer.save_model(str(out / "final"))
    sharded = any(hasattr(p, "full_tensor") for p in trainer.model.parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    (out / f"rank-{rank}.json").write_text(json.dumps({"logs": logs, "sharded": sharded}))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_kasa_dpo_trainer_starts_at_ln2_under_ddp_and_fsdp2_and_writes_one_adapter(strategy, tmp_path):
    env = accelerate_launch_env(REPO / "configs" / "accelerate" / "fsdp.yaml") if strategy == "fsdp2" else None
    launch(dpo_worker, tmp_path, env)
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    assert all(r["sharded"] == (strategy == "fsdp2") for r in ranks)
    assert ranks[0]["logs"][0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert ranks[0]["logs"][-1]["loss"] != pytest.approx(math.log(2), abs=1e-5)
    metadata, _ = read_adapter(tmp_path / "final")
    assert sorted(metadata["layers"]) == kasa_peft.target_layer_names(tiny_llama(), CONFIG.replace(
        target_modules=TARGETS))
    load_adapter(tiny_llama(), tmp_path / "final")
