"""Your tracker sees the sweep, through Ray Tune's own logger callbacks. MLflow: one run per trial
(Tune's MLflowLoggerCallback), its config as params, every group's metrics as histories stepped by generations,
tags naming the sweep and the trial's folder; a resumed sweep finds each trial's run by its tags and goes on in it.
W&B: Tune's WandbLoggerCallback, one run per trial whose id is the trial's (a resumed sweep continues it), grouped
by the sweep; `WANDB_MODE=offline` needs no network. Checked before Ray starts by alliter.trackers."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from alliter.trackers import mlflow_experiment


def sweep_callbacks(trackers: dict[str, str | None], exp_path: str) -> list:
    """Tune's callbacks for the trackers of a sweep (TRACKERS_FILE's settings; none: an empty list, and nothing
    imported)."""
    callbacks: list = []
    if trackers.get("mlflow") is not None:
        from mlflow.tracking import MlflowClient

        mlflow_experiment(MlflowClient(trackers["mlflow"]), trackers["mlflow_experiment"])  # its artifacts' place
        callbacks.append(_mlflow_callback_class()(
            tracking_uri=trackers["mlflow"], experiment_name=trackers["mlflow_experiment"],
            tags={"alliter.sweep": Path(exp_path.partition("?")[0]).name, "alliter.sweep_path": exp_path}))
    if trackers.get("wandb") is not None:
        # the run's id is the trial's (Ray's), and resume="allow" continues it when a resumed sweep reports again
        callbacks.append(_wandb_callback_class()(project=trackers["wandb"], group=trackers["wandb_group"],
                                                 resume="allow", log_config=False))
    return callbacks


def _wandb_callback_class() -> type:
    """Tune's WandbLoggerCallback, whose logging actor waits for W&B's core to write the run before it returns. Tune
    kills a trial's logging actor as soon as its run() returns, and wandb.finish() returns before W&B's core process
    has closed the run's file: a killed core left an offline run with no record past the file's header."""
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor  # private: tests/test_house.py

    class LoggingActor(_WandbLoggingActor):
        def run(self) -> None:
            super().run()
            self._wandb.teardown()  # waits for the core to finish every stream of this process

    class SweepWandb(WandbLoggerCallback):
        _logger_actor_cls = LoggingActor

    return SweepWandb


def _mlflow_callback_class() -> type:
    """Tune's MLflowLoggerCallback, with what a sweep needs: a resumed sweep goes on in each trial's run (found by its
    tags), a result is one batch stepped by its generations (Tune's logs each value alone, stepped by report), and
    each run names its trial's folder. Defined here, when asked for: Ray's module imports mlflow."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.result import AUTO_RESULT_KEYS

    class SweepMLflow(MLflowLoggerCallback):
        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)
            self._logged: dict[Any, int] = {}  # trial -> the last generations its run holds

        def log_trial_start(self, trial: Any) -> None:
            client = MlflowClient(self.tracking_uri)
            if trial not in self._trial_runs:
                found = client.search_runs(
                    [self.mlflow_util.experiment_id],
                    f"tags.trial_name = '{trial}' and tags.`alliter.sweep_path` = '{self.tags['alliter.sweep_path']}'")
                if found:  # a resumed sweep: the trial's run goes on
                    run_id = found[0].info.run_id
                    self._trial_runs[trial] = run_id
                    client.update_run(run_id, status="RUNNING")
                    self._logged[trial] = max((m.step for m in client.get_metric_history(run_id, "generations")),
                                              default=-1)
            super().log_trial_start(trial)
            client.set_tag(self._trial_runs[trial], "alliter.trial_folder", trial.path)

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            step = int(result.get("generations") or result.get("training_iteration") or 0)
            # a trial restored from its checkpoint reports again, exactly, the groups after it: its run has them
            if step <= self._logged.get(trial, -1):
                return
            self._logged[trial] = step
            now = int(time.time() * 1000)
            metrics = [Metric(key, float(value), now, step) for key, value in result.items()
                       if key not in AUTO_RESULT_KEYS and isinstance(value, (int, float))
                       and not isinstance(value, bool) and math.isfinite(value)]
            MlflowClient(self.tracking_uri).log_batch(self._trial_runs[trial], metrics=metrics)

    return SweepMLflow
