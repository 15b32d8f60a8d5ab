"""Ablation sweeps behind `python -m experiments.sweep`, on Optuna.

`grid` (what a config's `get_sweep()` returns: grids, searches, fixed overrides), `plan`
(points and their workdirs, checked before anything launches), `study` (the Optuna study
in the sweep root), `worker` (trains points as `experiments.train` subprocesses, resumes
interrupted ones), `results` (results.csv / .md / .png).
"""
