"""best_beta's command (analysis/best_beta.py, `alliter best-beta`): the sweep's frames and the rule applied
(alliter.analyse.judge), its outputs (report) and the export of a point as a model folder (export). The modules
import one way: this one imports them, report and export import judge, judge imports frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from alliter import storage, trackers
from alliter.analyse import export, judge, report
from alliter.analyse.frames import SWEEP_FILES, default_sweep
from alliter.analyse.judge import AnalysisConfig, analyse
from alliter.analyse.trackers import log_choice_mlflow, log_choice_wandb
from alliter.cli import AlliterError, ArgumentParser, add_config_flags, command, given_config_values, prog
from alliter.schema import RESULTS_DIR, SNAPSHOT_DIR

EPILOG = """export:
  --export DIR writes the best point (or --export-at BETA:GENERATIONS) as a model folder that
  transformers' from_pretrained and pipeline("text-generation") load offline; then
  `python -m alliter.sample DIR` prints stories from it."""


def best_point_rule(result: judge.Analysis) -> str:
    return ("the analysis's best point (best_beta.py): the stable point (kept, and so is its trial's next evaluation; "
            f"not kept: {result.cfg.rule().describe()}) with the highest alliteration by its evaluation")


def local_sweep(path: str) -> Path:
    """A folder as it is; a sweep URI (s3://bucket/prefix/SWEEP) copied to results/SWEEP first, the files the
    analysis reads only (no checkpoints, no snapshots), as `aws s3 sync` would; a second run refreshes it."""
    if not storage.is_uri(path):
        return Path(path)
    storage.check_reachable(path, "best_beta")
    dest = Path(RESULTS_DIR) / Path(path.partition("?")[0].rstrip("/")).name
    count = storage.download(path, dest, SWEEP_FILES, skip=("checkpoint_*", SNAPSHOT_DIR))
    print(f"copied {count} files of {path} to {dest}", file=sys.stderr)
    return dest


def fetch_snapshots(trial: Path) -> None:
    """The snapshots of one trial of a copied sweep (an export reads them), from where the copy came from."""
    source = storage.copy_source(trial)
    if source is not None:
        count = storage.download(storage.join(source, SNAPSHOT_DIR), trial / SNAPSHOT_DIR)
        print(f"copied {count} snapshot files of {trial.name}", file=sys.stderr)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog=prog("python analysis/best_beta.py"), description=judge.__doc__, epilog=EPILOG,
    )
    parser.add_argument(
        "results", nargs="?", metavar="RESULTS_DIR",
        help="a sweep's folder (or one trial's), or a sweep URI such as s3://bucket/prefix/SWEEP (copied to "
        "results/SWEEP first); default: the newest sweep under ./results",
    )
    parser.add_argument("--out", help="output folder (default: RESULTS_DIR/analysis)")
    parser.add_argument("--json", action="store_true", help="print the choice as JSON on stdout (the table goes to stderr)")
    parser.add_argument("--export", metavar="DIR", help="write the best point's policy as a model folder (new or empty)")
    parser.add_argument("--export-at", metavar="VALUE:GENERATIONS",
                        help="with --export: export this point instead: a beta (of a target sweep: a KL target) and a "
                             "generation, e.g. 30:1600 (the nearest earlier snapshot "
                             "when it has none)")
    parser.add_argument("--force", action="store_true",
                        help="with --export: export a point whose evaluation fails the rule, with the failure in its card")
    parser.add_argument("--mlflow", metavar="URI", help="log the choice as one run beside the sweep's trials: a folder, "
                        "sqlite:///path.db or http://host:port (pip install \"alliter[mlflow]\")")
    parser.add_argument("--mlflow-experiment", help="the MLflow experiment (default: the sweep's name, as the sweep's)")
    parser.add_argument("--wandb", metavar="PROJECT", help="log the choice to this W&B project (pip install "
                        "\"alliter[wandb]\"; WANDB_MODE=offline needs no network)")
    parser.add_argument("--wandb-group", help="the W&B group (default: the sweep's name, as the sweep's)")
    add_config_flags(parser, AnalysisConfig)
    args = parser.parse_args(argv)
    say = sys.stderr if args.json else sys.stdout
    try:
        point, shipped = None, None
        if (args.export_at or args.force) and not args.export:
            raise AlliterError(f"{'--export-at' if args.export_at else '--force'} needs --export DIR")
        for flag, needs in (("mlflow_experiment", "mlflow"), ("wandb_group", "wandb")):
            if getattr(args, flag) and not getattr(args, needs):
                raise AlliterError(f"--{flag.replace('_', '-')} needs --{needs}")
        tracking = trackers.check_trackers({"mlflow": args.mlflow, "wandb": args.wandb,  # before anything runs
                                            "wandb_group": args.wandb_group})
        if args.export:
            export.check_out_dir(Path(args.export))  # before anything runs
            at = export.parse_point(args.export_at) if args.export_at else None
        sweep = local_sweep(args.results) if args.results else default_sweep()
        result = analyse(sweep, AnalysisConfig(**given_config_values(args, AnalysisConfig)))
        if args.export:
            if at is not None:
                wanted: dict[str, Any] = {"value": at[0], "generations": at[1]}
                rule = f"by hand: --export-at {args.export_at}"
            elif result.best_point is not None:
                best = result.best_point
                wanted, rule = {"value": best.value, "generations": best.generations}, best_point_rule(result)
            else:
                raise AlliterError("the analysis found no best point (no point is kept with its next evaluation kept "
                                   "too); pass --export-at BETA:GENERATIONS (and --force for a point that fails the rule)")
            # a sweep copied from a URI: the chosen trial's snapshots are copied now, and only those
            fetch_snapshots(export.pick_trial(result, float(wanted["value"]), wanted.get("trial"))[0].path)
            point = export.resolve_point(result, wanted, rule)  # a bad beta or generation fails before any output
            export.check_point(point, args.force)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        out = Path(args.out) if args.out else sweep / "analysis"
        written = report.write_outputs(result, out)
        if point is not None:
            for note in point.notes:
                print(f"note: {note}", file=sys.stderr)
            shipped = export.write_export(result, point, Path(args.export), force=args.force)
    except OSError as err:
        raise AlliterError(f"cannot write the outputs: {err}") from None
    name = result.sweep.resolve().name
    if args.mlflow:
        run_id = log_choice_mlflow(tracking["mlflow"], args.mlflow_experiment or name, result, out, written,
                                   Path(args.export) if point is not None else None)
        print(f"mlflow: the choice is run {run_id} of experiment {args.mlflow_experiment or name} at {args.mlflow}",
              file=sys.stderr)
    if args.wandb:
        stories = report.point_stories(result, result.best_point.value, result.best_point.generations)[1] \
            if result.best_point else []
        log_choice_wandb(args.wandb, args.wandb_group or name, result, out, written, stories)
    print(report.table(result), file=say)
    print("\n" + report.reason(result), file=say)
    print(f"\nwrote {', '.join(p.name for p in written)} to {out}", file=say)
    if point is not None:
        m = shipped["point"]
        print(f"exported {point.trial.label} at {point.generations} generations (trial {point.trial.name}) to "
              f"{args.export}; its own evaluation ({shipped['samples']} stories from the folder): {shipped['verdict']}, "
              f"alliteration {m['alliteration']:.2f} (unmodified model {shipped['unmodified']['alliteration']:.2f}), "
              f"{result.cfg.diversity_measure} {shipped['diversity_kept']:.0%} of the unmodified model's, fluency "
              f"{shipped['fluency_gap']:+.2f} nats\nnext: python -m alliter.sample {args.export}", file=say)
    if args.json:
        choice = report.choice_json(result, out)
        if point is not None:
            choice["export"] = {"dir": str(args.export), result.knob.name: point.value, "generations": point.generations,
                                "requested_generations": point.requested, "trial": point.trial.name}
        print(json.dumps(choice, indent=2))
    return 0
