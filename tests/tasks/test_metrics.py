import pytest

from kasa_peft.tasks.metrics import accuracy, check_lengths


def test_accuracy_is_the_fraction_of_exact_matches():
    assert accuracy(["a", "b", None, "d"], ["a", "x", "c", "d"]) == 0.5


def test_lengths_must_match_and_be_non_empty():
    check_lengths([1], [2])
    with pytest.raises(ValueError, match="got 1 predictions for 2 references"):
        accuracy([1], [1, 2])
    with pytest.raises(ValueError, match="no predictions to score"):
        accuracy([], [])
