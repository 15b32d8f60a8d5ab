"""The training core: one generic trainer for every objective, and what it stands on.

`trainer` (setup and the loop), `train_state` (abstract, sharded state), `checkpointing` and
`run_meta` (orbax checkpoints, self-describing runs, resume checks), `sharding` (mesh and
logical-axis rules), `optimizer`, `accumulation` and `global_norm` (the update), `inputs`
(config.data bound to the data package), `eval_runner` (evaluators during and after
training), `config_utils` (config loading and key checks), `flops` and `summary` (what the
logs and the final table say), `host_memory` (the entry points' host allocator).
"""
