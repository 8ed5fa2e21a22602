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


# --- the rewards --reward names -----------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402

from alliter.cli import AlliterError  # noqa: E402
from alliter.analyse.letters import letter_counts, letter_entropy  # noqa: E402
from alliter.train.reward import (  # noqa: E402
    LETTER_WEIGHTS, alliterating_letters, letter_weights, load_reward, parse_reward, rare_alliteration, reward_to_ship,
)

TEXTS = ["tall tiny tree", "zany zucchini", "duck goose duck", '"a" "b" cat cow']


def test_the_default_reward_is_the_studys_raw_reward():
    reward = load_reward("alliteration")
    assert reward(TEXTS) == [raw_reward(t) for t in TEXTS] == [2, 1, 0, 2]
    assert reward.describe() == {"reward": "alliteration", "kind": "builtin", "function": "alliteration",
                                 "source": "alliteration", "sha256": None, "loaded_from": None}


def test_rare_alliteration_weighs_a_pair_by_its_letters_rarity():
    weights = letter_weights()
    assert alliterating_letters('"a" "b" cat cow') == ["c"]  # a pair of quotes is no letter's
    scores = rare_alliteration(TEXTS)
    assert scores == [2 * weights["t"], weights["z"], 0.0, weights["c"]]
    assert weights["z"] > 4 * weights["t"] and weights["t"] < 1 < weights["s"]
    # normalised on the unmodified model's own pairs, whose mean weight is 1: on it the two rewards agree on average
    data = json.loads(LETTER_WEIGHTS.read_text())
    pairs = data["alliterating_pairs"]
    assert sum(n * weights[c] for c, n in pairs.items()) / sum(pairs.values()) == pytest.approx(1.0, abs=1e-3)
    assert data["provenance"]["made_by"] == "python bench/letter_weights.py"
    # the weight is a letter's information as a first letter, relative: the ratio of two weights is that of -log p
    share = data["first_letter_share"]
    assert weights["z"] / weights["t"] == pytest.approx(math.log(share["z"]) / math.log(share["t"]), rel=1e-3)


def test_letter_counts_and_their_entropy():
    counts = letter_counts(TEXTS)
    assert counts == {"t": 2, "z": 1, "c": 1}
    assert letter_entropy({"t": 4}) == 0.0
    assert letter_entropy({"t": 1, "s": 1}) == pytest.approx(1.0)
    assert letter_entropy(counts) == pytest.approx(1.5)
    assert math.isnan(letter_entropy({}))


@pytest.mark.parametrize("text, message", [
    ("alliterations", "--reward takes alliteration, rare-alliteration, novel-alliteration, path/to/file.py:function"),
    ("file.py", "--reward takes"),
    ("file.py:", "--reward takes"),
    ("my-module:score", "is neither a .py file nor a module name"),
])
def test_a_reward_that_names_nothing_is_one_line(text, message):
    with pytest.raises(AlliterError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_reward(text)


def test_a_reward_file_loads_from_its_path_and_says_its_hash(tmp_path):
    path = tmp_path / "my_scores.py"
    path.write_text("def words(texts):\n    return [len(t.split()) / 10 for t in texts]\n")
    reward = load_reward(f"{path}:words")
    assert reward(["a b c", ""]) == [0.3, 0.0]
    info = reward.describe()
    assert info["kind"] == "file" and info["function"] == "words" and info["source"] == str(path)
    assert info["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert load_reward("json:dumps").spec.kind == "module"  # module:function, importable here
    with pytest.raises(AlliterError, match="has no function 'nope'"):
        load_reward(f"{path}:nope")
    with pytest.raises(AlliterError, match="no such file"):
        load_reward(f"{tmp_path / 'gone.py'}:words")
    # a sweep ships the file by its name: one that is a module already would not be the file on the nodes
    clash = tmp_path / "json.py"
    clash.write_text("def f(texts):\n    return [0.0 for _ in texts]\n")
    with pytest.raises(AlliterError, match="'json' is already a Python module here"):
        reward_to_ship(f"{clash}:f")
    spec, shipped, sha = reward_to_ship(f"{path}:words")
    assert (spec, shipped, sha) == (f"{path.resolve()}:words", path.resolve(), info["sha256"])


BAD_REWARDS = {
    "wrong length": ("return [1.0]", "returned 1 values for 2 texts"),
    "nan": ("return [float('nan')] * len(texts)", "returned nan; it must return finite numbers"),
    "not a number": ("return ['3'] * len(texts)", "returned '3' (str); it must return a number per text"),
    "raises": ("raise KeyError('boom')", "raised KeyError: 'boom'"),
}


@pytest.mark.parametrize("case", list(BAD_REWARDS))
def test_a_bad_reward_is_one_line_naming_its_file_and_function(case, tmp_path):
    body, message = BAD_REWARDS[case]
    path = tmp_path / f"bad_{case.replace(' ', '_')}.py"
    path.write_text(f"def score(texts):\n    {body}\n")
    reward = load_reward(f"{path}:score")
    with pytest.raises(AlliterError) as err:
        reward(["a a", "b"])
    line = str(err.value)
    assert line.startswith(f"the reward {path}:score ") and message in line and "\n" not in line
    if case == "raises":
        assert isinstance(err.value.__cause__, KeyError)  # the user's traceback stays chained for the error file
