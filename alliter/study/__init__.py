"""The study in one command: the reference study's sweeps chained, and the write-up made from their data.

- command.py  the study's command line (tune_jobs/study.py, `alliter study`)
- run.py      the steps (coarse, fine placed from it, extended, the recipe that holds), resumable, in study.json
- writeup.py  study.md and study.html, every sentence from the sweeps' data
"""
