"""Experiment configs: `<family>/<name>.py` files with `get_config(arg=None)` (and optionally
`get_sweep()`), loaded by path through `--config path.py[:key=value,...]`; `common` holds
the pieces they share (run defaults, data, evals, optimizer, tower sizes)."""
