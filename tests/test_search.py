"""The collapse rule and the search's strategy, without Ray: synthetic outcomes whose answer is known."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from alliter.analysis import AnalysisConfig, analyse
from alliter.collapse import CollapseRule, CollapseWatch
from alliter.config import AlliterError
from alliter.search import BetaSearch, SearchSettings, bracket, simple_beta
from test_analysis import COLLAPSED, K, varied_text, write_trial

from ray.tune.search import Searcher


def test_kept_shares_is_the_running_window_mean_over_the_first_group():
    rule = CollapseRule(window=30)  # three groups of ten
    gens = [10, 20, 30, 40, 50]
    div = [1.0, 0.9, 0.8, 0.3, 0.4]
    expected = [1.0, 0.95, 0.9, (0.9 + 0.8 + 0.3) / 3, (0.8 + 0.3 + 0.4) / 3]
    assert rule.kept_shares(gens, div) == pytest.approx(expected)
    assert CollapseRule(window=30, diversity_share=0.6).collapsed_at(gens, div) == 50  # 0.667, then 0.5


def test_collapsed_at_is_the_first_generation_under_the_share():
    rule = CollapseRule(window=30)
    gens, div = [10, 20, 30, 40, 50], [1.0, 0.9, 0.8, 0.3, 0.4]
    assert rule.collapsed_at(gens, div) == 40  # (0.9 + 0.8 + 0.3) / 3 = 0.667 < 0.8
    assert math.isnan(rule.collapsed_at(gens, [1.0, 1.0, 0.9, 0.9, 0.9]))
    assert math.isnan(rule.collapsed_at([], []))


def _stopping_trial(rng: random.Random, falls_after: int, groups: int) -> list[list[str]]:
    """Varied groups, then copies from `falls_after` groups on."""
    return [[varied_text(rng, 2) for _ in range(K)] if i < falls_after else [COLLAPSED] * K for i in range(groups)]


def test_the_trials_watch_the_search_and_best_beta_agree_on_the_same_frames(tmp_path: Path):
    rng = random.Random(7)
    sweep = tmp_path / "sweep"
    # beta 1 collapses at group 25, beta 5 at group 33 then recovers (best_beta's old final-window rule would
    # call it kept), beta 50 never
    b5 = _stopping_trial(rng, 33, 60)
    b5[40:] = [[varied_text(rng, 2) for _ in range(K)] for _ in range(20)]
    paths = {1.0: write_trial(sweep / "beta1", 1.0, _stopping_trial(rng, 25, 60)),
             5.0: write_trial(sweep / "beta5", 5.0, b5),
             50.0: write_trial(sweep / "beta50", 50.0, _stopping_trial(rng, 99, 60))}
    rule = CollapseRule()
    result = analyse([sweep], AnalysisConfig())
    verdicts = result.summary.set_index("beta")["verdict"].to_dict()
    fell = result.summary.set_index("beta")["diversity_fell_at"].to_dict()

    search = BetaSearch(SearchSettings([1.0, 5.0, 50.0], 1.1, 10, [0], 0.0, 3))
    ids = {}
    for _ in range(3):
        trial_id = f"t{len(ids)}"
        ids[search.suggest(trial_id)["beta"]] = trial_id
    for beta, path in paths.items():
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        watch = CollapseWatch(rule)
        stopped_at = None
        for row in rows:  # what the trial does, group by group
            if watch.add(row)["collapsed"]:
                stopped_at = row["generations"]
                break
        last = {**row, **watch.verdict()}
        search.on_trial_complete(ids[beta], last)  # the trial's last result, as Tune hands it over
        assert (stopped_at is not None) == (verdicts[beta] == "collapsed") == search.verdicts()[beta], beta
        if stopped_at is not None:
            assert stopped_at == fell[beta]
        else:
            assert math.isnan(fell[beta])
    assert verdicts == {1.0: "collapsed", 5.0: "collapsed", 50.0: "under-optimised"}  # kept; no gain: same texts
    assert fell[1.0] == 300  # 5 copies in the window of 20 groups: 25 + 5 groups, at 10 generations each


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
        search.on_trial_complete(done, {"collapsed": collapsed(beta, seed), "generations": 100, "diversity_kept": 0.5})
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
    search.on_trial_complete("b", {"collapsed": False})
    assert search.verdicts() == {10.0: False}
    assert {a["beta"], b["beta"]} == {10.0, 100.0}


def test_save_and_restore_keep_the_whole_state(tmp_path: Path):
    search = BetaSearch(SearchSettings([1.0, 10.0, 100.0], 1.1, 12, [0], 0.0, 2))
    search.suggest("a"), search.suggest("b")
    search.on_trial_complete("b", {"collapsed": True, "generations": 50})
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
        search.on_trial_complete(f"t{i}", {"collapsed": config["beta"] < 40})
    assert seen == [100.0, 10.0, 30.0, 50.0]  # the simplest numbers in the middle of each gap


def test_simple_betas():
    assert simple_beta(10, 100) == 30  # 1 digit, closest to 31.6 in log beta
    assert simple_beta(30, 100) == 50  # 50 and 60 are as close to 54.8 (50 x 60 = 30 x 100): the lower
    assert simple_beta(40, 50) == 45 and simple_beta(42, 45) == 43  # 2 digits once no 1-digit number fits
    assert simple_beta(10, 100, taken=[30.0]) == 40  # never a beta already run
    assert simple_beta(0.01, 0.1) == 0.03


def test_a_running_trial_the_bracket_no_longer_needs_is_dropped_and_says_why(tmp_path: Path):
    from alliter.sweep import SearchStopper

    search = BetaSearch(SearchSettings([10.0, 100.0], 1.25, 12, [0], 0.0, 3))
    assert [search.suggest(t)["beta"] for t in "abc"] == [100.0, 10.0, 30.0]  # 30: between two running betas
    stopper = SearchStopper(search, str(tmp_path / "exp"), seed_in_name=False)
    assert not stopper("c", {"generations": 50})  # still useful
    search.on_trial_complete("b", {"collapsed": False, "generations": 2000})  # 10 kept: 30 and 100 can't matter
    assert search.needless("c").startswith("not needed: beta 10 kept its diversity")
    assert stopper("c", {"generations": 60}) and stopper("a", {"generations": 70})
    reason = (tmp_path / "exp" / "beta=30_c" / "stop_reason.txt").read_text()
    assert reason.startswith("not needed: beta 10 kept") and "stopped at 60 generations" in reason
    search.on_trial_complete("c", {"collapsed": False, "generations": 60})
    search.on_trial_complete("a", {"collapsed": False, "generations": 70})
    assert search.verdicts() == {10.0: False}  # a dropped trial gives its beta no verdict
    assert [o["verdict"] for o in search.outcomes.values()] == ["kept", "dropped", "dropped"]
    assert search.suggest("d")["beta"] == 1.0  # the start's last beta, no longer implied
