"""From a (beta, generations) point of a sweep (or a (KL target, generations) point of a target sweep) to a model
folder every tool loads.

    python analysis/best_beta.py SWEEP --export DIR                      # the analysis's best point
    python analysis/best_beta.py SWEEP --export DIR --export-at 30:1600  # another point

The folder holds the policy of the trial at that point, from the trial's snapshot (or, when the point has
none, the nearest earlier one, said in one line): model.safetensors and config.json
(`save_pretrained`), the tokenizer, a generation config with the trial's sampling settings (do_sample,
top-k, temperature, max_length), README.md (a model card: the point, its evaluation, the sweep, the rule
that chose it) and alliter.json (the same, machine-readable). `AutoModelForCausalLM.from_pretrained(DIR)`
and `pipeline("text-generation", model=DIR)` load it with no hub; `python -m alliter.sample DIR` prints
stories from it.

An export measures what it ships: the folder is written aside, loaded back as its user would load it and
evaluated (alliter.train.evaluate.evaluate_folder) against the unmodified model; that evaluation goes into the card
and alliter.json. A point whose evaluation fails the rule (alliter.rule) is refused, with nothing written,
unless `--force`, which writes the failure into the card.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from alliter import measures as M
from alliter.analyse.frames import Trial
from alliter.analyse.judge import Analysis
from alliter.cli import AlliterError
from alliter.config import DEFAULT_REWARD, TrainConfig, base_model_here
from alliter.rule import KEPT
from alliter.schema import CONFIG_FILE, EXPORT_INFO_FILE
from alliter.train.snapshots import load_snapshot, snapshot_at, snapshot_path, umask_now

# the measures a model card lists, in order: point measure -> label
CARD_MEASURES = {m.name: m.card for m in M.MEASURES if m.card}


@dataclass
class ExportPoint:
    """What to export: the point asked for, the trial and the snapshot that serve it, and what to say."""

    value: float  # the sweep's knob: a beta, or a KL target
    requested: int  # generations asked for
    generations: int  # generations of the snapshot used
    trial: Trial
    snapshot: Path
    rule: str
    notes: list[str] = field(default_factory=list)
    recorded: dict[str, Any] | None = None  # the trial's own evaluation of that point, judged (analysis.points)


def parse_point(text: str) -> tuple[float, int]:
    """`30:1600` -> (30.0, 1600)."""
    beta, sep, generations = text.partition(":")
    try:
        point = float(beta), int(generations)
    except ValueError:
        point = None
    if not sep or point is None or not math.isfinite(point[0]):
        raise AlliterError(f"--export-at takes BETA:GENERATIONS, e.g. 30:1600; got {text!r}")
    return point


def check_out_dir(out: Path) -> None:
    """An export never writes into a folder that holds anything (it could be another export, or results)."""
    if out.exists() and not out.is_dir():
        raise AlliterError(f"{out} is a file, not a folder; nothing was written - pass a new or empty folder to --export")
    if out.exists() and any(out.iterdir()):
        raise AlliterError(f"{out} exists and is not empty; nothing was written - pass a new or empty folder to --export")


def pick_trial(result: Analysis, value: float, trial_name: str | None = None) -> tuple[Trial, list[str]]:
    """The trial of a knob's value (a beta, or a KL target) to export: the named one, else (seeds) the one with the
    lowest seed."""
    trials = [t for t in result.trials if math.isclose(t.value, value, rel_tol=1e-9, abs_tol=1e-12)]
    what = result.knob.symbol
    if not trials:
        values = ", ".join(f"{b:g}" for b in sorted({t.value for t in result.trials}))
        raise AlliterError(f"{what} {value:g} is not in the sweep (its {what}s: {values})")
    if trial_name is not None:
        named = [t for t in trials if t.name == trial_name]
        if not named:
            raise AlliterError(f"no trial named {trial_name!r} with {what} {value:g} in the sweep")
        return named[0], []
    if len(trials) == 1:
        return trials[0], []
    trial = min(trials, key=lambda t: (t.seed, t.name))
    return trial, [f"{len(trials)} trials have {what}={value:g}: exporting {trial.name}, the one with the lowest seed "
                   f"({trial.seed})"]


def resolve_point(result: Analysis, point: dict[str, Any], rule: str) -> ExportPoint:
    """The trial and snapshot for a point {value, generations[, trial]}; AlliterError in one line when there is none."""
    value, requested = float(point["value"]), int(point["generations"])
    trial, notes = pick_trial(result, value, point.get("trial"))
    used, note = snapshot_at(trial.path, requested, trial.done, trial.name)
    notes += [note] if note else []
    p = result.points
    mine = p[(p["trial"] == trial.name) & (p["generations"] == used)]
    recorded = mine.iloc[0].to_dict() if len(mine) else None
    return ExportPoint(value, requested, used, trial, snapshot_path(trial.path, used), rule, notes, recorded)


def check_point(point: ExportPoint, force: bool) -> None:
    """Refuse, before anything is written, a point whose own evaluation in its trial failed the rule."""
    if point.recorded is not None:
        what = f"{point.trial.label} at {point.generations} generations, by its {point.recorded['source']},"
        refuse_unless_forced(point, point.recorded, what, force)


def refuse_unless_forced(point: ExportPoint, judged: dict[str, Any], what: str, force: bool) -> None:
    """A point that fails the rule is refused in one line, with nothing written; with `force` its card says so."""
    if judged["verdict"] == KEPT:
        return
    why = (f"{judged['verdict']} (diversity {judged['diversity_kept']:.0%} of the unmodified model's, fluency "
           f"{judged['fluency_gap']:+.2f} nats)")
    if not force:
        raise AlliterError(f"{what} is {why}; nothing was written - pass --force to export it anyway, with the "
                           "failure in its card")
    point.notes.append(f"exported with --force: {what} is {why}")


def write_export(result: Analysis, point: ExportPoint, out: Path, force: bool = False) -> dict[str, Any]:
    """Write the model folder into a temporary folder beside `out`, evaluate it from there, and rename it to
    `out` when its evaluation passes the rule (or with `force`): a failed or refused export leaves nothing.
    Returns the folder's evaluation."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    from alliter.train.evaluate import evaluate_folder

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar, for one file
    check_out_dir(out)
    cfg = TrainConfig.from_dict(json.loads((point.trial.path / CONFIG_FILE).read_text()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model, tokenizer = load_snapshot(point.trial.path, point.generations)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        eos = tokenizer.eos_token_id
        gen = GenerationConfig.from_dict({
            **{k: v for k, v in model.generation_config.to_diff_dict().items()
               if k not in ("transformers_version", "_from_model_config")},
            "do_sample": True, "top_k": cfg.top_k, "temperature": cfg.temperature, "max_length": cfg.max_length,
            "top_p": 1.0, "pad_token_id": eos,
        })
        gen.save_pretrained(tmp)
        evaluation = evaluate_folder(tmp, cfg, result.cfg.rule())
        refuse_unless_forced(point, evaluation, "the exported folder, by its own evaluation,", force)
        recorded = point.recorded
        info = {
            "beta": beta_at(point), "kl_target": point.trial.kl_target, "beta_trajectory": beta_trajectory(point),
            "generations": point.generations, "requested_generations": point.requested,
            "trial": point.trial.name, "trial_folder": str(point.trial.path.resolve()),
            "sweep": str(result.sweep.resolve()), "snapshot": point.snapshot.name, "rule": point.rule,
            "rule_settings": dataclasses.asdict(result.cfg.rule()), "notes": point.notes, "prompt": cfg.prompt_list[0],
            "prompts": cfg.prompt_list,
            "reward": point.trial.reward,
            "evaluation": evaluation,
            "trial_evaluation": None if recorded is None else {
                k: _number(recorded.get(k)) if k not in ("verdict", "source") else recorded.get(k)
                for k in ("verdict", "source", "alliteration", "diversity_kept", "fluency_gap")},
            "config": cfg.to_dict(),
        }
        (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        licence = _base_licence(cfg.model)
        if licence is not None:
            shutil.copyfile(licence, tmp / "LICENSE")
        (tmp / "README.md").write_text(model_card(info, cfg, licence is not None), encoding="utf-8")
        for path in tmp.iterdir():  # safetensors writes its files private (0600): make them like the others
            os.chmod(path, 0o666 & ~umask_now())
        os.replace(tmp, out)  # onto a missing or empty folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return evaluation


def _base_licence(model: str) -> Path | None:
    """The base model's licence file, when it is a local folder with one (the bundled model: MIT)."""
    folder = Path(base_model_here(model))
    return folder / "LICENSE" if (folder / "LICENSE").is_file() else None


def beta_at(point: ExportPoint) -> float:
    """The beta of the group that led to the snapshot: fixed, or where the KL-target controller had it."""
    m = point.trial.metrics
    rows = m[m["generations"] <= point.generations] if "beta" in m else m.iloc[:0]
    return float(rows["beta"].iloc[-1]) if len(rows) else point.trial.beta


def beta_trajectory(point: ExportPoint) -> list[list[float]] | None:
    """A KL-target trial's beta every 200 generations up to the point, as [generations, beta] pairs; None for a
    fixed beta."""
    if point.trial.kl_target is None:
        return None
    m = point.trial.metrics
    rows = m[(m["generations"] <= point.generations) & (m["generations"] % 200 == 0)]
    return [[int(g), round(float(b), 4)] for g, b in zip(rows["generations"], rows["beta"])]


def _number(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def reward_source(reward: dict[str, Any]) -> str:
    """`alliteration` (built into alliter), or a user's function, its file and the file's SHA-256."""
    if reward["kind"] == "builtin":
        return f"`{reward['reward']}`, built into alliter (alliter.train.reward)"
    digest = f" (SHA-256 `{reward['sha256']}`)" if reward.get("sha256") else ""
    return f"`{reward['function']}` of the {reward['kind']} `{reward['source']}`{digest}"


def _is_hub_id(model: str) -> bool:
    return not model.startswith((".", "/", "~")) and model.count("/") == 1 and not Path(model).exists()


def model_card(info: dict[str, Any], cfg: TrainConfig, has_licence: bool) -> str:
    beta, gens, ev, target = info["beta"], info["generations"], info["evaluation"], info.get("kl_target")
    base = Path(cfg.model).name if not _is_hub_id(cfg.model) else cfg.model
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [alliter, rloo, tinystories]"]
    if _is_hub_id(cfg.model):
        front.append(f"base_model: {cfg.model}")
    front.append("---")

    prompts = (f'the prompt "{cfg.prompt_list[0]}"' if len(cfg.prompt_list) == 1 else
               f"one of {len(cfg.prompt_list)} prompts a group (the first: \"{cfg.prompt_list[0]}\"; all of them in "
               f"`{EXPORT_INFO_FILE}`)")

    def num(value: Any) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    reward = info["reward"]
    labels = {**CARD_MEASURES, **({} if reward["reward"] == DEFAULT_REWARD else
                                  {"alliteration": f"mean raw reward ({reward['reward']})"})}
    rows = "\n".join(f"| {label} | {num(ev['point'].get(name))} | {num(ev['unmodified'].get(name))} |"
                     for name, label in labels.items() if name in ev["point"])
    notes = "".join(f"\n- note: {n}" for n in info["notes"])
    if target is None:
        knob_line, point_line = f"KL-penalty coefficient beta={beta:g}", f"beta (KL-penalty coefficient): {beta:g}"
    else:
        path = ", ".join(f"{b:.3g} at {g}" for g, b in info["beta_trajectory"] or [])
        knob_line = f"KL target {target:g} nats per token, beta {beta:.3g} there"
        point_line = (f"KL target (per-token CE_ref - CE_policy held by Ziegler et al.'s controller): {target:g}; beta "
                      f"started at {info['config']['beta']:g} and was {beta:.3g} at this point (along training: {path})")
    rule = info["rule_settings"]
    verdict = (f"**{ev['verdict']}** by alliter's rule: {rule['diversity_measure']} "
               f"{ev['diversity_kept']:.0%} of the unmodified model's (at least {rule['diversity_share']:.0%} keeps it), "
               f"fluency {ev['fluency_gap']:+.3f} nats over the unmodified model's (at most +{rule['fluency_margin']:g})")
    trial_eval = info.get("trial_evaluation")
    recorded = ("" if trial_eval is None else
                f"\n\nIn its trial, this point's own {trial_eval['source']} was {trial_eval['verdict']}: alliteration "
                f"{num(trial_eval['alliteration'])}, diversity {trial_eval['diversity_kept']:.0%} of the unmodified "
                f"model's, fluency {trial_eval['fluency_gap']:+.3f} nats.")
    stories = "\n\n".join(f"```text\n{t}\n```" for t in ev["stories"])
    licence = (
        "The base model's licence is in `LICENSE`; it applies to these weights too."
        if has_licence else f"The base model's licence ({cfg.model}) applies to these weights."
    )
    return "\n".join(front) + f"""

# {base}, alliteration fine-tune: beta={beta:g} at {gens} generations

An RLOO fine-tune of `{base}` towards alliterative stories, exported by alliter from a {'beta' if target is None else 'KL-target'}
sweep: the policy of trial `{info['trial']}` ({knob_line}) after {gens} generations.

## The point

- {point_line}
- generations: {gens} (snapshot `{info['snapshot']}`; asked for: {info['requested_generations']})
- trial: `{info['trial']}` (seed {cfg.seed})
- sweep: `{info['sweep']}`
- chosen by: {info['rule']}{notes}

## Evaluation of this folder

{ev['samples']} stories sampled from this folder as it loads (`from_pretrained`), with the sampling below and
seed {ev['seed']}, and {ev['samples']} stories of the unmodified model sampled the same way; distinct-n, the unique
fraction and self-BLEU are per group of {cfg.group_size} stories, then averaged. The point is {verdict}.{recorded}

| measure | this model | unmodified model |
| --- | --- | --- |
{rows}

Words of 4+ letters it uses more often than the unmodified model, in these stories (those used at least once in 5
stories, with how many times as often; the unmodified model's uses smoothed by 3): {M.overuse_text(ev.get('overused', []), ev['samples'])}.

Three of its stories:

{stories}

## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="path/to/this/folder")
print(generator({cfg.prompt_list[0]!r})[0]["generated_text"])
```

`generation_config.json` holds the sampling the policy was trained with: do_sample, top-k {cfg.top_k},
temperature {cfg.temperature:g}, max_length {cfg.max_length} tokens (prompt included). With alliter
installed, `python -m alliter.sample path/to/this/folder` prints stories with their raw reward.

## Training

RLOO (groups of {cfg.group_size} samples of {prompts}, leave-one-out advantages, one optimiser step per group,
{cfg.dtype}); {cfg.with_recipe().describe_recipe()}. Base model `{cfg.model}`, tokenizer `{cfg.tokenizer}`. The
whole trial config is in `{EXPORT_INFO_FILE}`.

The raw reward: {reward_source(reward)}.

## Licence

{licence}
"""
