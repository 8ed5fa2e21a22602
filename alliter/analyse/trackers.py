"""best_beta's choice beside the sweep's trials in your tracker: one MLflow run in the sweep's experiment, one W&B run
in its group (checked before the analysis runs by alliter.trackers)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from alliter.analyse.judge import Analysis
from alliter.trackers import mlflow_experiment


def log_choice_mlflow(uri: str, experiment: str, result: Analysis, out: Path, written: list[Path],
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
    params = {"knob": result.knob.name, "recipe": result.recipe.recipe, "update": result.recipe.describe_recipe()[:6000],
              "rule": result.cfg.rule().describe()}
    metrics: dict[str, float] = {}
    for prefix, chosen in (("choice", result.choice), ("best_point", result.best_point)):
        if chosen is None:
            params[prefix] = "none"
            continue
        params[f"{prefix}.{result.knob.name}"] = chosen.value
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


def log_choice_wandb(project: str, group: str, result: Analysis, out: Path, written: list[Path],
                     stories: list[dict]) -> None:
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
                     config={"knob": result.knob.name, "recipe": result.recipe.recipe,
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
