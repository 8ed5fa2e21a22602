"""The collapse rule and the search's strategy, without Ray: synthetic outcomes whose answer is known."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from ray.tune.search import Searcher

from alliter.analyse.judge import analyse
from alliter.rule import CollapseRule
from alliter.cli import AlliterError
from alliter.sweep.search import BetaSearch, SearchSettings, bracket, simple_beta
from alliter.train.evaluate import evaluation_points
from helpers import COLLAPSED, K, varied_text, write_trial


def outcome(collapsed: bool, **more) -> dict:
    """A trial's last result as the trainable reports it (alliter.rule.Judgement.report)."""
    return {"kept": not collapsed, "verdict": "collapsed" if collapsed else "kept", **more}


def _stopping_trial(rng: random.Random, falls_after: int, groups: int) -> list[list[str]]:
    """Varied groups, then copies from `falls_after` groups on."""
    return [[varied_text(rng, 2) for _ in range(K)] if i < falls_after else [COLLAPSED] * K for i in range(groups)]


def test_the_trials_the_search_and_best_beta_judge_the_same_points_alike(tmp_path: Path):
    rng = random.Random(7)
    sweep = tmp_path / "sweep"
    # beta 1 collapses at group 25, beta 5 at group 38 then recovers (a final-point rule would call it kept), beta 50
    # never; beta 20 keeps its diversity but writes non-words from 400 generations
    b5 = _stopping_trial(rng, 38, 100)
    b5[60:] = [[varied_text(rng, 2) for _ in range(K)] for _ in range(40)]
    paths = {1.0: write_trial(sweep / "beta1", 1.0, _stopping_trial(rng, 25, 100)),
             5.0: write_trial(sweep / "beta5", 5.0, b5),
             20.0: write_trial(sweep / "beta20", 20.0, _stopping_trial(rng, 999, 100),
                               fluency=lambda g: 1.2 if g < 400 else 2.5),
             50.0: write_trial(sweep / "beta50", 50.0, _stopping_trial(rng, 999, 100))}
    rule = CollapseRule()
    result = analyse(sweep)
    summary = result.summary.set_index("value")

    search = BetaSearch(SearchSettings([1.0, 5.0, 20.0, 50.0], 1.1, 10, [0], 0.0, 4))
    ids = {search.suggest(f"t{i}")["beta"]: f"t{i}" for i in range(4)}
    for beta, path in paths.items():
        points = evaluation_points(path / "evaluations.jsonl", K)  # what the trainer holds, point by point
        stopped_at = None
        for n in range(1, len(points) + 1):  # what the trial does: judge its points so far, stop on a failure
            judged = rule.judge_trial(points[:n]).report()
            if not judged["kept"]:
                stopped_at = points[n - 1]["generations"]
                break
        search.on_trial_complete(ids[beta], {**judged, "generations": points[n - 1]["generations"]})
        failed = summary.loc[beta, "verdict"] in ("collapsed", "degenerate")
        assert (stopped_at is not None) == failed == search.verdicts()[beta], beta
        assert stopped_at == (None if not failed else summary.loc[beta, "failed_at"])
        assert search.outcomes[ids[beta]]["verdict"] == judged["verdict"]
    assert summary["verdict"].to_dict() == {1.0: "collapsed", 5.0: "collapsed", 20.0: "degenerate",
                                            50.0: "under-optimised"}
    assert summary.loc[1.0, "failed_at"] == 400  # the evaluation at 400 holds groups 35-39: copies
    assert summary.loc[20.0, "failed_at"] == 400


def test_the_rule_judges_a_point_against_the_unmodified_model():
    rule = CollapseRule(diversity_share=0.8, fluency_margin=0.25)
    base = {"generations": 0, "distinct_2": 0.70, "fluency": 1.10, "self_bleu": 0.30}
    assert rule.judge({"distinct_2": 0.57, "fluency": 1.30}, base) == "kept"  # 81%, +0.20
    assert rule.judge({"distinct_2": 0.55, "fluency": 1.10}, base) == "collapsed"  # 79%
    assert rule.judge({"distinct_2": 0.75, "fluency": 1.40}, base) == "degenerate"  # +0.30: non-words stay diverse
    assert rule.judge({"distinct_2": 0.20, "fluency": 4.00}, base) == "collapsed"  # repetition first
    bleu = CollapseRule(diversity_measure="self_bleu")  # counted as 1 - self-BLEU
    assert bleu.judge({"self_bleu": 0.40, "fluency": 1.1}, base) == "kept"  # 0.60 >= 0.8 x 0.70
    assert bleu.judge({"self_bleu": 0.50, "fluency": 1.1}, base) == "collapsed"


def test_a_trial_fails_at_its_first_failing_point_and_stable_points_have_a_kept_next():
    rule = CollapseRule()
    points = [{"generations": g, "distinct_2": d, "fluency": 1.0} for g, d in
              [(0, 0.7), (200, 0.7), (400, 0.69), (600, 0.3), (800, 0.7)]]
    j = rule.judge_trial(points)
    assert j.verdicts == ["kept", "kept", "kept", "collapsed", "kept"]
    assert (j.failed_at, j.failed_as) == (600, "collapsed") and not j.kept
    assert j.stable == [True, True, False, False, False]  # 400's next failed; 800 recovered, but the trial failed
    whole = rule.judge_trial(points[:3])
    # a trial's last point is never stable: nobody saw what came next (the data: alliter.rule's docstring)
    assert whole.kept and whole.stable == [True, True, False]
    assert rule.judge_trial(points[:4]).report()["verdict"] == "collapsed"


def test_the_seeds_vote():
    assert CollapseRule().seeds_failed([False, False, True])  # any seed, by default
    assert not CollapseRule(max_collapse_rate=0.34).seeds_failed([False, False, True])
    assert CollapseRule(max_collapse_rate=0.34).seeds_failed([False, True, True])
    assert not CollapseRule().seeds_failed([])


def test_training_points_are_window_means_after_the_first_group():
    from alliter.rule import training_points

    groups = [{"generations": g, "raw_reward_mean": r, "distinct_2": 0.5, "ce_ref_mean": 1.0, "kl_penalty_mean": -0.1}
              for g, r in [(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0), (50, 5.0)]]
    points = training_points(groups, window=20)
    assert [p["generations"] for p in points] == [0, 20, 40, 50]
    assert [p["alliteration"] for p in points] == [1.0, 1.5, 3.5, 4.5]  # the last: (30, 50]
    assert points[1]["kl"] == pytest.approx(0.1) and points[1]["fluency"] == 1.0
    assert [p["generations"] for p in training_points(groups, window=20, partial=False)] == [0, 20, 40]


def test_bracket_is_the_cut_with_fewest_wrong_outcomes():
    assert bracket({10.0: True, 100.0: False}) == (10.0, 100.0, [])
    assert bracket({1.0: True, 10.0: True}) == (10.0, None, [])
    assert bracket({1.0: False}) == (None, 1.0, [])
    # 40 kept but 45 collapsed: two cuts tie with one outcome on the wrong side; the bracket spans both
    lo, hi, wrong = bracket({30.0: True, 40.0: False, 45.0: True, 50.0: False})
    assert (lo, hi) == (30.0, 50.0) and wrong == []
    lo, hi, wrong = bracket({10.0: True, 20.0: False, 30.0: True, 40.0: True, 50.0: False, 60.0: False})
    assert (lo, hi, wrong) == (40.0, 50.0, [20.0])


def run_search(settings: SearchSettings, collapsed, seed_noise: random.Random | None = None,
               steps: int = 200) -> BetaSearch:
    """Drive the searcher as Tune does: `concurrency` slots, trials finishing in random order."""
    search = BetaSearch(settings)
    rng = seed_noise or random.Random(0)
    running: list[str] = []
    for i in range(steps):
        while True:
            trial_id = f"t{i}-{len(running)}"
            config = search.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                break
            running.append(trial_id)
        if config == Searcher.FINISHED:
            return search
        assert running, "the searcher waits with nothing running"
        done = running.pop(rng.randrange(len(running)))
        beta, seed = search.trials[done]
        search.on_trial_complete(done, outcome(collapsed(beta, seed), generations=100, diversity_kept=0.5))
    raise AssertionError("the search did not finish")


# the README's promise, on the defaults: from the start 1, 10, 100 with b* between 10 and 100, one trial slot
# brackets b* within 1.25 in at most 6 trials (100 and 10; 1 is implied once 10 collapses; then at most 4
# betas between), and c slots in at most 6 + 5 (c - 1): some are chosen before the outcome beside them is known
@pytest.mark.parametrize("b_star", [12.0, 23.0, 45.0, 49.5, 77.0, 99.0])
@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_search_brackets_the_boundary_within_the_precision(b_star, concurrency):
    settings = SearchSettings([1.0, 10.0, 100.0], 1.25, 30, [0], 0.0, concurrency)
    search = run_search(settings, lambda beta, seed: beta < b_star, random.Random(int(b_star) * concurrency))
    lo, hi, wrong = bracket(search.verdicts())
    assert lo < b_star <= hi and hi / lo <= 1.25 and not wrong
    assert len(search.betas) <= 6 + 5 * (concurrency - 1)
    assert len(set(search.betas)) == len(search.betas)  # no beta twice
    assert search.finished and "as narrow as the precision" in search.log[-1]["reason"]


@pytest.mark.parametrize("b_star, expect", [(0.5, "collapsed: 10x"), (500.0, None), (3000.0, None)])
def test_search_expands_beyond_the_start(b_star, expect):
    settings = SearchSettings([1.0, 10.0, 100.0], 1.2, 20, [0], 0.0, 2)
    search = run_search(settings, lambda beta, seed: beta < b_star)
    lo, hi, _ = bracket(search.verdicts())
    assert lo < b_star <= hi and hi / lo <= 1.2


def test_search_stops_at_its_budget_and_says_so():
    settings = SearchSettings([1.0, 10.0, 100.0], 1.01, 5, [0], 0.0, 2)
    search = run_search(settings, lambda beta, seed: beta < 42)
    assert len(search.betas) == 5
    assert "budget of 5 betas is spent" in search.log[-1]["reason"]


def test_noisy_outcomes_still_end_in_a_bracket_around_the_boundary():
    """Near b* the outcome is a coin toss (probability of collapse falls linearly from 1 at b*/1.3 to 0 at
    b*x1.3): the search ends within its budget, the bracket holds the noisy zone's middle, and any
    inversion is named."""
    b_star, hits = 40.0, 0
    for trial in range(40):
        noise = random.Random(trial)

        def collapsed(beta: float, seed: int) -> bool:
            p = min(1.0, max(0.0, (math.log(b_star * 1.3) - math.log(beta)) / (2 * math.log(1.3))))
            return noise.random() < p

        search = run_search(SearchSettings([1.0, 10.0, 100.0], 1.1, 12, [0], 0.0, 2), collapsed, noise)
        lo, hi, wrong = bracket(search.verdicts())
        assert search.finished and len(search.betas) <= 12
        assert b_star / 1.3 <= hi and lo <= b_star * 1.3  # never outside the noisy zone
        hits += lo <= b_star <= hi * 1.1
        if wrong:
            assert "not monotone" in search.log[-1]["reason"]
    assert hits >= 20


def test_seeds_make_a_beta_collapsed_when_any_seed_collapses():
    settings = SearchSettings([1.0, 10.0, 100.0], 1.1, 12, [0, 1, 2], 0.0, 3)
    # seed 2 collapses up to 60, the others up to 30: with max_collapse_rate 0 the boundary is 60
    search = run_search(settings, lambda beta, seed: beta < (60.0 if seed == 2 else 30.0))
    lo, hi, _ = bracket(search.verdicts())
    assert lo < 60 <= hi and hi / lo <= 1.1
    assert all(sorted(s for b2, s in search.trials.values() if b2 == b) == [0, 1, 2] for b in search.betas)
    # one seed in three may collapse: the boundary moves to 30
    loose = run_search(SearchSettings([1.0, 10.0, 100.0], 1.1, 12, [0, 1, 2], 0.34, 3),
                       lambda beta, seed: beta < (60.0 if seed == 2 else 30.0))
    lo, hi, _ = bracket(loose.verdicts())
    assert lo < 30 <= hi and hi / lo <= 1.1


def test_errored_trials_leave_their_beta_undecided_and_count_in_the_budget():
    search = BetaSearch(SearchSettings([10.0, 100.0], 1.1, 3, [0], 0.0, 2))
    a, b = search.suggest("a"), search.suggest("b")
    search.on_trial_complete("a", None, error=True)
    search.on_trial_complete("b", outcome(False))
    assert search.verdicts() == {10.0: False}
    assert {a["beta"], b["beta"]} == {10.0, 100.0}


def test_save_and_restore_keep_the_whole_state(tmp_path: Path):
    search = BetaSearch(SearchSettings([1.0, 10.0, 100.0], 1.1, 12, [0], 0.0, 2))
    search.suggest("a"), search.suggest("b")
    search.on_trial_complete("b", outcome(True, generations=50))
    search.save(str(tmp_path / "searcher-state.pkl"))
    again = BetaSearch(SearchSettings([5.0], 2.0, 1, [0], 0.0, 1))
    again.restore(str(tmp_path / "searcher-state.pkl"))
    assert again.trials == search.trials and again.outcomes == search.outcomes and again.log == search.log
    assert again.suggest("c") == search.suggest("c")
    path = json.loads((tmp_path / "search.json").read_text())
    assert [s["beta"] for s in path["steps"] if s["event"] == "suggest"] == [100.0, 10.0]


@pytest.mark.parametrize("settings, message", [
    (SearchSettings([10.0], 1.0, 5, [0], 0.0, 1), "precision is a ratio and must be > 1"),
    (SearchSettings([10.0], 1.1, 0, [0], 0.0, 1), "budget must be at least 1"),
    (SearchSettings([0.0, 10.0], 1.1, 5, [0], 0.0, 1), "start betas must be finite and > 0"),
])
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(AlliterError, match=message):
        settings.validate()


def test_betas_are_the_simplest_numbers_in_the_middle_of_the_gap():
    search = BetaSearch(SearchSettings([10.0, 100.0], 1.1, 12, [0], 0.0, 1))
    search.on_trial_complete("x", None)  # unknown trial: ignored
    seen = []
    for i in range(4):
        config = search.suggest(f"t{i}")
        seen.append(config["beta"])
        search.on_trial_complete(f"t{i}", outcome(config["beta"] < 40))
    assert seen == [100.0, 10.0, 30.0, 50.0]  # the simplest numbers in the middle of each gap


def test_simple_betas():
    assert simple_beta(10, 100) == 30  # 1 digit, closest to 31.6 in log beta
    assert simple_beta(30, 100) == 50  # 50 and 60 are as close to 54.8 (50 x 60 = 30 x 100): the lower
    assert simple_beta(40, 50) == 45 and simple_beta(42, 45) == 43  # 2 digits once no 1-digit number fits
    assert simple_beta(10, 100, taken=[30.0]) == 40  # never a beta already run
    assert simple_beta(0.01, 0.1) == 0.03


def test_a_running_trial_the_bracket_no_longer_needs_is_dropped_and_says_why(tmp_path: Path):
    from alliter.schema import DROPPED, read_stop
    from alliter.sweep.search import SearchStopper

    search = BetaSearch(SearchSettings([10.0, 100.0], 1.25, 12, [0], 0.0, 3))
    assert [search.suggest(t)["beta"] for t in "abc"] == [100.0, 10.0, 30.0]  # 30: between two running betas
    stopper = SearchStopper(search, str(tmp_path / "exp"), seed_in_name=False)
    assert not stopper("c", {"generations": 50})  # still useful
    search.on_trial_complete("b", outcome(False, generations=2000))  # 10 kept: 30 and 100 can't matter
    assert search.needless("c").startswith("not needed: beta 10 kept its diversity")
    assert stopper("c", {"generations": 60}) and stopper("a", {"generations": 70})
    stop = read_stop(tmp_path / "exp" / "beta=30_c")
    assert stop["stopped"] == DROPPED and stop["generations"] == 60 and stop["why"].startswith("not needed: beta 10 kept")
    search.on_trial_complete("c", outcome(False, generations=60))
    search.on_trial_complete("a", outcome(False, generations=70))
    assert search.verdicts() == {10.0: False}  # a dropped trial gives its beta no verdict
    assert [o["verdict"] for o in search.outcomes.values()] == ["kept", "dropped", "dropped"]
    assert search.suggest("d")["beta"] == 1.0  # the start's last beta, no longer implied
