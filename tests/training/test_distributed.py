"""KaSA under torch.distributed: 2 forked CPU processes in a gloo group against a single-process reference."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from kasa_peft import (
    dropped_components, inject, kasa_layers, kasa_state, load_adapter, read_adapter, regularization_loss,
    truncate_smallest,
)
from kasa_peft.core.io import adapter_contents
from kasa_peft.core.layer import weight_matrix
from kasa_peft.training.distributed import check_not_sharded, inject_distributed, layer_owners, truncation_cost
from tiny_models import tiny_llama, token_batch
from training.distributed_workers import (
    CONFIG, INIT_SEED, WITHOUT_REGULARIZER, WORLD_SIZE, accelerate_launch_env, checkpointed_ddp_worker, ddp_worker,
    failing_truncation_worker, fsdp_worker, launch, single_process_model, trainer_script_worker, truncation_worker,
    zero3_worker,
)

# each test starts 2 processes; one stuck in a collective must fail the test, never hang the suite
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict[int, torch.nn.Module]:
    """Single-process models trained for 0, 2, 3 and 4 steps on the whole global batch."""
    return {steps: single_process_model(steps) for steps in (0, 2, STEPS, 4)}


def assert_same_adapter(saved_dir, model, tolerance: float = TOLERANCE) -> None:
    metadata, tensors = read_adapter(saved_dir)
    expected_metadata, expected = adapter_contents(model)
    assert metadata["layers"] == expected_metadata["layers"]
    assert set(tensors) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(tensors[key], value, rtol=0, atol=tolerance, msg=key)


def test_layer_owners_are_within_grahams_bound_of_the_best_split() -> None:
    """Longest-processing-time-first is within 4/3 - 1/(3m) of the optimal makespan (Graham 1969)."""
    rng = random.Random(0)
    shapes = [(rng.choice([64, 128, 256, 344]), rng.choice([64, 128, 256, 344])) for _ in range(10)]
    costs = [truncation_cost(*s) for s in shapes]
    owners = layer_owners(shapes, 2)
    makespan = max(sum(c for c, o in zip(costs, owners, strict=True) if o == rank) for rank in range(2))
    best = min(max(sum(c for c, side in zip(costs, split, strict=True) if side == rank) for rank in (0, 1))
               for split in itertools.product([0, 1], repeat=len(costs)))
    assert makespan <= (4 / 3 - 1 / 6) * best
    assert sorted(set(owners)) == [0, 1]
    assert layer_owners(shapes, 2) == owners


def test_truncation_cost_is_the_gram_flops() -> None:
    assert truncation_cost(5632, 2048) == 2048 ** 2 * 5632
    assert truncation_cost(2048, 5632) == truncation_cost(5632, 2048)


def test_without_a_process_group_it_is_inject() -> None:
    model = tiny_llama()
    torch.manual_seed(INIT_SEED)
    inject_distributed(model, CONFIG)
    expected = single_process_model(0)
    for (name, param), (_, reference) in zip(model.named_parameters(), expected.named_parameters(), strict=True):
        assert torch.equal(param, reference), name


def test_a_model_without_weights_on_this_rank_is_refused() -> None:
    with torch.device("meta"):
        model = tiny_llama()
    with pytest.raises(ValueError, match="meta device.*fsdp_cpu_ram_efficient_loading: false"):
        check_not_sharded(model)


def test_truncation_is_computed_once_and_bit_identical_on_every_rank(tmp_path, reference) -> None:
    launch(truncation_worker, tmp_path)
    ranks = torch.load(tmp_path / "truncation.pt")
    model = tiny_llama()
    names = list(dropped_components(reference[0], "default"))
    assert [r["svd_calls"] for r in ranks] and all(r["svd_calls"] > 0 for r in ranks)
    assert sum(r["svd_calls"] for r in ranks) == len(names)
    assert [r["weight_reads"] for r in ranks] == [r["svd_calls"] for r in ranks]  # each weight read once, by its owner
    with pytest.warns(UserWarning) as single_process:
        inject(tiny_llama(), CONFIG)
    assert ranks[0]["warnings"] == [str(w.message) for w in single_process]  # the same shares, from the owners
    assert ranks[1]["warnings"] == []
    for name in names:
        us, vt = truncate_smallest(weight_matrix(model.get_submodule(name)), CONFIG.r, CONFIG.truncation)
        for rank in ranks:
            assert torch.equal(rank["dropped"][name][0], us) and torch.equal(rank["dropped"][name][1], vt), name
    init = {name: p for name, p in reference[0].named_parameters() if p.requires_grad}
    for rank in ranks:  # rank 1 seeded differently: its init must have been replaced by rank 0's
        assert rank["adapter"].keys() == init.keys()
        assert all(torch.equal(rank["adapter"][name], value) for name, value in init.items())


def test_a_failure_on_one_rank_raises_on_every_rank(tmp_path) -> None:
    launch(failing_truncation_worker, tmp_path)
    assert (tmp_path / "failure-1.txt").read_text() == "ValueError: broken weight"
    expected = "RuntimeError: truncation failed on 1 other rank(s); their logs say why"
    assert (tmp_path / "failure-0.txt").read_text() == expected


def test_ddp_training_gives_the_single_process_adapter(tmp_path, reference) -> None:
    launch(ddp_worker, tmp_path, STEPS)
    assert "already wrapped in DistributedDataParallel" in (tmp_path / "refusal-0.txt").read_text()
    assert_same_adapter(tmp_path / "ddp", reference[STEPS])
    assert not list(tmp_path.glob(".ddp.tmp-*"))


def test_fsdp2_training_gives_the_single_process_adapter_and_regulariser(tmp_path, reference) -> None:
    launch(fsdp_worker, tmp_path, STEPS)
    record = torch.load(tmp_path / "fsdp.pt")
    assert record["local_rows"]["model.layers.0.self_attn.q_proj.adapters.default.A"] == CONFIG.r // WORLD_SIZE
    assert record["regularizer_at_start"] == pytest.approx(regularization_loss(reference[0]).item(), rel=1e-6)
    assert "already sharded (a DTensor" in (tmp_path / "refusal-0.txt").read_text()
    assert_same_adapter(tmp_path / "fsdp", reference[STEPS])
    loaded = load_adapter(tiny_llama(), tmp_path / "fsdp")
    batch = token_batch(2, 6, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, reference[STEPS](batch).logits, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def single_trainer_run(tmp_path_factory) -> Path:
    """tests/training/kasa_trainer_script.py in one process: the reference for the distributed launches."""
    out = tmp_path_factory.mktemp("single")
    launch(trainer_script_worker, out, world_size=1)
    return out


def assert_same_trainer_run(run: Path, single: Path, tolerance: float = TOLERANCE) -> None:
    """The final adapter and the step-2 checkpoint's equal those of the single-process run."""
    for adapter in ("final", "checkpoints/checkpoint-2"):
        assert_same_adapter(run / adapter, load_adapter(tiny_llama(), single / adapter), tolerance)


def test_a_kasa_trainer_script_under_ddp_gives_the_single_process_adapter(tmp_path, single_trainer_run) -> None:
    """A user's Trainer script: prepare_model shares the truncation, KasaTrainer trains under DDP (global batch
    split over 2 ranks, sequential order), checkpoints and the final adapter are written once, by rank 0."""
    launch(trainer_script_worker, tmp_path / "ddp")
    assert json.loads((tmp_path / "ddp" / "launch.json").read_text()) == {"world_size": 2, "fsdp": False,
                                                                       "sharded": False}
    assert_same_trainer_run(tmp_path / "ddp", single_trainer_run)


def test_a_kasa_trainer_script_under_accelerate_fsdp2_gives_the_single_process_adapter_and_resumes(
        tmp_path, single_trainer_run) -> None:
    """The same script with the environment `accelerate launch --config_file configs/accelerate/fsdp.yaml` gives
    it (FSDP2, decoder blocks sharded): one complete adapter per checkpoint, equal to the single process's; a run
    resumed from the step-2 checkpoint (adapter restored into the shards in place) ends where the whole run did."""
    env = accelerate_launch_env(REPO / "configs" / "accelerate" / "fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    launch(trainer_script_worker, tmp_path / "fsdp", env)
    assert json.loads((tmp_path / "fsdp" / "launch.json").read_text()) == {"world_size": 2, "fsdp": True,
                                                                        "sharded": True}
    assert_same_trainer_run(tmp_path / "fsdp", single_trainer_run)
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "optimizer_0").is_dir() and not list(checkpoint.glob("pytorch_model_fsdp*"))  # no base copy
    shutil.copytree(tmp_path / "fsdp" / "checkpoints" / "checkpoint-2",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-2")
    launch(trainer_script_worker, tmp_path / "resumed", env, True)
    assert_same_adapter(tmp_path / "resumed" / "final", load_adapter(tiny_llama(), tmp_path / "fsdp" / "final"), 1e-6)


def test_deepspeed_zero3_training_gives_the_single_process_adapter(tmp_path) -> None:
    """ZeRO-3 partitions the adapter after injection; saving gathers it layer by layer; the regulariser,
    which would need whole parameters outside forward, is refused rather than computed on empty shards."""
    pytest.importorskip("deepspeed")
    launch(zero3_worker, tmp_path, STEPS)
    assert "partitioned outside forward (DeepSpeed ZeRO-3)" in (tmp_path / "refusal-0.txt").read_text()
    assert_same_adapter(tmp_path / "zero3", single_process_model(STEPS, WITHOUT_REGULARIZER))


def test_a_crash_keeps_the_last_checkpoint_and_resuming_finishes_the_same_run(tmp_path, reference) -> None:
    crashed = "simulated crash of rank 1 at step 3|Connection (closed|reset) by peer"  # whichever rank failed first
    with pytest.raises(mp.ProcessRaisedException, match=crashed):
        launch(checkpointed_ddp_worker, tmp_path, 4, 2, 3)
    assert not (tmp_path / "final").exists()
    assert_same_adapter(tmp_path / "checkpoint" / "adapter", reference[2])
    launch(checkpointed_ddp_worker, tmp_path, 4, 2, None)
    assert_same_adapter(tmp_path / "final", reference[4])


def test_the_regulariser_refuses_partitioned_parameters_unless_it_is_off() -> None:
    """What ZeRO-3 leaves outside forward (empty local tensors) must not pass for a zero penalty."""
    model = single_process_model(0)
    for layer in dict(kasa_layers(model)).values():
        for param in layer.adapters["default"].parameters():
            param.data = torch.empty(0)
    with pytest.raises(ValueError, match="partitioned outside forward.*FSDP2"):
        regularization_loss(model)
    kasa_state(model).configs["default"] = WITHOUT_REGULARIZER
    assert regularization_loss(model).item() == 0.0
