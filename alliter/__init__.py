"""alliter: sweep the KL-penalty coefficient beta of an RLOO fine-tuning run on Ray Tune, and pick the beta (and the
point in training) whose policy alliterates and still reads well.

The three pipelines, each a package:
- alliter.train     one RLOO trial: sample, reward, score, update; evaluations and snapshots of the policy
- alliter.sweep     many trials on Ray Tune: config -> plan (every check; the knob it varies) -> run, a grid or a
                    search, seeds, storage, a cluster
- alliter.analyse   a sweep's folder -> frames -> the rule -> the choice, the report, the exported model

and the leaves they share: config (TrainConfig: every knob, the presets, the grids), knob (what a sweep varies: beta
or a KL target), rule (what a kept point is), measures (of a group of texts), schema (the run folder's files and
records, Tune's saved state read), storage (the one file layer: folders and s3:// URIs), trackers (the checks of
--mlflow and --wandb; sweep.trackers and analyse.trackers log), cli (flags from dataclasses, the one error handler),
sample (stories from a model folder), testing (tiny models);
and api, for Python and notebooks: `alliter.run_sweep(**flags)` and `alliter.load(folder)` (README, "From Python").
"""

from typing import Any

__all__ = ["run_sweep", "load"]


def __getattr__(name: str) -> Any:
    # imported when first asked for (PEP 562): `import alliter` stays light for the command lines, which never use them
    if name in __all__:
        from alliter import api

        return getattr(api, name)
    raise AttributeError(f"module 'alliter' has no attribute {name!r}")
