"""The study in one command: the sweeps chained (run) and the write-up made from their data (writeup)."""
