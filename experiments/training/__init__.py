"""The training core: one generic trainer for every objective, and what it stands on.

Setup, in the order it runs: `run_spec` (the one pass over the config: every config-only
check, resolved values), `setup` (builds from the spec), `inputs` (config.data bound to the
data package), `model_config` and `precision_policy` (the objective's kwargs completed from
the data; every tower's dtypes), `sharding` (mesh and logical-axis rules), `train_state`
(abstract, sharded state), `optimizer`.
The loop: `trainer` (train and resume), `train_step` (the jitted step), `accumulation` and
`global_norm` (exact micro-batching, norms), `checkpointing` and `run_meta` (orbax
checkpoints, self-describing runs, resume checks), `eval_runner` (evaluators during and after
training), `flops` and `summary` (what the logs and the final table say).
Shared with the entry points: `config_utils` (config loading and key checks), `host_memory`
(the host allocator) and `cli` (the command line, which refuses stray positional arguments).
"""
