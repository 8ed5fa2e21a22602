"""A sweep's folder -> frames -> the rule -> the choice and the best point -> the report and the exported model.

- command.py   best_beta's command line (analysis/best_beta.py, `alliter best-beta`)
- frames.py    reading the trial folders into pandas frames
- judge.py     the rule (alliter.rule) applied: points, trials, betas, the choice, the best point
- letters.py   which letters alliterate: their shares and spread at each beta and the unmodified model
- frontier.py  the reward-KL frontier and Gao et al.'s fit of it
- names.py     how a value, a measure, a colour and the reward are named in the plots and the text
- plots.py     the plots
- document.py  a document as one list of blocks, rendered to markdown and to HTML
- report.py    the table, the choice in sentences, the CSV files, report.md and report.html
- export.py    a (beta, generations) point as a model folder that transformers loads, evaluated as it ships
- trackers.py  best_beta's choice beside the sweep's trials, in MLflow and W&B
"""
