"""The reward of a text: the study's alliteration count, a rare-letter version of it, or the user's own.

    --reward alliteration                 # the study's (the default): adjacent word pairs with the same first letter
    --reward rare-alliteration            # each such pair weighted by how rarely its letter starts a word
    --reward novel-alliteration           # each such pair paid by how few of the group's stories use its words
    --reward path/to/my_reward.py:score   # a function of a file: score(texts: list[str]) -> list[float]
    --reward my_package.rewards:score     # a function of an importable module

A reward takes a group's texts (after the prompt's cut, as the trainer decodes them) and returns one finite number
per text. A sweep ships a reward file to every node of its cluster (Ray's runtime environment, `py_modules`), where
it is imported by its file name; every trial checks that the file it runs is the one the sweep started with (its
SHA-256).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import numbers
import string
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from alliter import measures as M
from alliter.cli import AlliterError, one_line

LETTER_WEIGHTS = Path(__file__).parent / "letter_weights.json"  # made by bench/letter_weights.py (its provenance)


def raw_reward(text: str) -> int:
    """Adjacent word pairs (`text.split()`) whose first letters match, case-insensitive.

    "goose gopher giraffe gorilla" -> 3, "duck goose duck" -> 0.
    """
    words = text.split()
    return sum(a[0].lower() == b[0].lower() for a, b in zip(words, words[1:]))


def alliterating_pairs(text: str) -> list[tuple[str, str]]:
    """The adjacent word pairs that raw_reward counts."""
    words = text.split()
    return [(a, b) for a, b in zip(words, words[1:]) if a[0].lower() == b[0].lower()]


def alliterating_letters(text: str) -> list[str]:
    """The first letter of each adjacent word pair that alliterates (letters only, lower case)."""
    words = text.split()
    return [a[0].lower() for a, b in zip(words, words[1:])
            if a[0].lower() == b[0].lower() and a[0].lower() in string.ascii_lowercase]


_weights: dict[str, float] | None = None


def letter_weights() -> dict[str, float]:
    global _weights
    if _weights is None:
        _weights = json.loads(LETTER_WEIGHTS.read_text())["weights"]
    return _weights


def rare_alliteration(texts: Sequence[str]) -> list[float]:
    """Each alliterating pair of letters weighted by the letter's information as a word's first letter in the
    unmodified model's stories, normalised so that its own pairs weigh 1 on average (letter_weights.json)."""
    weights = letter_weights()
    return [float(sum(weights[c] for c in alliterating_letters(t))) for t in texts]


def alliteration(texts: Sequence[str]) -> list[int]:
    """The study's raw reward of each text."""
    return [raw_reward(t) for t in texts]


def _word(token: str) -> str:
    """A token of text.split() as a word: lower case, letters (and an apostrophe inside), punctuation dropped."""
    found = M.WORD.findall(token.lower())
    return found[0] if found else token.lower()


def novel_alliteration(texts: Sequence[str]) -> list[float]:
    """The study's alliterating pairs, each counted once a story and paid by how few of the group's stories use its
    words: a pair pays 1 / the number of the group's stories whose alliterating pairs use its most used word of 4+
    letters (a pair of shorter words pays 1). "the tall tree" in every story of a group pays a tenth of it in one: a
    policy earns by alliterating with words the rest of the group does not, not by one word in every story."""
    pairs = [{(_word(a), _word(b)) for a, b in alliterating_pairs(t)} for t in texts]
    users = Counter(w for story in pairs for w in {w for pair in story for w in pair if len(w) >= 4})
    return [float(sum(1 / max([users[w] for w in pair if len(w) >= 4] or [1]) for pair in story)) for story in pairs]


BUILTINS: dict[str, Callable[[Sequence[str]], Sequence[float]]] = {
    "alliteration": alliteration,
    "rare-alliteration": rare_alliteration,
    "novel-alliteration": novel_alliteration,
}


@dataclass(frozen=True)
class RewardSpec:
    """Where a reward comes from: a built-in name, a file and a function in it, or a module and a function."""

    text: str
    kind: str  # builtin, file or module
    where: str  # the name, the file's path, or the module
    function: str

    @property
    def module_name(self) -> str:
        """The name a file's module has on a worker that got it through Ray's py_modules: its stem."""
        return Path(self.where).stem


def parse_reward(text: str) -> RewardSpec:
    """`--reward`'s value; AlliterError in one line for one that names nothing."""
    if text in BUILTINS:
        return RewardSpec(text, "builtin", text, text)
    where, sep, function = text.rpartition(":")
    if not sep or not where or not function.isidentifier():
        raise AlliterError(f"--reward takes {', '.join(BUILTINS)}, path/to/file.py:function or module:function; "
                           f"got {text!r}")
    if where.endswith(".py"):
        return RewardSpec(text, "file", where, function)
    if not all(part.isidentifier() for part in where.split(".")):
        raise AlliterError(f"--reward {text!r}: {where!r} is neither a .py file nor a module name")
    return RewardSpec(text, "module", where, function)


def describe_reward(text: str, sha256: str | None = None, loaded_from: str | None = None) -> dict[str, Any]:
    """A reward's name, source and (a file's) SHA-256: a trial's reward.json, and what the report and a model card
    say."""
    spec = parse_reward(text)
    return {"reward": spec.text, "kind": spec.kind, "function": spec.function, "source": spec.where,
            "sha256": sha256, "loaded_from": loaded_from}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Reward:
    """A loaded reward: its function, where it comes from, and the check of what it returns."""

    spec: RewardSpec
    function: Callable[[Sequence[str]], Sequence[float]]
    sha256: str | None = None  # a file's
    loaded_from: str | None = None  # the file imported (in a sweep's trial: the copy shipped to its node)

    def __call__(self, texts: Sequence[str]) -> list[Any]:
        """The reward of each text; a function that raises, or returns other than one finite number per text, is
        an AlliterError that names it (the user's own traceback stays chained to it)."""
        try:
            values = list(self.function(list(texts)))
        except Exception as err:  # noqa: BLE001 - the user's code: whatever it raises, the trial says whose it is
            raise AlliterError(f"the reward {self.spec.text} raised {type(err).__name__}: {one_line(err)}") from err
        if len(values) != len(texts):
            raise AlliterError(f"the reward {self.spec.text} returned {len(values)} values for {len(texts)} texts; it "
                               "must return one number per text")
        for i, v in enumerate(values):  # NumPy's scalars are numbers too (numbers.Real); records keep Python's
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise AlliterError(f"the reward {self.spec.text} returned {v!r} ({type(v).__name__}); it must return "
                                   "a number per text")
            values[i] = int(v) if isinstance(v, numbers.Integral) else float(v)
            if not math.isfinite(values[i]):
                raise AlliterError(f"the reward {self.spec.text} returned {v!r}; it must return finite numbers")
        return values

    def describe(self) -> dict[str, Any]:
        return describe_reward(self.spec.text, self.sha256, self.loaded_from)


def reward_to_ship(text: str) -> tuple[str, Path | None, str | None]:
    """A sweep's `--reward`: (the spec, a file's made absolute; the file Ray ships to the nodes; its SHA-256).
    A file whose name is a module Python imports already is refused: a trial would import that module instead."""
    spec = parse_reward(text)
    if spec.kind != "file":
        return text, None, None
    path = Path(spec.where).expanduser().resolve()
    if not path.is_file():
        raise AlliterError(f"--reward {text!r}: no such file {path}")
    found = importlib.util.find_spec(spec.module_name)
    if found is not None and (found.origin is None or Path(found.origin).resolve() != path):
        raise AlliterError(f"--reward {text!r}: {spec.module_name!r} is already a Python module here, which a trial "
                           f"would import instead of your file; rename {path.name}")
    return f"{path}:{spec.function}", path, file_sha256(path)


def load_reward(text: str, shipped_sha256: str | None = None) -> Reward:
    """The reward `--reward` names. A file is imported from its path; in a sweep's trial (`shipped_sha256`, the
    file's SHA-256 when the sweep started), from the copy Ray's runtime environment shipped to the trial's node,
    which must be that file."""
    spec = parse_reward(text)
    if spec.kind == "builtin":
        return Reward(spec, BUILTINS[spec.where])
    if spec.kind == "module" or shipped_sha256 is not None:
        name = spec.where if spec.kind == "module" else spec.module_name
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            where = "" if spec.kind == "module" else " (the sweep ships the file to its nodes: was it started with it?)"
            raise AlliterError(f"--reward {text!r}: cannot import {name} ({one_line(err)}){where}") from None
        path = getattr(module, "__file__", None)
        digest = file_sha256(path) if path else None
    else:
        path = Path(spec.where).expanduser()
        if not path.is_file():
            raise AlliterError(f"--reward {text!r}: no such file {path}")
        module = _import_file(path, spec)
        digest = file_sha256(path)
    if shipped_sha256 is not None and digest != shipped_sha256:
        raise AlliterError(f"the reward {text!r} this trial imports ({path}) is not the file the sweep started with "
                           "(its SHA-256 differs): restore the file, or start a new sweep")
    function = getattr(module, spec.function, None)
    if not callable(function):
        raise AlliterError(f"--reward {text!r}: {spec.where} has no function {spec.function!r}")
    return Reward(spec, function, digest, str(path) if path else None)


def _import_file(path: Path, spec: RewardSpec) -> Any:
    module_spec = importlib.util.spec_from_file_location(spec.module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file, whatever it raises at import
        raise AlliterError(f"--reward {spec.text!r}: importing {path} raised {type(err).__name__}: "
                           f"{one_line(err)}") from err
    sys.modules.setdefault(spec.module_name, module)
    return module
