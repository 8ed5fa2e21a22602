"""The measures of a group of texts: diversity (distinct-n, the unique fraction, self-BLEU, repetition inside a
text), an evaluation's measures (`point_measures`; `evaluation_measures` for each point of a trial), the words a
point over-uses, DARLING's lexical partition (`darling_diversity`: --darling's reward), and the registry (`MEASURES`)
that names each measure once for the rule, the frames, the report, the model card and the trackers. Torch-free and
pandas-free: the trainer, the evaluation and best_beta measure alike."""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all texts divided by their total (0 when there is none)."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_fraction(texts: Sequence[str]) -> float:
    """Distinct texts divided by texts."""
    return len(set(texts)) / len(texts) if texts else 0.0


def repeated_4grams(text: str) -> float:
    """Share of a text's word 4-grams that repeat one seen earlier in it (0 for under 4 words)."""
    words = text.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def groups_of(texts: Sequence[str], group_size: int) -> list[Sequence[str]]:
    """The texts cut into whole groups of `group_size` (all of them when there are fewer): a diversity measure of
    a group compares with the training groups' and with the unmodified model's, measured on as many texts."""
    if len(texts) <= group_size:
        return [texts] if texts else []
    return [texts[i : i + group_size] for i in range(0, len(texts) - group_size + 1, group_size)]


def self_bleu(texts: Sequence[str], bleu: Any) -> float:
    """Mean BLEU of each text against the others as references, in [0, 1]; high = near-duplicates.

    Equal to the mean of `bleu.sentence_score(text, others)` (tests/test_analysis.py), with each text's n-grams
    counted once per group: sentence_score counts every reference again for each hypothesis."""
    if len(texts) < 2:
        return math.nan
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    segments = [bleu._preprocess_segment(t) for t in texts]
    grams = [extract_all_word_ngrams(s, 1, bleu.max_ngram_order) for s in segments]  # (Counter, length) each
    # BLEU clips a hypothesis n-gram's count by the most any one reference has. The most among "the others" is
    # the group's highest count, unless the hypothesis holds it: then the second highest.
    top: dict[tuple[str, ...], tuple[int, int, int]] = {}  # n-gram -> (highest count, its text, second highest)
    for j, (counts, _) in enumerate(grams):
        for g, c in counts.items():
            high, who, second = top.get(g, (0, -1, 0))
            top[g] = (c, j, high) if c > high else (high, who, max(second, c))
    scores = []
    for i, segment in enumerate(segments):
        ref_ngrams = {}
        for g in grams[i][0]:
            high, who, second = top[g]
            ref_ngrams[g] = high if who != i else second
        ref_lens = [n for j, (_, n) in enumerate(grams) if j != i]
        stats = bleu._compute_segment_statistics(segment, {"ref_ngrams": ref_ngrams, "ref_lens": ref_lens})
        scores.append(bleu._compute_score_from_stats(stats).score)
    return sum(scores) / len(scores) / 100


def bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)  # sentence-level BLEU without zeroing texts short of 4-gram matches


def group_measures(texts: Sequence[str], bleu: Any = None) -> dict[str, float]:
    """The diversity measures of one group of texts, for a training group (best_beta) and an evaluation's groups
    alike: distinct-n, the unique fraction and, with a `bleu()`, self-BLEU (nan for a group of one)."""
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "unique_fraction": unique_fraction(texts),
        **({"self_bleu": self_bleu(texts, bleu)} if bleu is not None else {}),
    }


def point_measures(stories: Sequence[dict], group_size: int, bleu: Any = None,
                   base_texts: Sequence[str] | None = None) -> dict[str, float]:
    """The measures of an evaluation (alliter.train.evaluate's stories, in sample order): alliteration (mean raw
    reward), the diversity measures (`group_measures` per group of `group_size`, then their mean; with a `bleu()`,
    self-BLEU too), repeated 4-grams per text, fluency (the unmodified model's mean token cross-entropy, story by
    story, then the mean), the per-token KL estimate (CE_ref - CE_policy, which can be negative), and the measures of
    the stories together against the unmodified model's (`base_texts`, its evaluation's: `pooled_measures`)."""
    texts = [s["text"] for s in stories]
    groups = groups_of(texts, group_size)
    n = len(stories)

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    per_group = [group_measures(g, bleu) for g in groups]
    return {
        "alliteration": mean(s["raw_reward"] for s in stories),
        **{name: mean(m[name] for m in per_group if not math.isnan(m[name])) for name in group_measures([], bleu)},
        "repeated_4grams": mean(repeated_4grams(t) for t in texts),
        "fluency": mean(s["ce_ref"] for s in stories),
        "kl": mean(s["ce_ref"] - s["ce_policy"] for s in stories),
        "new_tokens": mean(s["new_tokens"] for s in stories),
        "samples": float(n),
        **pooled_measures(texts, base_texts),
    }


def evaluation_measures(stories: Iterable[dict], group_size: int, bleu: Any = None) -> list[dict[str, float]]:
    """The measures of each evaluation among `stories` (rows of an evaluations.jsonl: "generations", "sample", ...),
    one point per generations, in order, each against the first (the unmodified model's): the trainer's points and
    best_beta's alike."""
    by_point: dict[int, list[dict]] = {}
    for story in stories:
        by_point.setdefault(int(story["generations"]), []).append(story)
    points = [sorted(s, key=lambda x: x["sample"]) for _, s in sorted(by_point.items())]
    base = [s["text"] for s in points[0]] if points else []
    return [{"generations": g, **point_measures(s, group_size, bleu, base)} for g, s in zip(sorted(by_point), points)]


# --- measures of a point's stories together (a reader sees one word in every story; a group's measures do not) ---

OVERUSE_MIN_RATE = 0.2  # a word counts as over-used only if a point uses it at least once in 5 stories
OVERUSE_MIN_LETTERS = 4  # ... and it has at least 4 letters ("the", "and", "a" shift with any style)
OVERUSE_PSEUDO_USES = 3  # added to the unmodified model's uses of every word (Laplace smoothing), so that no ratio
# rests on a base of 0, 1 or 2 uses: the unmodified bundled model against itself, 21 evaluation seeds of 50 stories
# each, every pair: up to 12x with 1 added, at most 4.0x with 3 (README, "What kept means")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def word_counts(texts: Sequence[str]) -> Counter:
    """Lower-case words (letters, and an apostrophe inside) of the texts, counted."""
    return Counter(w for t in texts for w in WORD.findall(t.lower()))


def overuse_ratio(uses: int, stories: int, base_uses: int, base_stories: int) -> float:
    """How many times as often a word is used per story as by the unmodified model, its uses there smoothed by
    OVERUSE_PSEUDO_USES: no ratio rests on a count of zero."""
    return (uses / max(stories, 1)) / ((base_uses + OVERUSE_PSEUDO_USES) / max(base_stories, 1))


def overused_words(texts: Sequence[str], base_texts: Sequence[str], top: int | None = 5) -> list[list]:
    """The words of OVERUSE_MIN_LETTERS letters or more that the texts use more often than `base_texts` (the
    unmodified model's stories) do, most over-used first: [word, uses per text, times the base's rate, uses, the
    base's uses], for words used at least OVERUSE_MIN_RATE per text; the base's uses of a word are smoothed by
    OVERUSE_PSEUDO_USES ("tree" 150 times in 50 stories, 9 times in the base's 50: 12.5x; "trip" 12 times, never in
    the base: 4x)."""
    counts, base = word_counts(texts), word_counts(base_texts)
    n, n0 = max(len(texts), 1), max(len(base_texts), 1)
    rows = [[w, c / n, overuse_ratio(c, n, base[w], n0), c, base[w]] for w, c in counts.items()
            if len(w) >= OVERUSE_MIN_LETTERS and c / n >= OVERUSE_MIN_RATE]
    return sorted((r for r in rows if r[2] > 1), key=lambda r: (-r[2], r[0]))[:top]  # lists: as JSON keeps them


def top_overuse(texts: Sequence[str], base_texts: Sequence[str]) -> float:
    """How many times as often as the unmodified model the texts use their most over-used word (overused_words); 1
    when they over-use none."""
    words = overused_words(texts, base_texts, top=1)
    return words[0][2] if words else 1.0


def word_js(texts: Sequence[str], base_texts: Sequence[str]) -> float:
    """The Jensen-Shannon divergence, in bits, between the word distributions (every word) of the texts and of the
    base's: 0 for the same distribution, 1 for no word in common. Each is compared with the mixture of the two,
    which holds every word of either: no smoothing is needed. 50 stories against 50 others of the same model sit
    near 0.15 bits (sampling alone)."""
    p, q = word_counts(texts), word_counts(base_texts)
    np_, nq = sum(p.values()), sum(q.values())
    if not np_ or not nq:
        return math.nan
    total = 0.0
    for w in sorted(p.keys() | q.keys()):  # in one order: a set's follows the hash seed, and a float sum its order
        a, b = p[w] / np_, q[w] / nq
        m = (a + b) / 2
        total += (a * math.log2(a / m) if a else 0.0) + (b * math.log2(b / m) if b else 0.0)
    return total / 2


def recent_overuse(texts: Sequence[str], pool: Sequence[str], base_texts: Sequence[str]) -> list[float]:
    """Each text's most over-used word: the highest ratio, among its words of OVERUSE_MIN_LETTERS letters or more, of
    the word's uses per story in `pool` (the recent samples) to its uses per story in `base_texts` (the unmodified
    model's, OVERUSE_PSEUDO_USES added, as overused_words); 1 at least. What --overuse-cap damps by."""
    counts, base = word_counts(pool), word_counts(base_texts)
    n, n0 = max(len(pool), 1), max(len(base_texts), 1)
    out = []
    for text in texts:
        words = {w for w in WORD.findall(text.lower()) if len(w) >= OVERUSE_MIN_LETTERS}
        out.append(max([1.0, *(overuse_ratio(counts[w], n, base[w], n0) for w in words)]))
    return out


def word_share(pairs: Sequence[tuple[str, str]], word: str) -> float:
    """The share of word pairs (alliterating ones: how much of the reward one word brings) that hold `word`."""
    held = sum(any(word in WORD.findall(w.lower()) for w in pair) for pair in pairs)
    return held / len(pairs) if pairs else math.nan


def compression_ratio(texts: Sequence[str]) -> float:
    """The texts' bytes over their gzip-compressed bytes, all of a point's stories together: 3.2 for the unmodified
    bundled model's 50 stories, 45 for a collapsed policy's (repeats compress)."""
    raw = "\n".join(texts).encode()
    return len(raw) / len(gzip.compress(raw, mtime=0)) if raw else math.nan


def pooled_measures(texts: Sequence[str], base_texts: Sequence[str] | None = None) -> dict[str, float]:
    """The measures of all of a point's stories together (the registry's with a `pooled` function), against the
    unmodified model's (`base_texts`; None: the point's own, the unmodified model's point itself)."""
    base = texts if base_texts is None else base_texts
    return {m.name: m.pooled(texts, base) for m in MEASURES if m.pooled}


def overuse_text(words: list[list], stories: int | None = None) -> str:
    """`"tree" 3 a story (12x; 150 uses against 9)`, ...: how a report and a model card say over-used words, those
    used at least twice as often as by the unmodified model (`stories`: how many of its stories the uses are of)."""
    shown = [w for w in words if w[2] >= 2]
    of = f" in {stories} stories of the unmodified model" if stories else ""
    return ", ".join(f'"{w[0]}" {w[1]:.2g} a story ({w[2]:.0f}x' + (f"; {w[3]} uses against {w[4]}{of})" if len(w) > 3
                                                                  else ")") for w in shown) or "none (no word 2x or more)"


# --- DARLING's partition, lexical: which stories are "alike" (--darling; alliter.train.trainer) ----------------------

TOPIC_MIN_LETTERS = 4  # "tree", "tall", "lily": short function words ("the", "was", "and") are never a topic
TOPIC_MIN_USES = 2  # a word a story uses once is a passing word, twice or more is what it is about


def topic_words(text: str) -> frozenset[str]:
    """A story's topic words: its lower-case words (`WORD`: letters, an apostrophe inside) of TOPIC_MIN_LETTERS
    letters or more (the apostrophe not counted) that it uses TOPIC_MIN_USES times or more."""
    counts = Counter(w for w in WORD.findall(text.lower()) if len(w) - w.count("'") >= TOPIC_MIN_LETTERS)
    return frozenset(w for w, n in counts.items() if n >= TOPIC_MIN_USES)


def alike(a: frozenset[str], b: frozenset[str]) -> bool:
    """Two stories (their `topic_words`) are alike when they share a topic word: each uses it at least twice.
    DARLING's partition function (Li et al. 2025, arXiv 2509.02534, a learned classifier of semantic equivalence)
    made lexical, so that a policy that writes "the tree" into every story finds every story alike."""
    return not a.isdisjoint(b)


def darling_diversity(texts: Sequence[str], memory: Sequence[str] = ()) -> list[float]:
    """Each text's diversity: the share of the others (the rest of `texts`, and every story of `memory`: the last
    groups') that are not `alike` it, in [0, 1]; DARLING's Div(y_i) = 1/(n-1) sum_{j != i} 1[y_i, y_j not alike].
    1 for a group of one with no memory (nothing to be alike)."""
    topics = [topic_words(t) for t in texts]
    pool = [topic_words(t) for t in memory]
    out = []
    for i, mine in enumerate(topics):
        others = [t for j, t in enumerate(topics) if j != i] + pool
        out.append(sum(not alike(mine, t) for t in others) / len(others) if others else 1.0)
    return out


# --- the registry: every measure of a point, named once -----------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A measure of a point (an evaluation's stories), and everything that names it."""

    name: str
    """Its name in a point, points.csv and the trackers' metrics (eval_NAME)."""
    group: str | None
    """The training group's column it stands for (metrics.jsonl, or best_beta's text measures of a group): the
    training points' fallback and the windows; None: the groups have none."""
    label: str
    """How a table or a plot's axis names it (a measure of sameness: as the diversity it is counted as)."""
    card: str | None = None
    """How a model card explains it; None: not on the card."""
    sameness: bool = False
    """Higher means more alike: counted as 1 - it wherever a diversity is meant."""
    rule: str | None = None
    """Who can judge a collapse by it: "trainer" (the trainer measures it on every group: a sweep's rule may use
    it), "analysis" (best_beta measures it: its rule may), None (not a diversity measure)."""
    pooled: Callable[[Sequence[str], Sequence[str]], float] | None = None
    """For a measure of all of a point's stories together: f(texts, the unmodified model's texts) (pooled_measures)."""
    hparam: bool = False
    """Shown in TensorBoard's HParams dashboard (as eval/NAME), beside the settings a sweep varies."""


MEASURES = (
    Measure("alliteration", "raw_reward_mean", "alliteration",
            "alliteration (mean raw reward: adjacent word pairs with the same first letter)", hparam=True),
    Measure("distinct_1", "distinct_1", "distinct-1", "distinct-1 (unique words / words, per group of stories)",
            rule="trainer"),
    Measure("distinct_2", "distinct_2", "distinct-2", "distinct-2 (unique word pairs / word pairs, per group)",
            rule="trainer", hparam=True),
    Measure("unique_fraction", "unique_fraction", "unique fraction",
            "unique fraction (distinct stories / stories, per group)", rule="trainer"),
    Measure("self_bleu", "self_bleu", "1 - self-BLEU",
            "self-BLEU (each story against the rest of its group; high = near-duplicates)", sameness=True,
            rule="analysis"),
    Measure("repeated_4grams", "repeated_4grams", "1 - repeated 4-grams", "repeated word 4-grams inside a story (share)",
            sameness=True),
    Measure("fluency", "ce_ref_mean", "fluency",
            "fluency: mean token cross-entropy of the stories under the unmodified model (nats)", hparam=True),
    Measure("kl", None, "KL per token", "KL estimate per token (CE unmodified - CE this model, on its stories)",
            hparam=True),
    Measure("new_tokens", "mean_new_tokens", "new tokens"),
    Measure("top_overuse", None, "most over-used word (x)",
            "most over-used word: how many times as often as the unmodified model the stories use their most over-used "
            "word of 4+ letters (used in at least 1 of 5 stories)", pooled=top_overuse, hparam=True),
    Measure("word_js", None, "word JS (bits)",
            "Jensen-Shannon divergence of the stories' word distribution from the unmodified model's (bits)",
            pooled=word_js),
    Measure("compression", None, "gzip ratio", "compression ratio of all the stories together (gzip)",
            pooled=lambda texts, base: compression_ratio(texts)),
    Measure("pooled_distinct_2", None, "pooled distinct-2", "distinct-2 of all the stories together",
            pooled=lambda texts, base: distinct_n(texts, 2)),
)
BY_NAME = {m.name: m for m in MEASURES}
POINT_MEASURES = tuple(m.name for m in MEASURES)
DIVERSITY_MEASURES = tuple(m.name for m in MEASURES if m.rule)  # what the rule's --diversity-measure takes
TRAINER_DIVERSITY = tuple(m.name for m in MEASURES if m.rule == "trainer")  # ... in a sweep (the trials measure)
SAMENESS = tuple(m.name for m in MEASURES if m.sameness)
