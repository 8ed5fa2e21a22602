"""Search mode: a Ray Tune `Searcher` that brackets the balanced beta, the lowest beta that keeps its
diversity, instead of running a whole grid. Tune keeps the scheduling, the retries and the restore.

The strategy:
- start with a wide, log-spaced set (default 1, 10, 100), from the highest down, skipping a start beta
  whose outcome the others already imply (below a collapsed beta, or above a kept one);
- the bracket is the highest beta seen collapsed and the lowest seen kept (a trial collapses, and stops
  early, when its diversity falls under the rule of `alliter.rule`);
- each free trial slot gets a beta inside the widest gap (in log beta) of the bracket: the simplest number
  in the gap's middle half, the closest to its geometric midpoint (`simple_beta`: 30 between 10 and 100);
  betas still running count as split points, so slots never duplicate each other's work;
- if every beta so far collapsed, try 10x the highest; if every one kept, a tenth of the lowest;
- stop when every gap inside the bracket is narrower than `precision` (a ratio), or `budget` betas ran.

Noise: near the boundary an outcome need not be monotone in beta (beta 45 collapsed, 42 kept). The
bracket is then the cut with the fewest outcomes on its wrong side; when several cuts tie, the bracket
spans all of them and the search goes on splitting the widest gap inside it, and the search's log
names the inversions. With seeds, a beta's verdict is its seeds': collapsed when more than
`max_collapse_rate` of them collapsed (best_beta's rule).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Sequence

from ray import tune
from ray.tune.search import Searcher

from alliter import storage as store
from alliter.cli import AlliterError
from alliter.config import TrainConfig, check_value
from alliter.knob import BETA, KNOBS, Knob
from alliter.rule import FAILED, KEPT, CollapseRule
from alliter.schema import DROPPED, SEARCH_FILE, STOP_FILE, stop_record
from alliter.sweep.trial import trial_dirname

log = logging.getLogger("alliter")

JUDGED = (KEPT, *FAILED)  # the outcomes that are a verdict on the beta (not dropped, not errored)
EXPAND = 10.0  # the ladder's step when the bracket is open on one side
MIN_BETA = 1e-3  # below this a beta is as good as 0: a search that keeps everything down to it stops


@dataclass
class SearchSettings:
    start: list[float]
    precision: float
    budget: int
    seeds: list[int]
    max_collapse_rate: float
    concurrency: int
    knob: str = "beta"  # what the search varies: "beta", or "kl_target" (high targets collapse: the other way round)
    units: dict[str, Any] = field(default_factory=dict)  # the KL units' fields of the trials' config (a target's bound)

    def validate(self) -> "SearchSettings":
        if not self.start or any(not (math.isfinite(b) and b > 0) for b in self.start):
            raise AlliterError(f"search start betas must be finite and > 0 (the search is in log beta), got {self.start}")
        if not (math.isfinite(self.precision) and self.precision > 1):
            raise AlliterError(f"search precision is a ratio and must be > 1 (e.g. 1.1), got {self.precision}")
        if self.budget < 1:
            raise AlliterError(f"search budget must be at least 1 beta, got {self.budget}")
        if self.concurrency < 1:
            raise AlliterError(f"search concurrency must be at least 1, got {self.concurrency}")
        return self


def simple_beta(a: float, b: float, taken: Sequence[float] = ()) -> float:
    """A beta between a and b: the simplest number (fewest significant digits) in the middle half of the gap
    in log beta, and of those the closest to the geometric midpoint (the lower on a tie). Folder names and
    tables read beta=30, not beta=31.6227766, and a search lands on the betas a person would try."""
    la, lb = math.log10(a), math.log10(b)
    lo, hi, mid = la + (lb - la) / 4, lb - (lb - la) / 4, (la + lb) / 2
    for digits in range(1, 7):
        found = []
        for exp in range(math.floor(lo) - 1, math.ceil(hi) + 1):
            step = 10.0 ** (exp - digits + 1)
            for k in range(10 ** (digits - 1), 10**digits):
                c = float(f"{k * step:.{digits}g}")
                if 10**lo <= c <= 10**hi and c not in taken:
                    found.append(c)
        if found:
            return min(found, key=lambda c: (round(abs(math.log10(c) - mid), 9), c))
    return math.sqrt(a * b)


def bracket(verdicts: dict[float, bool]) -> tuple[float | None, float | None, list[float]]:
    """(lo, hi, inversions) from {beta: collapsed}: lo the highest collapsed and hi the lowest kept beta
    around the cut(s) with the fewest outcomes on the wrong side; None where that side has none."""
    betas = sorted(verdicts)
    n = len(betas)
    # errors[i]: cut between betas[i-1] and betas[i] -> kept betas below it + collapsed betas above it
    errors = [sum(not verdicts[b] for b in betas[:i]) + sum(verdicts[b] for b in betas[i:]) for i in range(n + 1)]
    best = [i for i, e in enumerate(errors) if e == min(errors)]
    first, last = best[0], best[-1]
    lo = betas[first - 1] if first > 0 else None
    hi = betas[last] if last < n else None
    wrong = [b for b in betas[:first] if not verdicts[b]] + [b for b in betas[last:] if verdicts[b]]
    return lo, hi, wrong


class BetaSearch(Searcher):
    """Suggests {"beta", "seed"} configs (or {"kl_target", "seed"}); learns each trial's verdict from its last
    result's `kept` and `verdict` (alliter.rule: a trial that collapsed or degenerated counts as collapsed for the
    bracket). Its values are betas, or KL targets: a beta collapses below the boundary, a target above it, so the
    strategy runs on x = beta, or x = 1 / target, where collapse is always below (`_x`)."""

    def __init__(self, settings: SearchSettings):
        super().__init__()
        self.settings = settings.validate()
        self.trials: dict[str, tuple[float, int]] = {}  # trial_id -> (beta, seed), every trial suggested
        self.outcomes: dict[str, dict[str, Any]] = {}  # trial_id -> outcome of a finished trial
        self.queue: list[tuple[float, int]] = []  # seeds of the newest beta not yet handed out
        self.betas: list[float] = []  # betas in the order they were chosen
        self.log: list[dict[str, Any]] = []  # the search's path, for the report
        self.dropped: dict[str, str] = {}  # trial_id -> why the search stopped it (SearchStopper)
        self.finished = False

    # --- what Tune calls ---------------------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the param_space holds constants (the trainer's config); the searcher adds beta and seed

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Tune's `max_concurrent_trials`: this searcher keeps to it itself (suggest), so Tune's limiter passes
        every call through; Tune also lets that many trials be pending at once, so that a wave's trials start
        together instead of one after the other (each waiting for the previous one's worker)."""
        self.settings.concurrency = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.queue:
            live = len(self.trials) - len(self.outcomes)
            if live >= self.settings.concurrency:
                return None
            chosen = self.next_beta()
            if chosen is None:
                if live == 0:
                    self.finished = True
                    self.log.append({"event": "finished", "reason": self.finish_reason()})
                    log.info("alliter search: done, %s", self.log[-1]["reason"])
                    return Searcher.FINISHED
                return None  # wait for a running trial's verdict
            beta, why, round_ = chosen
            self.betas.append(beta)
            self.queue = [(beta, seed) for seed in self.settings.seeds]
            self.log.append({"event": "suggest", "round": round_, "beta": beta, "seeds": self.settings.seeds, "why": why})
            log.info("alliter search: round %d, %s %g: %s", round_, self._what, beta, why)
        beta, seed = self.queue.pop(0)
        self.trials[trial_id] = (beta, seed)
        return {self.settings.knob: beta, "seed": seed}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trials or trial_id in self.outcomes:
            return
        beta, seed = self.trials[trial_id]
        result = result or {}
        if trial_id in self.dropped:
            outcome = {"beta": beta, "seed": seed, "verdict": "dropped", "why": self.dropped[trial_id],
                       "generations": result.get("generations")}
        elif error or "kept" not in result:
            outcome = {"beta": beta, "seed": seed, "verdict": "errored"}
        else:
            outcome = {"beta": beta, "seed": seed, "verdict": result.get("verdict") or ("kept" if result["kept"] else "collapsed"),
                       "generations": result.get("generations"), "diversity_kept": result.get("diversity_kept"),
                       "fluency_gap": result.get("fluency_gap")}
        self.outcomes[trial_id] = outcome
        self.log.append({"event": "outcome", **outcome})
        verdict = self.verdicts().get(beta)
        if verdict is not None and all(t in self.outcomes for t, (b, _) in self.trials.items() if b == beta):
            self.log.append({"event": "verdict", "beta": beta, "verdict": "collapsed" if verdict else "kept"})
            log.info("alliter search: %s %g %s", self._what, beta, "collapsed" if verdict else "kept its diversity")

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)
        # the path in plain JSON beside Tune's experiment state, synced to storage with it
        folder = os.path.dirname(checkpoint_path)
        with open(os.path.join(folder, SEARCH_FILE), "w") as f:
            json.dump(self.path(), f, indent=1)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))  # our own file, written by save() in the experiment folder

    # --- the strategy --------------------------------------------------------------------------------

    @property
    def knob(self) -> Knob:
        return KNOBS[self.settings.knob]

    def _sane(self, value: float) -> bool:
        """A value within the trainer's bounds (alliter.config: its fields' Bounds): the ladder stops at them."""
        try:
            check_value(self.settings.knob, value, TrainConfig(**self.settings.units))
        except AlliterError:
            return False
        return True

    def _x(self, value: float) -> float:
        """The strategy's coordinate: collapse lies below the boundary in x."""
        return self.knob.x(value)

    @property
    def _what(self) -> str:
        return self.knob.symbol

    def _bracket(self, verdicts: dict[float, bool]) -> tuple[float | None, float | None, list[float]]:
        """bracket() of values: its collapsed end, its kept end and the values on the wrong side."""
        if not verdicts:
            return None, None, []
        lo, hi, wrong = bracket({self._x(v): c for v, c in verdicts.items()})
        back = {self._x(v): v for v in verdicts}
        return (None if lo is None else back[lo]), (None if hi is None else back[hi]), [back[w] for w in wrong]

    def verdicts(self) -> dict[float, bool]:
        """{beta: collapsed} for every beta whose seeds have all finished (errored seeds left out)."""
        by_beta: dict[float, list[str]] = {}
        for trial_id, (beta, _) in self.trials.items():
            by_beta.setdefault(beta, []).append(trial_id)
        out = {}
        for beta, ids in by_beta.items():
            if beta in (b for b, _ in self.queue) or not all(t in self.outcomes for t in ids):
                continue
            verdicts = [self.outcomes[t]["verdict"] for t in ids if self.outcomes[t]["verdict"] in JUDGED]
            if verdicts:
                out[beta] = CollapseRule(max_collapse_rate=self.settings.max_collapse_rate).seeds_failed(
                    [v != KEPT for v in verdicts])
        return out

    def running(self) -> set[float]:
        return {beta for t, (beta, _) in self.trials.items() if t not in self.outcomes} | {b for b, _ in self.queue}

    def next_beta(self) -> tuple[float, str, int] | None:
        """(value, why, round) for the next beta (or target) to run, or None when none is worth running now."""
        if len(self.betas) >= self.settings.budget:
            return None
        x, what = self._x, self._what
        verdicts, running = self.verdicts(), self.running()
        taken = set(self.betas)
        rounds = {e["beta"]: e["round"] for e in self.log if e["event"] == "suggest"}
        for beta in sorted(self.settings.start, key=x, reverse=True):  # the safest first
            implied = (any(v and x(b) > x(beta) for b, v in verdicts.items())
                       or any(not v and x(b) < x(beta) for b, v in verdicts.items()))
            if beta not in taken and not implied:
                return beta, "start: a wide, log-spaced set", 0
        lo, hi, _ = self._bracket(verdicts)
        safer = self.knob.safer
        if hi is None:  # nothing kept yet: the safest value still running closes the bracket for now
            above = [b for b in running if lo is None or x(b) > x(lo)]
            if not above:
                beta = self.knob.step(lo, EXPAND, safer=True)
                if not self._sane(beta):
                    return None
                return beta, f"every {what} so far collapsed: {EXPAND:g}x {safer} than {lo:g}", rounds[lo] + 1
            hi = max(above, key=x)
        if lo is None:
            below = [b for b in running if x(b) < x(hi)]
            if not below:
                if x(hi) / EXPAND < MIN_BETA:
                    return None
                beta = self.knob.step(hi, EXPAND, safer=False)
                if not self._sane(beta):
                    return None
                return beta, f"every {what} so far kept: {EXPAND:g}x {self.knob.riskier} than " \
                             f"{hi:g}", rounds[hi] + 1
            lo = min(below, key=x)
        points = sorted({lo, hi} | {b for b in taken if x(lo) < x(b) < x(hi)}, key=x)
        gaps = [(x(b) / x(a), a, b) for a, b in zip(points, points[1:])]
        if not gaps:
            return None
        # the widest gap; on a tie, the safer one (the choice is the least safe kept value: the kept side matters)
        ratio, a, b = max(gaps, key=lambda g: (round(g[0], 9), x(g[1])))
        if ratio <= self.settings.precision:
            return None
        state = lambda v: "collapsed" if verdicts.get(v) else "kept" if v in verdicts else "running"  # noqa: E731
        beta = simple_beta(min(a, b), max(a, b), taken)
        why = f"between {a:g} ({state(a)}) and {b:g} ({state(b)}), the widest gap of the bracket"
        return beta, why, max(rounds.get(a, 0), rounds.get(b, 0)) + 1

    def needless(self, trial_id: str) -> str | None:
        """Why a running trial can no longer move the bracket (its beta is below the bracket's collapsed end or
        above its kept end), or None while it still can."""
        if trial_id in self.outcomes or trial_id not in self.trials:
            return None
        beta, x, what = self.trials[trial_id][0], self._x, self._what
        lo, hi, _ = self._bracket(self.verdicts())
        riskier, safer = self.knob.riskier, self.knob.safer
        if lo is not None and x(beta) < x(lo):
            return f"not needed: {what} {lo:g} collapsed, and the search takes a {riskier} {what} to collapse too"
        if hi is not None and x(beta) > x(hi):
            return f"not needed: {what} {hi:g} kept its diversity, and the search takes a {safer} {what} to keep it too"
        return None

    def finish_reason(self) -> str:
        lo, hi, wrong = self._bracket(self.verdicts())
        what = self._what
        if len(self.betas) >= self.settings.budget and not self.converged(lo, hi):
            reason = f"the budget of {self.settings.budget} {what}s is spent"
        elif lo is None and hi is not None:
            reason = f"every {what} kept its diversity, {'down' if what == 'beta' else 'up'} to {hi:g}"
        elif hi is None:
            reason = f"no {what} kept its diversity"
        else:
            reason = f"the bracket is as narrow as the precision {self.settings.precision:g}"
        if lo is not None and hi is not None:
            reason += f"; bracket: {lo:g} (collapsed) to {hi:g} (kept)"
        if wrong:
            reason += (f"; not monotone in {what} (noise near the boundary): {', '.join(f'{b:g}' for b in wrong)} on the "
                       "wrong side")
        return reason

    def converged(self, lo: float | None, hi: float | None) -> bool:
        if lo is None or hi is None:
            return False
        x = self._x
        points = sorted({x(lo), x(hi)} | {x(b) for b in self.betas if x(lo) < x(b) < x(hi)})
        return all(b / a <= self.settings.precision for a, b in zip(points, points[1:]))

    def path(self) -> dict[str, Any]:
        """The search as plain data: settings, every step in order, and where it ended."""
        lo, hi, wrong = self._bracket(self.verdicts())
        return {
            "settings": {k: v for k, v in vars(self.settings).items()},
            "steps": self.log,
            "bracket": {"collapsed": lo, "kept": hi, "not_monotone": wrong},
            "finished": self.finished,
        }


class SearchStopper(tune.Stopper):
    """Stops a search's trial once its beta can no longer move the bracket (BetaSearch.needless), and writes
    why into the trial's folder on the storage, so that best_beta leaves it out of the choice."""

    def __init__(self, search: BetaSearch, exp_path: str, seed_in_name: bool, start_beta: float = 0.0):
        self.search, self.exp_path, self.seed_in_name = search, exp_path, seed_in_name
        self.start_beta = start_beta  # a search of KL targets: every trial's beta starts there

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if trial_id in self.search.dropped:
            return True
        why = self.search.needless(trial_id)
        if why is None:
            return False
        self.search.dropped[trial_id] = why
        beta, seed = self.search.trials[trial_id]
        if self.search.knob is BETA:
            name = trial_dirname(beta, seed, self.seed_in_name, trial_id)
        else:
            name = trial_dirname(self.start_beta, seed, self.seed_in_name, trial_id, kl_target=beta)
        folder = store.join(self.exp_path, name)
        store.write_text(store.join(folder, STOP_FILE), stop_record(DROPPED, why, result.get("generations")))
        log.info("alliter search: stopped %s %g (seed %d): %s", self.search._what, beta, seed, why)
        return True

    def stop_all(self) -> bool:
        return False
