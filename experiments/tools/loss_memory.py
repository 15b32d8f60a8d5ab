r"""Per-device memory of the contrastive losses (forward + backward), from XLA's compiled
memory analysis: dense reference vs all-gather softmax vs ring softmax vs ring sigmoid.

    python -m experiments.tools.loss_memory --batch 32768 --dim 512 --devices 8

Nothing is run, only compiled: the figures are what each device would need for the loss and
its gradient with respect to the embeddings and the temperature (and bias), on host CPU
devices standing in for accelerators (`--devices` of them, batch sharded over "data").
Prints a markdown table and optionally writes JSON.
"""

import json
import os
import sys


def _set_devices(argv) -> None:
    """The host device count must be set before jax is imported."""
    count = 8
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            count = int(arg.split("=", 1)[1])
        elif arg == "--devices" and i + 1 < len(argv):
            count = int(argv[i + 1])
    flag = f"--xla_force_host_platform_device_count={count}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _set_devices(sys.argv)

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from objectives import contrastive_losses as cl  # noqa: E402

# (label, loss kind, impl)
VARIANTS = (
    ("dense softmax (the reference, partitioned by XLA)", "softmax", "dense"),
    ("all-gather softmax", "softmax", "gathered"),
    ("ring softmax", "softmax", "ring"),
    ("ring sigmoid", "sigmoid", "ring"),
)


def loss_memory(batch: int, dim: int, devices=None) -> list[dict]:
    """Compiled per-device bytes (temporaries, arguments, outputs) of each variant's
    value-and-grad, the batch sharded over a "data" axis of `devices` (default: all)."""
    devices = jax.devices() if devices is None else devices
    if batch % len(devices):
        raise ValueError(f"batch {batch} is not divisible by the {len(devices)} devices")
    mesh = jax.sharding.Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
    emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    rows = []
    for label, kind, impl in VARIANTS:

        def loss(zi, zt, lt, bias, kind=kind, impl=impl):
            bias = bias if kind == "sigmoid" else None
            return cl.contrastive_loss(kind, zi, zt, lt, bias, impl=impl, batch_axes=("data",))[0]

        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
        with jax.set_mesh(mesh):
            compiled = jax.jit(grad).lower(emb, emb, scalar, scalar).compile()
        mem = compiled.memory_analysis()
        rows.append(
            {
                "variant": label,
                "temp_bytes": int(mem.temp_size_in_bytes),
                "argument_bytes": int(mem.argument_size_in_bytes),
                "output_bytes": int(mem.output_size_in_bytes),
            }
        )
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def markdown(rows: list[dict], batch: int, dim: int, devices: int) -> str:
    lines = [
        f"Global batch {batch}, embedding width {dim}, {devices} devices (local batch "
        f"{batch // devices}); per-device bytes of the loss + gradient:",
        "",
        "| loss | temporaries | arguments + outputs |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        io = r["argument_bytes"] + r["output_bytes"]
        lines.append(f"| {r['variant']} | {_gib(r['temp_bytes'])} | {_gib(io)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    # argparse, not absl flags: importing this module (tests) must not define global flags.
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32768, help="Global batch.")
    p.add_argument("--dim", type=int, default=512, help="Embedding width.")
    p.add_argument("--devices", type=int, default=8, help="Host CPU devices (batch sharded).")
    p.add_argument("--json", default=None, help="Also write the results to this file.")
    args = p.parse_args(argv)
    if jax.device_count() != args.devices:
        raise SystemExit(
            f"{jax.device_count()} devices, --devices={args.devices}: run this as a module "
            "(python -m experiments.tools.loss_memory) so the host device count is set before jax "
            "starts"
        )
    rows = loss_memory(args.batch, args.dim)
    print(markdown(rows, args.batch, args.dim, args.devices))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "dim": args.dim, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
