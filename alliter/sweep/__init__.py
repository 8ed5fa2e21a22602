"""Many RLOO trials on Ray Tune, one per (beta, seed), on this machine or a Ray cluster.

- command.py  the sweep's command line (tune_jobs/sweep.py, `alliter sweep`)
- grids.py    the named grids, and the parsing of --betas, --kl-targets, --search-start, --seeds
- run.py      SweepConfig, and a sweep in steps: plan -> lock -> connect -> build the Tuner -> run -> summarise
- trial.py    the Tune trainable around the trainer, its options, and NoRetry
- search.py   search mode: the Tune Searcher that brackets the balanced beta, and its stopper
- cluster.py  can the Ray cluster run a trial: its nodes, and what its autoscaler may add
- console.py  what a person watches: a line per trial, 100 columns (a Tune progress reporter)
"""
