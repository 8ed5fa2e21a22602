"""Diversity a reader sees: the measures of a point's stories together (against hand-computed values on small texts),
and the rule's verdict "narrowed" (a one-topic story set is not kept; the unmodified model against itself is)."""

from __future__ import annotations

import math

import pytest

from alliter import measures as M
from alliter.rule import COLLAPSED, KEPT, NARROWED, CollapseRule
from alliter.train.reward import alliterating_pairs

BASE = ["Once upon a time there was a dog. The dog liked the park."] * 3 + \
       ["Once upon a time a girl found a ball. She was happy."] * 3
TREE = ["Once upon a time there was a tree. The tree took the tree to the tree."] * 6


def test_overused_words_count_4_letter_words_against_the_base_with_three_uses_added():
    words = M.overused_words(TREE, BASE, top=None)
    # "tree": 4 uses a story x 6 stories = 24 uses, none in the base: (24 / 6) / ((0 + 3) / 6) = 8x
    assert words[0] == ["tree", 4.0, 8.0, 24, 0]
    # "there": once a story in both, 3 base uses: (6 / 6) / ((3 + 3) / 6) = 1x: not over-used; "took" 1 / (3/6) = 2x
    assert [w[0] for w in words] == ["tree", "took"] and words[1][2] == 2.0
    assert M.top_overuse(TREE, BASE) == 8.0 and M.top_overuse(BASE, BASE) == 1.0
    assert M.overuse_text(words, 6) == ('"tree" 4 a story (8x; 24 uses against 0 in 6 stories of the unmodified model), '
                                       '"took" 1 a story (2x; 6 uses against 0 in 6 stories of the unmodified model)')


def test_a_word_used_in_fewer_than_one_story_of_five_is_not_counted():
    texts = ["a tree grew"] + ["a dog ran"] * 9  # "tree" in 1 of 10 stories, never in the base
    assert M.overused_words(texts, BASE) == [] and M.top_overuse(texts, BASE) == 1.0


def test_word_js_is_in_bits_0_for_the_same_distribution_and_1_for_no_word_in_common():
    assert M.word_js(BASE, BASE) == 0.0
    assert M.word_js(["a b"], ["c d"]) == pytest.approx(1.0)
    # P = {a, b}, Q = {a, c}: M = {a: 1/2, b: 1/4, c: 1/4}; KL(P||M) = KL(Q||M) = 1/2 log2(1/2 / 1/4) = 1/2
    assert M.word_js(["a b"], ["a c"]) == pytest.approx(0.5)


def test_compression_and_pooled_distinct_2_see_stories_that_repeat_one_another():
    varied = [" ".join(f"w{i}x{j}" for j in range(30)) for i in range(20)]
    same = ["the tall tree took the tall tree to town"] * 20
    assert M.compression_ratio(same) > 4 * M.compression_ratio(varied)
    # pooled: 20 stories of the same 8 pairs, "the tall" and "tall tree" twice in each: 6 distinct of 160
    assert M.distinct_n(same, 2) == pytest.approx(6 / 160)
    measures = M.pooled_measures(same, BASE)
    assert measures["pooled_distinct_2"] == M.distinct_n(same, 2)
    assert measures["top_overuse"] == 4.0  # "tall", "tree": 2 a story against (0 + 3) in 6 base stories


def point(top_overuse: float, distinct_2: float = 0.6, fluency: float = 1.2, generations: int = 200) -> dict:
    return {"generations": generations, "distinct_2": distinct_2, "fluency": fluency, "top_overuse": top_overuse}


def test_a_point_that_over_uses_a_word_past_the_bound_is_narrowed_the_others_kept():
    rule, base = CollapseRule(), point(1.0)
    assert rule.judge(point(6.5), base) == NARROWED and rule.judge(point(5.9), base) == KEPT
    assert rule.judge(point(50.0, distinct_2=0.1), base) == COLLAPSED  # collapse is said first
    assert CollapseRule(max_overuse=0).judge(point(50.0), base) == KEPT  # 0: no such check
    assert rule.judge({**point(1.0), "top_overuse": math.nan}, base) == KEPT  # a point of before the measure
    judgement = rule.judge_trial([point(1.0, generations=0), point(2.0, generations=200), point(8.0, generations=400),
                                  point(2.0, generations=600)])
    assert judgement.failed_at == 400 and judgement.failed_as == NARROWED
    assert judgement.verdicts == [KEPT, KEPT, NARROWED, KEPT] and not any(judgement.stable[1:])  # failed: for good


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0, math.inf, math.nan])
def test_a_bound_that_is_no_ratio_above_1_is_refused(bad):
    from alliter.cli import AlliterError

    with pytest.raises(AlliterError, match="max_overuse must be a ratio above 1"):
        CollapseRule(max_overuse=bad).validate_rule()


def test_the_unmodified_model_against_itself_stays_kept_and_a_one_topic_set_does_not(bundled_model):
    """The bound from data: the bundled model's evaluation stories on other seeds, against its default seed's, stay
    under the bound (the noise measured for the README: at most 4.0x over 21 seeds, every pair); stories that share one
    topic word do not."""
    from alliter.config import TrainConfig
    from alliter.train.evaluate import evaluate_prompts
    from alliter.train.model import load_models

    cfg = TrainConfig(threads=1).resolved()
    m = load_models(cfg)

    def stories(seed: int) -> list[str]:
        return [s["text"] for s in evaluate_prompts(m.policy, m.reference, m.tokenizer, cfg.eval_prompts, m.eos_ids,
                                                    samples=50, seed=seed, group_size=10, max_length=100, top_k=50,
                                                    temperature=1.0)]

    base = stories(cfg.eval_seed)
    rule = CollapseRule()
    for seed in (1, 2, 3):
        assert M.top_overuse(stories(seed), base) < rule.max_overuse
    narrowed = [f"{text} The tree was big. The tree was tall." for text in stories(4)]
    assert M.top_overuse(narrowed, base) > rule.max_overuse


def test_a_word_s_share_of_the_reward_and_its_ratio_with_no_count_of_zero():
    pairs = alliterating_pairs("The tree took the tall tree. A dog ran")
    assert len(pairs) == 5 and M.word_share(pairs, "tree") == 3 / 5  # "tree." is the word tree
    assert math.isnan(M.word_share([], "tree"))
    # a word the unmodified model never wrote, once a story: against 3 added uses in its 50 stories, not against 0
    assert M.overuse_ratio(50, 50, 0, 50) == pytest.approx(50 / 3)
    assert M.overused_words(["tree"] * 50, ["a"] * 50)[0][2] == M.overuse_ratio(50, 50, 0, 50)
