"""The study in one command: the fine grid placed from a hand-made coarse result, the write-up's sentences against
hand-made sweeps (a collapse, a hold, a tie), its text escaped, and a tiny study end to end through a real local Ray,
interrupted at its fine grid and resumed there."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from alliter.analyse.document import to_html, to_markdown
from alliter.analyse.judge import analyse
from alliter.study.run import STEPS, STUDY_FILE, failed_betas, fine_betas
from alliter.study.writeup import build
from helpers import (
    COLLAPSED, K, ONE_AT_A_TIME, REPO, generation_indices, printed_command, varied_text, write_trial,
)
from raycluster import RayCluster

STUDY = [sys.executable, str(REPO / "tune_jobs" / "study.py")]


def trial_groups(rng: random.Random, groups: int, collapse_at: int | None, pairs: int = 2) -> list[list[str]]:
    """Groups of varied texts (the first: the unmodified model's), collapsed into one text from `collapse_at`
    generations on."""
    return [[COLLAPSED] * K if collapse_at is not None and i * K >= collapse_at else
            [varied_text(rng, 1 if i == 0 else pairs) for _ in range(K)] for i in range(groups)]


def hand_made_sweep(folder: Path, collapse_at: dict[float, list[int | None]], groups: int = 40,
                    pairs: dict[float, int] | None = None) -> Path:
    """A sweep of trial folders: beta -> where each seed's trial collapses (None: never)."""
    rng = random.Random(len(collapse_at))
    for beta, seeds in collapse_at.items():
        for seed, at in enumerate(seeds):
            write_trial(folder / f"beta={beta:g}_seed={seed}", beta,
                        trial_groups(rng, groups, at, (pairs or {}).get(beta, 2)), seed=seed)
    return folder


def test_the_fine_grid_is_placed_between_the_last_failed_and_the_first_kept_beta(tmp_path):
    coarse = hand_made_sweep(tmp_path / "coarse", {0.0: [200], 0.01: [200], 0.1: [200], 1.0: [200], 10.0: [200],
                                                    100.0: [None]})
    placement = fine_betas(failed_betas(analyse(coarse)))
    assert placement["betas"] == [20, 30, 40, 50, 60, 70, 80, 90]  # the reference study's fine grid
    assert placement["why"] == "the balanced beta lies between 10, the highest beta that failed, and 100, the lowest that held"
    assert fine_betas({1.0: True, 10.0: True})["betas"][0] == 20 and "every beta failed" in fine_betas({1.0: True})["why"]
    noisy = fine_betas({0.1: True, 1.0: False, 10.0: True, 100.0: False})
    assert (noisy["lo"], noisy["hi"]) == (0.1, 100.0) and "beta 1 held and beta 10 failed inside it" in noisy["why"]


def study_folder(tmp_path: Path) -> Path:
    """A finished study of hand-made sweeps (a trial that collapses at 200 generations is first evaluated collapsed at
    400: the evaluation at 200 samples the groups before it): the coarse grid's 10 collapses, 100 holds; the fine grid's 20 collapses,
    30 and 40 hold alike (a tie, one seed); the extended run of 30 collapses in one of two seeds; the holding recipe
    holds in both."""
    folder = tmp_path / "study"
    hand_made_sweep(folder / "coarse", {10.0: [200], 100.0: [None]})
    hand_made_sweep(folder / "fine", {20.0: [200], 30.0: [None], 40.0: [None]}, pairs={30.0: 3, 40.0: 3})
    hand_made_sweep(folder / "extended", {30.0: [None, 200]}, pairs={30.0: 3})
    hand_made_sweep(folder / "holds", {30.0: [None, None]}, pairs={30.0: 4})
    for config in (folder / "holds").glob("*/config.json"):  # a KL target's trials, beta started and floored at 30
        config.write_text(json.dumps({**json.loads(config.read_text()), "kl_target": 0.1, "kl_min_beta": 30.0}))
    state = {"config": {"seeds": 2, "extended_generations": 400}, "passthrough": [], "started": "2026-12-07 10:00:00",
             "steps": {name: {"status": "finished", "wall_seconds": 60.0} for name in ("coarse", "fine", "extended", "holds")},
             "placement": fine_betas({10.0: True, 100.0: False}), "extended_beta": 30.0,
             "extended_why": "the fine grid's choice"}
    (folder / STUDY_FILE).write_text(json.dumps(state))
    return folder


def test_the_write_up_says_what_the_sweeps_show(tmp_path):
    folder = study_folder(tmp_path)
    text = to_markdown(build(folder), folder)
    assert "1 of 2 betas failed the rule: beta 10 collapsed at 400 generations." in text
    assert "The balanced beta lies between 10, the highest beta that failed, and 100, the lowest that held; the fine " \
           "grid runs 20, 30, 40, 50, 60, 70, 80 and 90." in text
    assert "1 of 3 betas failed the rule: beta 20 collapsed at 400 generations." in text
    # the tie: 30 and 40 alliterate alike, one seed each
    assert "with one seed each there is no interval: which of the two is better is not known from this grid." in text
    assert "It failed in 1 of 2 seeds: seed 1 collapsed at 400 generations. It held to 400 generations in 1 of 2 seeds." in text
    assert text.count("## ") >= 7 and "## 6. What the numbers cannot say" in text
    assert "The coarse and fine grids ran one seed per beta" in text
    holds = text[text.index("## 4. The recipe that holds"):text.index("## 5.")]
    assert "KL target 0.1, beta started at and floored at 30. It held to 400 generations in 2 of 2 seeds." in holds
    assert "KL target 0.1, seed 1, evaluation story 0 at 400 generations" in holds and "beta 0.1" not in holds
    # side by side: what changed (a knob that does nothing in the study's recipe reads -), the same measures at equal
    # generations and at equal alliteration, one figure
    assert "What changed from the study's recipe: 2 knobs at once" in holds
    assert "- kl_target: none -> 0.1\n- kl_min_beta: - -> 30\n" in holds
    rows = [line.split("|")[1:-1] for line in holds.splitlines() if line.startswith("| the ")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("the study's recipe", "200"), ("the study's recipe", "400 (first reaches 4.0)"),
        ("the recipe that holds", "200 (first reaches 4.0)"), ("the recipe that holds", "400")]
    assert rows[1][2].strip() == "5.5 (3.0-8.0)"  # the mean over seeds, their range: 3 pairs a story, and collapsed
    assert (folder / "analysis" / "recipes.png").exists()
    # findings first, each with its spread; the words by their thresholds
    findings = text[text.index("## Findings"):text.index("## 1.")]
    assert "**The choice**: beta 30, the fine grid's" in findings
    assert "it failed in 1 of 2 (seed 1 collapsed at 400 generations); kept to the end in 1. (Its seed 0 is the fine " \
           "grid's trial of beta 30 run on" in findings
    assert "**The recipe that holds** (2 knobs changed at once: kl_target: none -> 0.1; kl_min_beta: - -> 30): kept " \
           "to 400 generations in 2 of 2 seeds." in findings
    assert "KL target 0.1, seed 0, evaluation story 0 at 400 generations" in findings  # what it writes, once
    assert text.count("KL target 0.1, seed 0, evaluation story 0 at 400 generations") == 1
    assert "*Largely through a word*: at least 50% of the alliterating pairs hold it." in findings
    for name in ("coarse", "fine", "extended", "holds"):
        assert (folder / "analysis" / name / "evaluations.png").exists()  # the images the write-up links


def test_the_write_up_escapes_generated_text(tmp_path):
    folder = tmp_path / "study"
    groups = [[f"<script>alert({i})</script> big bad bear"] * K for i in range(20)]
    write_trial(folder / "coarse" / "beta=1_seed=0", 1.0, groups)
    (folder / STUDY_FILE).write_text(json.dumps({"config": {}, "passthrough": [], "steps": {
        "coarse": {"status": "finished", "wall_seconds": 1.0}}}))
    page = to_html(build(folder), "study")
    assert "<script>" not in page and "&lt;script&gt;alert(" in page


# a study's flags that no step can run with: (flags, the one line's words); the later steps' flags are checked too,
# before anything is made (each planned with the reference study's betas)
STUDY_CASES = {
    "101 seeds for the extended runs": (["--seeds", "101"], "step extended (--betas 50 --max-generations 7000 --seeds "
                                        "101): --seeds runs at most 100 seeds of each value"),
    "no seeds": (["--seeds", "0"], "--seeds N runs N seeds and needs N >= 1"),
    "grids of 25 generations in groups of 10": (["--grid-generations", "25"], "step coarse (--grid coarse "
                                                "--max-generations 25): max_generations 25 is not a whole number"),
    "extended runs of 25 generations": (["--extended-generations", "25"], "step extended"),
    "--grid, abbreviated by argparse once": (["--grid", "fine"], "--grid: the study's steps set these themselves"),
    "--max-gen for --max-generations": (["--max-gen", "40"], "unrecognized arguments: --max-gen 40"),
    "a name that leaves --storage": (["--name", "../elsewhere"], "--name '../elsewhere' is not a folder name"),
    "a bucket for the study's folder": (["--storage", "s3://bucket/studies"], "a study's folder is local"),
    "AdamW's knob where every step has SGD": (["--adam-beta1", "0.8", "--optimizer", "sgd"],
                                              "--adam-beta1 does nothing here: it is AdamW's"),
    "a bad value of the model's": (["--top-k", "0", "--temperature", "0"], "temperature must be a finite number >= 0.01"),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_a_flag_no_step_can_run_with_is_one_line_before_anything_is_made(case, tmp_path, monkeypatch, capsys):
    from alliter.study.command import main

    args, message = STUDY_CASES[case]
    monkeypatch.chdir(tmp_path)  # a bucket's name made into a local folder would be made here
    storage = [] if "--storage" in args else ["--storage", str(tmp_path / "studies")]
    assert main([*args, *storage]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())  # nothing made


def test_a_flag_that_acts_in_some_steps_goes_to_those_only(tmp_path):
    from alliter.study.command import plan_steps
    from alliter.study.run import StudyConfig

    flags = plan_steps(StudyConfig(), ["--weight-decay", "0.01"], str(tmp_path), "s")
    assert flags == {"coarse": [], "fine": [], "extended": [], "holds": ["--weight-decay", "0.01"]}
    assert not list(tmp_path.iterdir())


def test_a_second_driver_on_a_study_is_refused(tmp_path):
    """A study's folder holds one driver: a --resume beside a running study is refused, and a new study never takes
    the folder of another."""
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / STUDY_FILE).write_text(json.dumps({"config": {}, "passthrough": [], "steps": {}}))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / "driver.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": live.pid,
                                                        "time": time.time()}))
        res = subprocess.run([*STUDY, "--resume", "--name", "s", "--storage", str(tmp_path)], capture_output=True,
                             text=True, timeout=120)
    finally:
        live.kill()
        live.wait()
    assert res.returncode == 2 and f"another driver runs this study (process {live.pid}" in res.stderr, res.stderr
    before = (folder / STUDY_FILE).read_text()
    res = subprocess.run([*STUDY, "--name", "s", "--storage", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "exists already; pass --resume to continue it" in res.stderr, res.stderr
    assert (folder / STUDY_FILE).read_text() == before


def test_a_sigterm_to_the_study_and_its_step_is_one_ctrl_c_of_the_step(tmp_path):
    """`ray job stop` sends SIGTERM to the study and to its step's sweep: the step takes it as one Ctrl-C (a second,
    from the study passing its own on, would stop Tune without its last save), and the study stops."""
    from alliter.study.run import run_step

    ready = tmp_path / "ready"
    child = [sys.executable, "-c", "import signal, sys, time, pathlib\n"
             "from alliter.cli import stop_on_sigterm\n"
             "stop_on_sigterm(); count = []\n"
             "signal.signal(signal.SIGINT, lambda *_: count.append(1))\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             "time.sleep(3); sys.exit(len(count))"]

    def stop_both() -> None:
        while not ready.exists():
            time.sleep(0.05)
        step = [p for p in process_children(os.getpid()) if "stop_on_sigterm" in Path(f"/proc/{p}/cmdline").read_text()]
        for pid in [*step, os.getpid()]:  # the step, then the study: as Ray's job supervisor signals a job's processes
            os.kill(pid, signal.SIGTERM)

    timer = threading.Thread(target=stop_both)
    timer.start()
    assert run_step(child) == (1, True)  # the child's SIGINT handler ran once
    timer.join()


def process_children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_ctrl_c_as_a_step_ends_stops_the_study(tmp_path):
    """A Ctrl-C that comes while a step's sweep is ending (it ignores it, and exits 0) still stops the study: the step
    is kept as finished, and the next one does not start."""
    from alliter.study.run import run_step

    child = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(2)"]
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    assert run_step(child) == (0, True)
    timer.join()


@pytest.fixture()
def ray_head():
    """A Ray of the test's own for the study's four sweeps (and its resumed one) to join: each step passes the
    study's --address on, and none pays for starting a Ray of its own."""
    with RayCluster() as cluster:
        cluster.start_head("--num-cpus=2", "--num-gpus=0")
        yield cluster


def interrupt_when(study: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> tuple[str, str]:
    """Ctrl-C the study once `ready()` holds; its output."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ready() and study.poll() is None:
        time.sleep(0.05)
    study.send_signal(signal.SIGINT)
    return study.communicate(timeout=180)


def step_status(folder: Path, step: str) -> str | None:
    state = json.loads((folder / STUDY_FILE).read_text()) if (folder / STUDY_FILE).exists() else {}
    return state.get("steps", {}).get(step, {}).get("status")


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end_and_resumes_where_it_was_interrupted(tmp_path, tiny_gpt_neo, ray_head):
    """Interrupted between two steps (as the coarse grid ends), resumed and interrupted in the fine grid, resumed to its
    end: every step runs once, every generation of every trial is there once."""
    args = ["--model", str(tiny_gpt_neo), "--lr", "0.05", "--grid-generations", "20", "--extended-generations", "20",
            "--seeds", "1", "--checkpoint-every", "1", "--snapshot-every", "10", "--eval-samples", "5", *ONE_AT_A_TIME,
            "--address", ray_head.address, "--storage", str(tmp_path), "--name", "s"]
    folder = tmp_path / "s"
    resume = [*STUDY, "--resume", "--name", "s", "--storage", str(tmp_path)]
    study = subprocess.Popen([*STUDY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ray_head.env)
    out, err = interrupt_when(study, lambda: step_status(folder, "coarse") == "finished")  # between two steps
    assert study.returncode == 130, err[-3000:]
    assert step_status(folder, "coarse") == "finished" and step_status(folder, "extended") is None, err[-3000:]
    assert printed_command(err, "with:") == f"alliter study --resume --name s --storage {tmp_path}", err[-3000:]

    study = subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ray_head.env)
    out, err = interrupt_when(study, lambda: bool(list((folder / "fine").glob("beta=*/checkpoint_*"))))  # in a step
    assert study.returncode == 130, err[-3000:]
    assert step_status(folder, "fine") == "interrupted" and "step 1 of 4" not in out
    assert printed_command(err, "continue with:") == f"alliter study --resume --name s --storage {tmp_path}"

    res = subprocess.run(resume, capture_output=True, text=True, timeout=600, env=ray_head.env)
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((folder / STUDY_FILE).read_text())
    assert {s["status"] for s in state["steps"].values()} == {"finished"}
    assert state["steps"]["coarse"]["flags"][:4] == ["--grid", "coarse", "--max-generations", "20"]
    assert state["steps"]["fine"]["flags"][1] == ",".join(f"{b:g}" for b in state["placement"]["betas"])
    half = float(f"{state['extended_beta'] / 2:.2g}")  # the recipe that holds starts and floors beta at half the choice
    assert state["steps"]["holds"]["flags"][:4] == ["--betas", f"{half:g}", "--kl-min-beta", f"{half:g}"]
    assert "step 1 of 4" not in res.stdout  # the finished coarse grid is not run again
    fine = analyse(folder / "fine")
    assert sorted(t.value for t in fine.trials) == state["placement"]["betas"]
    for step in STEPS:
        for trial in (folder / step).glob("beta=*"):  # every generation once, whatever was interrupted where
            assert generation_indices(trial) == list(range(20)), trial
    page = (folder / "study.html").read_text()
    for section in ("1. The coarse grid", "2. The fine grid", "3. The extended run", "4. The recipe that holds",
                    "5. Which letters alliterate", "6. What the numbers cannot say"):
        assert section in page
