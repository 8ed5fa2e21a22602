import pytest

from alliter.measures import distinct_n, unique_fraction
from alliter.train.reward import raw_reward


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        ("cow", 0),
        ("cow cat", 1),
        ("duck goose duck", 0),
        ("goose goose duck duck", 2),
        ("Goose gopher Giraffe gorilla", 3),
        ("goose gopher giraffe gorilla", 3),
        ("  tall\ttall\n tall ", 2),
        ("Once upon a time, there was", 1),
    ],
)
def test_raw_reward_on_the_study_examples(text, expected):
    assert raw_reward(text) == expected


def test_distinct_n_counts_over_all_words_of_the_group():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    # bigrams: (a b) (b a) (a b) | (a b) (b c) -> 3 distinct of 5
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["", "x"], 2) == 0.0


def test_unique_fraction():
    assert unique_fraction(["x", "x", "y", "z"]) == 0.75
    assert unique_fraction(["tall tall"] * 10) == 0.1
