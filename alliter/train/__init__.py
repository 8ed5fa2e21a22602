"""One RLOO trial: sample a group, reward it, score it under the policy and the reference, one SGD step;
every generation, metric, evaluation and snapshot kept in the trial's folder (alliter.schema).

- reward.py     the reward of a text: the study's raw reward, rare-alliteration, or the user's own
- model.py      the policy, its reference (frozen, unless reset), the unmodified model and the tokenizer
- rollout.py    sampling a group (the fast path, else the library's generate), cutting it at its end-of-text
- fast/         alliter's own decode loop and scoring forward for Llama and GPT-Neo
- rloo.py       per-sample cross-entropy, leave-one-out advantage, the loss, the remedies' entropy and reset
- trainer.py    the trial: the RLOO update, its files, TensorBoard, checkpoints
- evaluate.py   fresh stories of the policy at a point, scored by the unmodified model
- snapshots.py  the policy every `snapshot_every` generations, and the disk they take
- preflight.py  what a trial will build, checked before anything starts
- __main__.py   python -m alliter.train: one trial without Ray
"""
