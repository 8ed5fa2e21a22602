"""One RLOO trial without Ray, for debugging and for single runs.

    python -m alliter.train --beta 10 --max-generations 200 --out runs/beta10
    python -m alliter.train --out runs/beta10 --resume --max-generations 400   # continue it

Every field of alliter.config.TrainConfig is a flag (see --help). With --resume the config saved in
the checkpoint is the base, and only the flags given on the command line change it. Exit status: 0 done, 2 a bad
setting (one line, nothing created), 130 interrupted (the line says how to resume).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from alliter.cli import AlliterError, ArgumentParser, add_config_flags, command, given_config_values, prog, run
from alliter.config import TrainConfig, check_given
from alliter.schema import CHECKPOINT_FILE as CHECKPOINT
from alliter.schema import GENERATIONS_FILE
from alliter.train.trainer import Trainer, load_checkpoint_file


def progress_line(m: dict[str, float], max_generations: int) -> str:
    return (
        f"gen {m['generations']:>5}/{max_generations}  raw {m['raw_reward_mean']:5.2f} (max {m['raw_reward_max']:.0f})"
        f"  kl {m['kl_penalty_mean']:+.4f}  d2 {m['distinct_2']:.2f}  uniq {m['unique_fraction']:.2f}"
        f"  {m['seconds_per_group']:.2f}s/group"
    )


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("python -m alliter.train"), description=__doc__)
    parser.add_argument("--out", required=True, help="run directory (created; never emptied)")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    parser.add_argument("--quiet", action="store_true", help="no per-group line")
    add_config_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    metrics: dict[str, float] = {}
    given = given_config_values(args, TrainConfig)
    try:
        if args.resume:
            state = load_checkpoint_file(out / CHECKPOINT)
            cfg = TrainConfig.from_dict({**state["config"], **given})
        else:
            check_given(given)
            if (out / GENERATIONS_FILE).exists() or (out / CHECKPOINT).exists():
                raise AlliterError(f"{out} already holds a run; pass --resume to continue it, or another --out")
            cfg = TrainConfig(**given)
        cfg = cfg.resolved()
        cfg.check_knobs_act(given)
        print(f"alliter: beta {cfg.beta}, model {cfg.model}, tokenizer {cfg.tokenizer}, lr {cfg.lr}, out {out}")
        trainer = Trainer(cfg, out)
        if args.resume:
            trainer.load_checkpoint(out / CHECKPOINT)
            print(f"resumed at generation {trainer.generations}")
        for metrics in trainer.groups():
            if not args.quiet:
                print(progress_line(metrics, cfg.max_generations), flush=True)
            if trainer.checkpoint_due:
                trainer.save_checkpoint(out / CHECKPOINT)
    except KeyboardInterrupt:
        print(f"interrupted; resume with: python -m alliter.train --out {out} --resume", file=sys.stderr)
        return 130
    print(f"done: {trainer.generations} generations in {out} (tensorboard --logdir {out})")
    if metrics:
        print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    run(main)
