"""Many RLOO trials on Ray Tune, one per (beta, seed), on this machine or a Ray cluster.

- command.py  the sweep's command line (tune_jobs/sweep.py, `alliter sweep`)
- config.py   SweepConfig: the sweep's own flags, each checked alone
- plan.py     the plan: every check before anything starts, the knob it varies, what Ray is to be given (a resume: read back)
- run.py      the run: lock -> connect (start or join Ray, size the trials) -> build the Tuner -> run -> the outcome
- grids.py    the named grids, and the parsing of --betas, --kl-targets, --search-start, --seeds
- trial.py    the Tune trainable around the trainer, its options, and NoRetry
- search.py   search mode: the Tune Searcher that brackets the balanced beta, and its stopper
- cluster.py  can the Ray cluster run a trial: the address, this machine's devices, its nodes, its autoscaler, the slots
- console.py  what a person watches: a line per trial, 100 columns (a Tune progress reporter); the header and the end
- trackers.py Tune's logger callbacks for MLflow and W&B (checked before Ray starts by alliter.trackers)
"""
