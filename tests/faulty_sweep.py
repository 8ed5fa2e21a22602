"""tune_jobs/sweep.py with a fault in every trial's first process, for the tests of crashes and lost nodes.

    ALLITER_TEST_FAULT=crash:3 python tests/faulty_sweep.py --betas 1 --report-seconds 0 ...

The fault is installed here, by wrapping the sweep's trainable before the sweep runs: the production trainable
knows nothing of it. The wrapper is pickled with this script (its __main__), so it reaches a trial on any node;
it fires once per trial (a marker beside the trial's folder), never in a process restored from a checkpoint;
"die:1=3,2=8" fires in the trials of beta 1 (at group 3) and beta 2 (at group 8) only; "die:1=3;crash:4=8" gives
beta 1 one fault and beta 4 another. "crash:N": after the report of group N (counted from 1),
the process loses its working folder, as a lost node would, and dies; "die:N": it dies instead of making that
report (its files stay; a checkpoint due with it never reaches Tune: a worker killed during a checkpoint);
"hang:N": it stops after the report (and that group's checkpoint, if one was due) until its node is killed. Pass
--report-seconds 0, so that group N reports.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliter.cli import run  # noqa: E402
from alliter.sweep import trial  # noqa: E402
from alliter.sweep.command import main  # noqa: E402

FAULT_ENV = "ALLITER_TEST_FAULT"


def with_fault(trainable, fault: str):
    """`fault`: KIND:N for every trial, or KIND:BETA=N,BETA=N,... for the trials of those betas (the others run
    as they should); several, for different betas, joined by ";"."""
    if ";" in fault:
        for one in reversed(fault.split(";")):
            trainable = with_fault(trainable, one)
        return trainable
    kind, _, spec = fault.partition(":")
    groups = {float(b): int(n) for b, n in (item.split("=") for item in spec.split(","))} if "=" in spec else None

    # the trainable's name (Tune's trials show it), not its module: cloudpickle pickles a function of an importable
    # module by reference, and the workers would import the sweep's own trainable instead of this one
    @functools.wraps(trainable, assigned=("__name__", "__doc__"))
    def faulty(config, **parameters):
        from ray import tune

        fired = Path.cwd().parent / f".fault-fired-{tune.get_context().get_trial_id()}"
        group = int(spec) if groups is None else groups.get(float(config["beta"]))
        if tune.get_checkpoint() is not None or fired.exists() or group is None:  # these run as they should
            return trainable(config, **parameters)
        report = tune.report

        def reporting(metrics, *args, **kwargs):
            due = metrics.get("group") == group - 1
            if due:
                fired.touch()
            if kind == "die" and due:
                os._exit(1)
            report(metrics, *args, **kwargs)
            if due:
                if kind == "crash":
                    shutil.rmtree(Path.cwd(), ignore_errors=True)
                    os._exit(1)
                time.sleep(3600)

        tune.report = reporting
        try:
            return trainable(config, **parameters)
        finally:
            tune.report = report

    return faulty


if __name__ == "__main__":
    trial.rloo_trial = with_fault(trial.rloo_trial, os.environ[FAULT_ENV])
    run(main)
