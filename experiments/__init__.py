"""What a researcher launches, and the code behind it, a package per concern.

Entry points (this folder): `python -m experiments.train | evaluate | predict | sweep |
benchmark`, and `python -m experiments.export`. Behind them:

    configs/      experiment configs, `experiments/configs/<family>/<name>.py`
    training/     the one trainer: setup, train state, checkpoints, sharding, optimizer,
                  input binding, the evaluation runner, run metadata
    evaluators/   zero-shot, retrieval, hard negatives, captioning, VQA (by name)
    sweeps/       ablation sweeps on Optuna: grids, plans, workers, results
    interop/      transformers checkpoints read into vlax, and the name tables shared
                  with export
    export/       a run written as a transformers class or plain PyTorch modules
    tools/        measuring tools: step timing, the peer-harness child, loss memory, GPU checks
    launch/       SkyPilot and SLURM task files

Imports point one way: entry points -> sweeps / tools / export -> training -> evaluators /
interop -> objectives -> models; `data` is bound by training/inputs.py.
"""
