"""Your tracker sees the sweep: MLflow and Weights & Biases through Ray Tune's own logger callbacks, and the checks
that make a tracker that cannot work one line before Ray starts.

Each is an optional extra (`pip install "alliter[mlflow]"`, `"alliter[wandb]"`), imported only when asked for: the
driver still never imports torch. MLflow: one run per trial (Tune's MLflowLoggerCallback), its config as params,
every group's metrics as histories stepped by generations, tags naming the sweep and the trial's folder; a resumed
sweep finds each trial's run by its tags and goes on in it. W&B: Tune's WandbLoggerCallback, one run per trial
whose id is the trial's (a resumed sweep continues it), grouped by the sweep; `WANDB_MODE=offline` needs no network.
"""

from __future__ import annotations

import math
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from alliter.cli import AlliterError, one_line

ANSWER_TIMEOUT_S = 5.0  # a tracking server that does not answer in this is refused before Ray starts


def require(module: str, flag: str, extra: str) -> Any:
    """The tracker's package, or one line that names the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AlliterError(f"{flag} needs {module}, which is not installed: pip install \"alliter[{extra}]\"") from None


MLFLOW_DB = "mlflow.db"  # a --mlflow folder's store, under MLflow 3 (whose file store is in maintenance mode)


def check_mlflow_uri(uri: str, flag: str = "--mlflow") -> str:
    """A tracking URI MLflow can use, checked: a folder (MLflow 3: a sqlite:/// store in it, said in one line; older:
    its file store), sqlite:///path.db (its folder writable), or http(s)://host:port (answering within seconds).
    Returns the URI as MLflow will be given it."""
    if not uri.strip():
        raise AlliterError(f"{flag} is empty: pass a folder, sqlite:///path.db or http://host:port")
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise AlliterError(f"{flag} {uri}: no host (expected http://host:port)")
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=ANSWER_TIMEOUT_S) as answer:
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise AlliterError(f"{flag} {uri}: the tracking server does not answer within {ANSWER_TIMEOUT_S:g} s "
                               f"({one_line(reason if isinstance(reason, BaseException) else err)}); start it, or "
                               "pass a folder or sqlite:///path.db") from None
        return uri
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or len(uri) <= len("sqlite:///"):
            raise AlliterError(f"{flag} {uri}: expected sqlite:///path/to/file.db")
        _writable_folder(Path(uri[len("sqlite:///"):]).expanduser().absolute().parent, flag, uri)
        return uri
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri).expanduser().absolute()
        _writable_folder(folder, flag, uri)
        if int(require("mlflow", flag, "mlflow").__version__.split(".")[0]) < 3:
            return folder.as_uri()
        if folder.is_file() or any(folder.glob("*/meta.yaml")):
            raise AlliterError(f"{flag} {uri}: {'a file' if folder.is_file() else 'the folder holds MLflow file store runs'},"
                               f" which MLflow 3 no longer writes; migrate them (mlflow migrate-filestore) and pass "
                               f"sqlite:///path.db, or pass another folder")
        store = f"sqlite:///{folder / MLFLOW_DB}"
        print(f"mlflow: {flag} {uri} is a folder, and MLflow 3 keeps runs in a database: they go to {store} (its "
              f"artifacts to {folder / 'artifacts'})", file=sys.stderr)
        return store
    raise AlliterError(f"{flag} {uri}: alliter takes a folder, sqlite:///path.db or http://host:port")


def mlflow_experiment(client: Any, name: str) -> str:
    """The id of the experiment `name`, created if need be: a store of a folder's (MLFLOW_DB) keeps its artifacts beside
    it (MLflow's default is ./mlruns wherever the command runs)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    uri = client.tracking_uri
    beside = Path(uri[len("sqlite:///"):]).parent / "artifacts" if uri.startswith("sqlite:///") else None
    return client.create_experiment(name, artifact_location=beside.as_uri() if beside else None)


def _writable_folder(folder: Path, flag: str, uri: str) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise AlliterError(f"{flag} {uri}: cannot write in {existing}")


WANDB_NAME_MAX = 128  # a W&B project's or group's name, and the characters a project's name cannot hold (W&B's rules)
WANDB_PROJECT_CHARS = set("/\\#?%:\r\n")


def check_wandb_names(project: str, group: str | None, flag: str = "--wandb") -> None:
    """A project and group name W&B takes (W&B refuses others late: after the sweep, or with a traceback)."""
    bad = sorted(WANDB_PROJECT_CHARS & set(project))
    if not project.strip() or bad or len(project) > WANDB_NAME_MAX:
        why = "is empty" if not project.strip() else f"holds {', '.join(map(repr, bad))}" if bad else \
            f"is {len(project)} characters"
        raise AlliterError(f"{flag} {project[:40]!r}{'...' if len(project) > 40 else ''} {why}: a W&B project's name has "
                           f"at most {WANDB_NAME_MAX} characters, none of / \\ # ? % :")
    if group is not None and (not group.strip() or len(group) > WANDB_NAME_MAX):
        raise AlliterError(f"{flag}-group: a W&B group's name has 1 to {WANDB_NAME_MAX} characters, got {len(group)}")


def check_wandb(flag: str = "--wandb") -> None:
    """W&B is installed, and offline (WANDB_MODE=offline or disabled) or logged in: online with no login, wandb would
    ask on the terminal of a process nobody types into."""
    wandb = require("wandb", flag, "wandb")
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    try:
        key = os.environ.get("WANDB_API_KEY") or wandb.Api().api_key
    except Exception:  # noqa: BLE001 - wandb.Api() raises its own UsageError without a key
        key = None
    if not key:
        raise AlliterError(f"{flag}: W&B is online (WANDB_MODE) and not logged in: run `wandb login`, or set "
                           "WANDB_MODE=offline and `wandb sync` the runs later")


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


def check_trackers(trackers: dict[str, str | None]) -> dict[str, str | None]:
    """Each tracker asked for can work (its package, its server): one line otherwise, before Ray starts. Returns the
    settings with the MLflow URI as MLflow will be given it."""
    out = dict(trackers)
    if trackers.get("mlflow") is not None:
        require("mlflow", "--mlflow", "mlflow")
        out["mlflow"] = check_mlflow_uri(trackers["mlflow"])
    if trackers.get("wandb") is not None:
        check_wandb_names(trackers["wandb"], trackers.get("wandb_group"))
        check_wandb()
    return out


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


# --- best_beta's choice beside the trials -----------------------------------------------------------------------


def log_choice_mlflow(uri: str, experiment: str, result: Any, out: Path, written: list[Path],
                      export: Path | None) -> str:
    """One summary run in the sweep's experiment: the choice and the best point as params and metrics, best_beta's
    files (summary.csv, points.csv, the plots, report.html) as artifacts, and the exported folder (its path, and
    the folder itself under model/). Returns the run's id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = mlflow_experiment(client, experiment)
    run = client.create_run(experiment_id, run_name="best_beta",
                            tags={"alliter.sweep": experiment, "alliter.sweep_path": str(result.sweep.resolve()),
                                  "alliter.role": "best_beta"})
    run_id = run.info.run_id
    params = {"knob": result.knob, "recipe": result.recipe.recipe, "update": result.recipe.describe_recipe()[:6000],
              "rule": result.cfg.rule().describe()}
    metrics: dict[str, float] = {}
    for prefix, chosen in (("choice", result.choice), ("best_point", result.best_point)):
        if chosen is None:
            params[prefix] = "none"
            continue
        params[f"{prefix}.{result.knob}"] = chosen.value
        params[f"{prefix}.generations"] = chosen.generations
        for name in ("alliteration", "alliteration_gain", "diversity_kept", "fluency_gap", "beta"):
            value = getattr(chosen, name, None)  # a best point has no gain
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[f"{prefix}.{name}"] = float(value)
    if export is not None:
        params["export"] = str(export.resolve())
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
                     params=[Param(key, str(value)) for key, value in params.items()])  # one request, not one each
    for path in written:
        client.log_artifact(run_id, str(path))
    if export is not None:
        client.log_artifacts(run_id, str(export), "model")
    client.set_terminated(run_id)
    return run_id


def log_choice_wandb(project: str, group: str, result: Any, out: Path, written: list[Path], stories: list[dict]) -> None:
    """One W&B run of the group: the summary table, the plots, and a table of the best point's stories."""
    import wandb

    # W&B's run (it adds wandb/ to its folder), staging and logs beside the analysis, not in $HOME or the folder the
    # command runs in, unless the user's own W&B settings say where
    here = out / "wandb"
    for name, folder in (("WANDB_DATA_DIR", here / "data"), ("WANDB_CACHE_DIR", here / "cache")):
        os.environ.setdefault(name, str(folder))
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, group=group, name="best_beta", job_type="analysis",
                     dir=os.environ.get("WANDB_DIR") or str(out),
                     config={"knob": result.knob, "recipe": result.recipe.recipe,
                             "choice": result.choice and result.choice.as_dict(),
                             "best_point": result.best_point and result.best_point.as_dict()})
    try:
        run.log({"summary": wandb.Table(dataframe=result.summary.astype(str)),
                 **{f"plots/{p.stem}": wandb.Image(str(p)) for p in written if p.suffix == ".png" and p.exists()},
                 "best_point_stories": wandb.Table(columns=["sample", "raw_reward", "fluency", "text"],
                                                   data=[[s.get("sample"), s.get("raw_reward"), s.get("ce_ref"),
                                                          s.get("text")] for s in stories])})
    finally:
        run.finish()
