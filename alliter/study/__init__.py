"""The study in one command: the reference study's sweeps chained, and the write-up made from their data.

- command.py   the study's command line (tune_jobs/study.py, `alliter study`)
- run.py       the steps (coarse, fine placed from it, extended, the recipe that holds), resumable, in study.json
- evidence.py  what a claim rests on: a recipe's end with its spread over seeds and evaluations, an over-used word
               with its counts, two recipes side by side and what changed between them
- writeup.py   study.md and study.html, findings first, every sentence from the sweeps' data
"""
