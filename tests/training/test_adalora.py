"""AdaLoRA's config: the paper's rank budget and schedule proportions, evaluated by hand."""

import pytest

from kasa_peft.training.adalora import adalora_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT's note on AdaLoRA's total_step


@pytest.mark.parametrize(("r", "total_steps", "init_r", "tinit", "tfinal"), [
    (8, 100, 12, 10, 50),  # init_r = 1.5 r; warm-up 10% of the steps, final phase 50%
    (4, 37, 6, 3, 18),  # fractions of a step round down: 3.7 -> 3, 18.5 -> 18
])
def test_the_budget_starts_at_one_and_a_half_times_r_and_the_phases_take_their_fractions(
        r, total_steps, init_r, tinit, tfinal):
    config = adalora_config(r, total_steps, lora_alpha=16.0, target_modules=["query"])
    assert (config.target_r, config.init_r, config.total_step, config.tinit, config.tfinal) == (
        r, init_r, total_steps, tinit, tfinal)
    assert config.lora_alpha == 16.0 and set(config.target_modules) == {"query"}
