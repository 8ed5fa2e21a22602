"""A sweep's folder -> frames -> the rule -> the choice and the best point -> the report and the exported model.

- command.py  best_beta's command line (analysis/best_beta.py, `alliter best-beta`)
- frames.py   reading the trial folders into pandas frames
- judge.py    the rule (alliter.rule) applied: points, trials, betas, the choice, the best point
- letters.py  which letters alliterate: their shares and spread at each beta and the unmodified model
- report.py   the table, the plots, report.md and report.html
- export.py   a (beta, generations) point as a model folder that transformers loads, evaluated as it ships
"""
