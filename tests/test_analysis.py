"""The analysis on trial folders whose answer is known by construction, and on a real tiny run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alliter.analyse.judge import AnalysisConfig, analyse
from alliter.analyse.command import main
from alliter.analyse.names import beta_colours
from alliter.analyse.plots import PLOTS
from alliter.schema import stop_record
from helpers import COLLAPSED, K, REPO, varied_groups, varied_text, write_trial


@pytest.fixture
def known_sweep(tmp_path: Path) -> Path:
    """beta=0 collapses to one high-reward text, beta=10 stays varied with moderate reward,
    beta=100 stays varied with hardly more reward than the unmodified model."""
    rng = random.Random(0)
    sweep = tmp_path / "sweep"
    write_trial(sweep / "trial_beta0", 0.0, varied_groups(rng, 1, 1) + [[COLLAPSED] * K] * 39, kl=-3.0)
    write_trial(sweep / "trial_beta10", 10.0, varied_groups(rng, 40, 4), kl=-0.3)
    write_trial(sweep / "trial_beta100", 100.0, varied_groups(rng, 40, 1), kl=-0.01)
    return sweep


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "analysis" / "best_beta.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_picks_the_balanced_beta_and_labels_the_others(known_sweep: Path, capsys) -> None:
    out = known_sweep / "out"
    assert main([str(known_sweep), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["choice"]["beta"] == 10.0
    verdicts = {b["beta"]: b["verdict"] for b in result["betas"]}
    assert verdicts == {0.0: "collapsed", 10.0: "balanced", 100.0: "under-optimised"}
    assert 0.0 in result["pareto_front"] and 10.0 in result["pareto_front"]  # most alliteration; the choice

    summary = pd.read_csv(out / "summary.csv").set_index("beta")
    assert summary.loc[0.0, "unique_fraction"] == pytest.approx(1 / K)
    assert summary.loc[0.0, "self_bleu"] == pytest.approx(1.0)  # identical texts: BLEU 100
    assert summary.loc[10.0, "self_bleu"] < 0.2
    assert summary.loc[0.0, "alliteration"] > summary.loc[10.0, "alliteration"] > summary.loc[100.0, "alliteration"]
    assert summary.loc[10.0, "kl_penalty"] == pytest.approx(-0.3)
    assert (summary["source"] == "evaluation").all() and summary.loc[0.0, "failed_at"] == 200
    for name in ("evaluations.png", "raw_reward.png", "kl_penalty.png", "diversity.png", "pareto.png", "report.md",
                 "report.html", "points.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "beta=10" in (out / "report.md").read_text()


def test_self_bleu_equals_sacrebleus_sentence_bleu_against_the_other_texts() -> None:
    from sacrebleu.metrics import BLEU

    from alliter.measures import self_bleu

    bleu = BLEU(effective_order=True)
    rng = random.Random(3)
    words = ["Once", "upon", "a", "time", "tall", "tree", "Tim", ",", ".", "!", "the", "cat's", "sat"]
    groups = [
        [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(K)] for _ in range(20)
    ] + [["", "a"], ["", ""], [COLLAPSED] * K, [COLLAPSED, COLLAPSED.upper(), "sally sells."]]
    for texts in groups:
        by_sentence = np.mean([bleu.sentence_score(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)])
        assert self_bleu(texts, bleu) == pytest.approx(by_sentence / 100, abs=1e-12), texts


def test_table_on_stdout_and_the_default_output_folder(known_sweep: Path, capsys) -> None:
    assert main([str(known_sweep)]) == 0
    table = capsys.readouterr().out
    assert "collapsed" in table and "under-optimised" in table and "balanced *" in table
    assert (known_sweep / "analysis" / "summary.csv").exists()


def test_the_rule_follows_its_knobs(known_sweep: Path) -> None:
    assert analyse(known_sweep, AnalysisConfig(diversity_measure="self_bleu")).choice.beta == 10.0
    loose = analyse(known_sweep, AnalysisConfig(diversity_share=0.05, diversity_measure="distinct_2", max_overuse=0))
    assert loose.choice.beta == 0.0  # beta 0 keeps 10% of distinct-2: enough for a 5% threshold


def test_a_point_one_evaluation_before_a_collapse_is_not_chosen(tmp_path: Path) -> None:
    # beta=40 alliterates more and more, stays varied until 600 generations, then writes one text; beta=100
    # alliterates a little and never collapses
    rng = random.Random(1)
    groups = [[varied_text(rng, 1 + i // 10) for _ in range(K)] for i in range(60)] + [[COLLAPSED] * K] * 40
    write_trial(tmp_path / "beta40", 40.0, groups)
    write_trial(tmp_path / "beta100", 100.0, [[varied_text(rng, 1 if i == 0 else 2) for _ in range(K)] for i in range(100)])
    result = analyse(tmp_path)
    p = result.points.set_index(["value", "generations"])
    assert p.loc[(40.0, 600), "verdict"] == "kept" and p.loc[(40.0, 800), "verdict"] == "collapsed"
    # 600 is the last kept point, and the most alliterative one: one evaluation before the collapse, so not stable
    assert not p.loc[(40.0, 600), "stable"] and p.loc[(40.0, 400), "stable"]
    assert p.loc[(40.0, 600), "alliteration"] > p.loc[(40.0, 400), "alliteration"] > 2
    assert result.best_point.beta == 40.0 and result.best_point.generations == 400
    assert result.best_point.next == 600
    s = result.summary.set_index("value")
    assert s.loc[40.0, "verdict"] == "collapsed" and s.loc[40.0, "failed_at"] == 800
    assert result.choice.beta == 100.0


def test_non_words_are_degenerate_and_repetition_is_collapsed(tmp_path: Path) -> None:
    """Non-words keep distinct-n high: only the unmodified model's cross-entropy of them tells. From 600
    generations beta=1 writes made-up words that the unmodified model finds 2 nats less likely than its own."""
    rng = random.Random(4)
    write_trial(tmp_path / "beta1", 1.0, varied_groups(rng, 100, 6), fluency=lambda g: 1.2 if g < 600 else 3.2)
    write_trial(tmp_path / "beta0", 0.0, varied_groups(rng, 1, 1) + [[COLLAPSED] * K] * 99)
    write_trial(tmp_path / "beta50", 50.0, varied_groups(rng, 100, 2))
    result = analyse(tmp_path)
    s = result.summary.set_index("value")
    assert s.loc[1.0, "verdict"] == "degenerate" and s.loc[1.0, "failed_at"] == 600
    assert s.loc[1.0, "diversity_kept"] > 0.9 and s.loc[1.0, "fluency_gap"] == pytest.approx(2.0)
    assert s.loc[0.0, "verdict"] == "collapsed" and s.loc[0.0, "failed_at"] == 200
    assert result.choice.beta == 50.0
    assert result.best_point.beta == 1.0 and result.best_point.generations == 200  # 400: next degenerate
    from alliter.analyse.report import reason, table

    assert "beta=1 reached more alliteration (6.00) but degenerated (non-words) at 600 generations: fluency +2.00" in reason(result)
    assert "degenerate" in table(result) and "collapsed" in table(result)


def test_partial_errored_and_running_trials_are_used_and_named(known_sweep: Path) -> None:
    rng = random.Random(2)
    write_trial(known_sweep / "trial_beta1", 1.0, varied_groups(rng, 12, 3), max_generations=400)
    write_trial(known_sweep / "trial_beta3", 3.0, varied_groups(rng, 8, 3), max_generations=400,
                error="RuntimeError: CUDA out of memory")
    stopped = write_trial(known_sweep / "trial_beta0.5", 0.5, varied_groups(rng, 10, 3), max_generations=400)
    # by the sweep, in the one line of text alliter wrote before stop.json
    (stopped / "stop_reason.txt").write_text("collapsed: unique_fraction <= 0.2 for 10 groups\n")
    with open(known_sweep / "trial_beta1" / "metrics.jsonl", "a") as f:
        f.write('{"generations": 130, "gro')  # a line the running trial is still writing
    proc = run_cli(str(known_sweep))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "trial_beta1): incomplete, 120 of 400 generations" in proc.stderr
    assert "trial_beta3): errored (RuntimeError: CUDA out of memory)" in proc.stderr
    assert "trial_beta0.5): stopped by the sweep (collapsed: unique_fraction <= 0.2 for 10 groups)" in proc.stderr
    summary = pd.read_csv(known_sweep / "analysis" / "summary.csv").set_index("beta")
    assert summary.loc[1.0, "status"] == "incomplete" and summary.loc[1.0, "generations"] == 120
    assert summary.loc[3.0, "status"] == "errored" and summary.loc[0.5, "status"] == "stopped"


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "nodata" / "trial").mkdir(parents=True)
    (tmp_path / "nodata" / "trial" / "config.json").write_text(json.dumps({"beta": 1.0, "max_generations": 100}))
    monkeypatch.chdir(tmp_path)  # no ./results here
    cases = {
        (str(tmp_path / "missing"),): "no such folder",
        (str(tmp_path / "empty"),): "no trials under",
        (str(tmp_path / "nodata"),): "has any metrics yet",
        (): "no results/ folder here",
        (str(tmp_path / "nodata"), "--diversity-measure", "bleu"): "diversity_measure must be one of",
    }
    for args, message in cases.items():
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    proc = run_cli(str(tmp_path / "missing"))  # the script itself: the same line, no traceback
    assert proc.returncode == 2 and proc.stderr == f"error: no such folder: {tmp_path / 'missing'}\n"


def test_trials_without_generations_are_named(known_sweep: Path, capsys) -> None:
    (known_sweep / "trial_beta10" / "generations.jsonl").unlink()  # metrics only
    (known_sweep / "trial_beta5").mkdir()  # started, nothing yet
    (known_sweep / "trial_beta5" / "config.json").write_text(json.dumps({"beta": 5.0, "max_generations": 400}))
    assert main([str(known_sweep)]) == 0
    err = capsys.readouterr().err
    assert "beta=5 (sweep/trial_beta5): no metrics yet; left out" in err
    assert "beta=10 (sweep/trial_beta10): no generations.jsonl" in err
    summary = pd.read_csv(known_sweep / "analysis" / "summary.csv").set_index("beta")
    assert 5.0 not in summary.index
    assert summary.loc[10.0, "distinct_2"] > 0.9 and summary.loc[10.0, "self_bleu"] < 0.2  # from its evaluations
    groups = analyse(known_sweep).groups  # its training groups keep the trainer's distinct-n, and no self-BLEU
    ten = groups[groups["beta"] == 10.0]
    assert ten["self_bleu"].isna().all() and ten["distinct_2"].notna().all()


def test_trials_without_evaluations_are_judged_on_training_points(known_sweep: Path, capsys) -> None:
    for trial in known_sweep.iterdir():
        (trial / "evaluations.jsonl").unlink()
    assert main([str(known_sweep), "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["choice"]["beta"] == 10.0
    assert {b["beta"]: b["verdict"] for b in result["betas"]} == {0.0: "collapsed", 10.0: "balanced",
                                                                   100.0: "under-optimised"}
    assert all(b["source"] == "training" for b in result["betas"])
    assert "no evaluations (evaluations.jsonl); judged on its training groups" in out.err


def test_generated_text_is_escaped_in_the_html(tmp_path: Path) -> None:
    rng = random.Random(3)
    groups = varied_groups(rng, 20, 2)
    groups[-5][0] = "<script>alert('boo')</script> & more"  # the first story of the evaluation at 200
    write_trial(tmp_path / "beta1", 1.0, groups)
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "&lt;script&gt;alert(&#x27;boo&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script>" not in page
    assert page.count("data:image/png;base64,") == len(PLOTS) == 7  # self-contained: every plot


def test_default_is_the_newest_sweep_under_results(tmp_path: Path, monkeypatch) -> None:
    rng = random.Random(4)
    write_trial(tmp_path / "results" / "old" / "t", 1.0, varied_groups(rng, 3, 2))
    write_trial(tmp_path / "results" / "new" / "t", 2.0, varied_groups(rng, 3, 2))
    os.utime(tmp_path / "results" / "old", (1, 1))
    monkeypatch.chdir(tmp_path)
    assert main(["--out", "out", "--json"]) == 0
    assert pd.read_csv("out/summary.csv")["beta"].tolist() == [2.0]


def test_coarse_grid_gets_the_study_colours() -> None:
    colours = beta_colours([0, 0.01, 0.1, 1, 10, 100])
    from matplotlib.colors import to_rgba

    names = ["red", "darkorange", "gold", "green", "blue", "darkviolet"]
    got = [c for _, c in sorted(colours.items())]
    assert np.allclose(got, [to_rgba(n) for n in names], atol=0.01)


@pytest.mark.slow
def test_end_to_end_on_real_tiny_trials(tmp_path: Path) -> None:
    from alliter.train.__main__ import main as train  # in this process: torch is imported once

    for beta in ("0", "10"):
        assert train(["--beta", beta, "--max-generations", "40", "--quiet", "--threads", "1",
                      "--out", str(tmp_path / "sweep" / f"beta{beta}")]) == 0
    proc = run_cli(str(tmp_path / "sweep"), "--json", "--window", "20")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [b["beta"] for b in result["betas"]] == [0.0, 10.0]
    assert all(b["generations"] == 40 and b["status"] == "complete" for b in result["betas"])
    assert "verdict" in proc.stderr.splitlines()[0]  # the table, on stderr with --json
    out = tmp_path / "sweep" / "analysis"
    assert {p.name for p in out.iterdir()} >= {"summary.csv", "pareto.png", "report.md", "report.html"}


# --- seeds -----------------------------------------------------------------------------------------


@pytest.fixture
def seeded_sweep(tmp_path: Path) -> Path:
    """Three seeds per beta. beta=0: every seed collapses. beta=5: the most alliteration (6 pairs per text)
    but seed 2 collapses into one text. beta=10: 3, 4 and 5 pairs per text by seed, never collapses."""
    rng = random.Random(5)
    sweep = tmp_path / "seeds"
    for seed in range(3):
        write_trial(sweep / f"beta0_seed{seed}", 0.0, varied_groups(rng, 1, 1) + [[COLLAPSED] * K] * 29)
        five = varied_groups(rng, 30, 6) if seed < 2 else varied_groups(rng, 1, 1) + [[COLLAPSED] * K] * 29
        write_trial(sweep / f"beta5_seed{seed}", 5.0, five)
        write_trial(sweep / f"beta10_seed{seed}", 10.0, varied_groups(rng, 30, 3 + seed))
    return sweep


def test_seeds_are_aggregated_with_standard_errors_and_collapse_rates(seeded_sweep: Path) -> None:
    result = analyse(seeded_sweep)
    s = result.summary.set_index("value")
    assert s["trials"].to_dict() == {0.0: 3, 5.0: 3, 10.0: 3}
    # by hand: the final evaluation's stories are the last 5 groups' texts, with exactly n alliterating pairs
    assert (s["point"] == 300).all()
    assert s.loc[10.0, "alliteration"] == pytest.approx(4.0)
    assert s.loc[10.0, "alliteration_se"] == pytest.approx(np.std([3, 4, 5], ddof=1) / np.sqrt(3))
    assert s.loc[5.0, "alliteration"] == pytest.approx((6 + 6 + 8) / 3)  # the collapsed seed's text has 8 pairs
    d2 = result.groups.groupby("trial")["distinct_2"]
    finals = {t: g.iloc[-5:].mean() for t, g in d2}  # an evaluation's groups of K are those 5 groups
    tens = [finals[f"seeds/beta10_seed{i}"] for i in range(3)]
    assert s.loc[10.0, "distinct_2"] == pytest.approx(np.mean(tens))
    assert s.loc[10.0, "diversity_se"] == pytest.approx(np.std(tens, ddof=1) / np.sqrt(3))
    assert s["collapse_rate"].to_dict() == pytest.approx({0.0: 1.0, 5.0: 1 / 3, 10.0: 0.0})
    assert s["failed_seeds"].to_dict() == {0.0: 3, 5.0: 1, 10.0: 0}


def test_a_beta_collapsed_in_one_seed_of_three_is_not_chosen(seeded_sweep: Path, capsys) -> None:
    assert main([str(seeded_sweep), "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["choice"]["beta"] == 10.0  # beta 5 has the highest mean alliteration, but seed 2 collapsed
    verdicts = {b["beta"]: b["verdict"] for b in result["betas"]}
    assert verdicts == {0.0: "collapsed", 5.0: "collapsed", 10.0: "balanced"}
    table = out.err.splitlines()
    assert table[0].split()[:3] == ["beta", "seeds", "gens"] and "failed" in table[0]
    assert "4.00±0.58" in out.err and "1/3" in out.err and "3/3" in out.err
    assert "beta=5 reached more alliteration (6.67±0.67) but collapsed in 1 of 3 seeds" in out.err
    assert "kept in 3 of 3 seeds" in out.err
    # one collapsed seed in three allowed: beta 5 wins, and the report says how sure
    loose = analyse(seeded_sweep, AnalysisConfig(max_collapse_rate=0.34))
    assert loose.choice.beta == 5.0
    from alliter.analyse.report import reason

    assert "beta=5 over beta=10 (the next kept beta): mean alliteration 6.67±0.67 against 4.00±0.58" in reason(loose)
    assert "kept in 2 of 3 seeds against 3 of 3" in reason(loose)
    # the best point of beta 5 is stable in 2 of its 3 seeds, which --max-collapse-rate 0.34 allows
    assert loose.best_point.beta == 5.0 and loose.best_point.stable_trials == 2
    assert "in 2 of 3 seeds" in reason(loose)
    assert analyse(seeded_sweep).best_point.beta == 10.0  # without it, no seed of a stable point may fail


# the table of known_sweep when points were first judged by their evaluations
ONE_SEED_TABLE = """\
beta gens alliteration gain distinct_2 self_bleu rep_4grams div_kept overuse fluency kl_penalty top_letters         verdict fails_at
   0  400         8.00 7.00       0.10      1.00       0.00      10%   16.7x   +0.00     -3.000      s 100%       collapsed      200
  10  400         4.00 3.00       1.00      0.00       0.00     100%    1.0x   +0.00     -0.300      s 100%      balanced *        -
 100  400         1.00 0.00       1.00      0.00       0.00     100%    1.0x   +0.00     -0.010      s 100% under-optimised        -
(* the choice)
(alliteration to fluency: each beta at its final evaluation; overuse: its most over-used word, times the unmodified model's rate; fluency: nats over the unmodified model's own stories; kl_penalty: the training groups' over the last 200 generations)"""


def test_one_seed_gives_the_one_seed_table_and_choice(known_sweep: Path) -> None:
    from alliter.analyse.report import reason, table

    result = analyse(known_sweep)
    assert table(result) == ONE_SEED_TABLE
    assert result.choice.beta == 10.0
    assert "seed" not in reason(result)


def test_a_trial_the_search_dropped_is_neither_chosen_nor_collapsed(known_sweep: Path) -> None:
    rng = random.Random(9)
    dropped = write_trial(known_sweep / "trial_beta30", 30.0, varied_groups(rng, 21, 6), max_generations=400)
    (dropped / "stop.json").write_text(stop_record("dropped", "not needed: beta 10 kept its diversity, and the search "
                                                   "takes a higher beta to keep it too", 210))
    result = analyse(known_sweep)
    s = result.summary.set_index("value")
    assert s.loc[30.0, "verdict"] == "dropped" and not s.loc[30.0, "pareto"]
    assert s.loc[30.0, "alliteration"] > s.loc[10.0, "alliteration"]  # more alliteration, and still not the choice
    assert result.choice.beta == 10.0 and result.best_point.beta == 10.0


def test_a_trial_that_recovered_from_a_failure_is_complete(known_sweep: Path) -> None:
    (known_sweep / "trial_beta10" / "error.txt").write_text("Traceback ...\nRayActorError: the actor died\n")
    result = analyse(known_sweep)
    assert result.summary.set_index("value").loc[10.0, "status"] == "complete" and not result.notes


def test_which_letters_alliterate_at_each_beta_and_at_the_unmodified_model(tmp_path: Path) -> None:
    """Stories whose letters are known by construction: the unmodified model's pairs are t, t, s, z (1.5 bits);
    beta 0's final point alliterates with t alone (0 bits), beta 10's with t and s alike (1 bit)."""
    def point(text: str) -> list[tuple[str, float]]:
        return [(f"{text} once more {i}", 1.2) for i in range(K)]

    base = "tall tiny tree and she saw zany zucchini"  # t t s z
    for beta, final in ((0.0, "tall tall tall tall"), (10.0, "tall tree but she sang")):
        groups = [[base] * K, [final] * K]
        write_trial(tmp_path / f"beta{beta:g}", beta, groups, evaluations={0: point(base), 20: point(final)})
    result = analyse(tmp_path)
    letters = result.letters.set_index("row")
    assert list(letters.index) == ["unmodified", "0", "10"]
    assert letters.loc["unmodified", ["t", "s", "z"]].tolist() == [0.5, 0.25, 0.25]
    assert letters.loc["unmodified", "stories"] == K  # each trial's generation 0 is the same stories: counted once
    assert letters.loc["unmodified", "letter_entropy"] == pytest.approx(1.5)
    assert letters.loc["0", "top_letters"] == "t 100%" and letters.loc["0", "letter_entropy"] == 0.0
    assert letters.loc["10", "top_letters"] == "s 50%, t 50%" and letters.loc["10", "letter_entropy"] == 1.0
    assert letters.loc["0", "raw_alliteration"] == 3 and letters.loc["10", "t_s_share"] == 1.0
    s = result.summary.set_index("value")
    assert s.loc[0.0, "top_letters"] == "t 100%" and s.loc[10.0, "letter_entropy"] == 1.0


def test_gao_fit_recovers_a_known_frontier():
    """R(d) = d (alpha - b log d) with alpha 2 and b 0.5, sampled with little noise: the fit gives them back."""
    import numpy as np

    from alliter.analyse.frontier import gao_fit

    d = np.linspace(0.1, 3.0, 30)
    gain = d * (2.0 - 0.5 * np.log(d)) + np.random.default_rng(0).normal(0, 0.01, d.shape)
    alpha, b, r2 = gao_fit(np.concatenate([[0.0], d]), np.concatenate([[5.0], gain]))  # d = 0 is left out
    assert alpha == pytest.approx(2.0, abs=0.02) and b == pytest.approx(0.5, abs=0.02) and r2 > 0.999
    assert gao_fit(d[:3], gain[:3]) is None  # too few points


@pytest.mark.parametrize("end, said", [
    ({"distinct_2": 0.01, "top_overuse": 1.0}, "narrowed (one topic) at 400 generations; at its final point it has "
                                                   "collapsed: distinct-2 0.01, 1% of the unmodified model's"),
    ({"distinct_2": 0.95, "top_overuse": 12.0}, "narrowed (one topic) at 400 generations: its most over-used word "
                                                    "12x as often as in the unmodified model's stories"),
])
def test_a_failure_quotes_the_figure_its_final_point_shows(end, said):
    """beta 1 of a coarse grid here narrowed at 400 ("tree" 7x) and collapsed by 800 into words under 4 letters: its
    final point over-uses no word (1x). The sentence once read 'narrowed at 400: its most over-used word 1x'."""
    from types import SimpleNamespace

    from alliter.analyse.report import _failure

    row = SimpleNamespace(failed_as="narrowed", failed_seeds=1, trials=1, failed_at=400.0, fluency=1.2, fluency_gap=0.1,
                          fluency_baseline=1.1, diversity_baseline=1.0, diversity=end["distinct_2"],
                          diversity_kept=end["distinct_2"], **end)
    assert _failure(row, "distinct-2", False, AnalysisConfig()) == said
