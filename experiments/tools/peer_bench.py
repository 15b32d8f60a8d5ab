r"""The vlax child of the peer benchmark (../shared/peers/README.md): one CLIP / SigLIP train
step at the harness's shapes, built through the project's config API and timed on the
trainer's own jitted step (its sharding, donation and AdamW).

    python3 ../shared/peers/run_all.py --peers open_clip ... \
        --peer "vlax=$PWD/.venv/bin/python $PWD/experiments/tools/peer_bench.py \
            [--precision bf16] [--layers unrolled]"
    python experiments/tools/peer_bench.py --shape s16 --loss clip --steps 2 --warmup 1 \
        --spec-json "$(python -c 'import sys; sys.path.insert(0, "../shared/peers"); \
            import shapes, json; print(json.dumps(shapes.get_spec("s16")))')"

Prints one `BENCH_RESULT {json}` line. The shapes come from `--spec-json` (run_all passes
it); the towers match the harness: class-token image pooling, a bidirectional text tower
pooled at its last token, learned positions, AdamW with a constant learning rate and no
clipping. `--precision bf16` is config.precision="bf16_mixed" (bf16 matmul inputs, float32
accumulation, activations, parameters, optimizer state and loss); `bf16_act` adds bf16
activations. `--layers scan` (default) or `unrolled`: see LAYERS. The process runs with the
entry points' host allocator (experiments/training/host_memory.py: tcmalloc when installed).
"""

import argparse
import json
import os
import sys

# Run as a script from anywhere (run_all starts children in the peers folder): the repo root,
# three levels above experiments/tools/peer_bench.py, is importable.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

RESULT_TAG = "BENCH_RESULT "
LOSSES = {"clip": ("softmax", 1 / 0.07, None), "siglip": ("sigmoid", 10.0, -10.0)}
# --precision -> config.precision (models/precision.py)
PRECISIONS = {"fp32": "fp32", "bf16": "bf16_mixed", "bf16_act": "bf16_act"}
# --layers: "scan" stacks each tower's blocks and loops over them (one traced block: the
# step compiles in about half the time, and runs ~4-10% slower on CPU); "unrolled" traces
# every block (models/layers.py Encoder.scan).
LAYERS = ("scan", "unrolled")


def peer_config(
    spec: dict, loss: str, *, steps: int, precision: str = "fp32", layers: str = "scan"
):
    """A vlax contrastive config with exactly the harness's shapes and optimizer."""
    from experiments.configs import common

    if loss not in LOSSES:
        raise ValueError(f"--loss must be one of {sorted(LOSSES)}, got {loss!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if layers not in LAYERS:
        raise ValueError(f"--layers must be one of {LAYERS}, got {layers!r}")
    kind, temperature, bias = LOSSES[loss]
    im, tx, opt = spec["image"], spec["text"], spec["optimizer"]
    config = common.base(total_steps=steps, batch_size=spec["batch"])
    config.precision = PRECISIONS[precision]
    config.objective = "contrastive"
    config.model = dict(
        image=dict(
            width=im["width"],
            depth=im["depth"],
            num_heads=im["heads"],
            mlp_dim=im["mlp"],
            patch_size=im["patch"],
            pool_type="cls",
            posemb="learn",
            num_classes=spec["embed_dim"],
            scan=layers == "scan",
        ),
        text=dict(
            width=tx["width"],
            depth=tx["depth"],
            num_heads=tx["heads"],
            mlp_dim=tx["mlp"],
            vocab_size=tx["vocab"],
            max_len=tx["context"],
            causal=False,
            pool_type="last",
            num_classes=spec["embed_dim"],
            scan=layers == "scan",
        ),
        loss=kind,
        loss_impl="sharded",
        temperature_init=temperature,
        **({"bias_init": bias} if bias is not None else {}),
    )
    config.data = common.shapes_data(
        image_size=im["size"], max_len=tx["context"], vocab_size=tx["vocab"]
    )
    config.optim = common.adamw(lr=opt["lr"], warmup_steps=0, weight_decay=opt["weight_decay"])
    config.optim.update(
        b1=opt["b1"], b2=opt["b2"], eps=opt["eps"], schedule="constant", grad_clip_norm=0.0
    )
    config.evals = {}
    return config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", required=True)
    p.add_argument("--loss", required=True, choices=sorted(LOSSES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)  # XLA:CPU uses every core it is given
    p.add_argument("--spec-json", required=True, help="the harness's shapes.get_spec(shape)")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    p.add_argument("--layers", default="scan", choices=LAYERS)
    args = p.parse_args(argv)
    spec = json.loads(args.spec_json)

    import jax

    from experiments.tools import step_timing

    config = peer_config(
        spec,
        args.loss,
        steps=args.warmup + args.steps + 1,
        precision=args.precision,
        layers=args.layers,
    )
    out = step_timing.benchmark(config, steps=args.steps, warmup=args.warmup)
    result = {
        "kind": "step",
        "peer": "-".join(
            ["vlax"]
            + ([args.precision] if args.precision != "fp32" else [])
            + ([args.layers] if args.layers != "scan" else [])
        ),
        "shape": spec.get("name", args.shape),
        "loss_name": args.loss,
        "batch": spec["batch"],
        "loss_first": out["loss_first"],
        "loss_last": out["loss"],
        "compile_s": out["compile_s"],
        "first_step_s": out["first_step_s"],
        "step_times_s": out["step_times_s"],
        "step_median_s": out["step_s"],
        "step_min_s": min(out["step_times_s"]),
        "step_max_s": max(out["step_times_s"]),
        "examples_per_s": spec["batch"] / out["step_s"],
        # The harness's own analytic count, so every column divides the same number.
        "flops_per_step": _harness_flops(spec) or out["flops_per_step"],
        "vlax_flops_per_step": out["flops_per_step"],
        "mfu_vlax": out["mfu"],
        "step_memory_bytes_per_device": out["step_memory_bytes_per_device"],
        "config": {
            "precision": args.precision,
            "layers": args.layers,
            "image_pool": "cls",
            "text_pool": "last",
        },
        "device": str(jax.devices()[0]),
        "host_allocator": out["host_allocator"],
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


def _harness_flops(spec: dict) -> float:
    """shapes.flops_per_step(spec)["total"] when the harness is importable beside the repo."""
    for folder in (os.getcwd(), os.path.join(REPO_ROOT, "..", "shared", "peers")):
        if os.path.exists(os.path.join(folder, "shapes.py")):
            sys.path.insert(0, folder)
            import shapes

            return float(shapes.flops_per_step(spec)["total"])
    return None


if __name__ == "__main__":
    from experiments.training import host_memory

    host_memory.use_fast_allocator()  # before JAX starts; may re-execute with tcmalloc
    main()
