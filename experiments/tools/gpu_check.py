"""GPU parity checks (run by experiments/tools/gpu_check.sh on a machine with an NVIDIA GPU).

    JAX_PLATFORMS=cuda python -m experiments.tools.gpu_check --json workdirs/gpu_check/parity.json

Each check compares a GPU fast path with its plain reference, forward and backward, and
raises (exit code 1) on a mismatch; the measured errors go to --json either way:
  - attention: the cuDNN flash kernel (`jax.nn.dot_product_attention`, bf16) and XLA's kernel
    against the einsum reference, with padding and causal masks;
  - mixed precision: a bf16_mixed ViT's output and gradients against fp32 within bf16
    tolerances, every matmul bf16-in / f32-out in the compiled program;
  - a tiny CLIP train step on the GPU in fp32 and bf16_mixed: losses close and decreasing.
The suite under tests/ runs on CPU; this is what only a GPU can check.
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from models import attention, precision, vit  # noqa: E402


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_attention() -> dict:
    """cuDNN / XLA attention vs the einsum reference (bf16 inputs), forward and backward."""
    keys = jax.random.split(jax.random.key(0), 4)
    b, t, h, d = 4, 128, 8, 64
    q, k, v = (jax.random.normal(kk, (b, t, h, d), jnp.bfloat16) for kk in keys[:3])
    lengths = jnp.array([128, 100, 64, 17])
    mask = (jnp.arange(t)[None, :] < lengths[:, None])[:, None, None, :]
    out = {}
    for causal in (False, True):
        m = None if causal else mask

        def loss(q, k, v, impl, m=m, causal=causal):
            o = attention.attention(q, k, v, mask=m, causal=causal, implementation=impl)
            return (o.astype(jnp.float32) ** 2).sum(), o

        ref_grad, ref = jax.grad(loss, (0, 1, 2), has_aux=True)(q, k, v, "einsum")
        for impl in ("cudnn", "xla"):
            if impl == "cudnn" and not causal:
                # cuDNN's flash kernel takes padding as sequence lengths, not a dense mask.
                continue
            grad, got = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True), static_argnums=3)(
                q, k, v, impl
            )
            name = f"{impl}_{'causal' if causal else 'padding'}"
            out[name] = {
                "forward_rel": _rel(got, ref),
                "grad_rel": max(_rel(g, r) for g, r in zip(grad, ref_grad, strict=True)),
            }
            assert out[name]["forward_rel"] < 2e-2 and out[name]["grad_rel"] < 5e-2, out[name]
    return out


def check_mixed_precision() -> dict:
    """A bf16_mixed ViT against fp32: outputs and gradients within bf16 tolerance."""
    kw = dict(width=256, depth=4, mlp_dim=1024, num_heads=4, patch_size=16, num_classes=64)
    images = jax.random.normal(jax.random.key(1), (8, 224, 224, 3))
    ref_model = vit.ViT(**kw)
    model = vit.ViT(**kw, **precision.policy_fields("bf16_mixed"))
    params = ref_model.init(jax.random.key(0), images)["params"]

    def loss(m):
        return lambda p: (m.apply({"params": p}, images)[0] ** 2).mean()

    ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss(ref_model)))(params)
    got_loss, got_grad = jax.jit(jax.value_and_grad(loss(model)))(params)
    hlo = jax.jit(jax.grad(loss(model))).lower(params).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    bad = [line for line in dots if "xbf16>, tensor" not in line or "xf32>" not in line]
    out = {
        "loss_rel": abs(float(got_loss) - float(ref_loss)) / abs(float(ref_loss)),
        # Over the whole gradient (a per-leaf ratio blows up on leaves whose true gradient
        # is ~0, e.g. the attention key bias).
        "grad_rel": float(
            np.sqrt(
                sum(
                    np.sum((np.asarray(g) - np.asarray(r)) ** 2)
                    for g, r in zip(
                        jax.tree.leaves(got_grad), jax.tree.leaves(ref_grad), strict=True
                    )
                )
            )
            / np.sqrt(sum(np.sum(np.asarray(r) ** 2) for r in jax.tree.leaves(ref_grad)))
        ),
        "dots": len(dots),
        "dots_not_bf16_in_f32_out": len(bad),
    }
    assert out["loss_rel"] < 2e-2 and out["grad_rel"] < 5e-2 and not bad, out
    return out


def check_train_steps() -> dict:
    """The tiny CLIP trainer step on the GPU, fp32 vs bf16_mixed, on the same batches."""
    from experiments.training import inputs, sharding, trainer

    data_dir = tempfile.mkdtemp()
    losses = {}
    for name in ("fp32", "bf16_mixed"):
        config = _tiny_config(data_dir)
        config.precision = name
        s = trainer.setup(config, devices=jax.devices()[:1])
        data = inputs.Inputs(config.data, global_batch_size=config.batch_size, seed=0)
        it = data.train_iterator()
        state, curve = s.fresh_state(), []
        for _ in range(20):
            batch = {k: v for k, v in next(it).items() if k != "index"}
            state, metrics = s.step_fn(state, sharding.to_global_batch(batch, s.mesh))
            curve.append(float(metrics["loss"]))
        losses[name] = curve
    a, b = np.array(losses["fp32"]), np.array(losses["bf16_mixed"])
    out = {
        "fp32_first_last": [a[0], a[-5:].mean()],
        "bf16_first_last": [b[0], b[-5:].mean()],
        "mean_rel": float(abs(a.mean() - b.mean()) / a.mean()),
    }
    assert a[-5:].mean() < a[0] and b[-5:].mean() < b[0] and out["mean_rel"] < 5e-2, out
    return out


def _tiny_config(data_dir):
    from experiments.configs import common

    config = common.base(total_steps=20, batch_size=32)
    config.objective = "contrastive"
    tower = dict(width=128, depth=2, mlp_dim=256, num_heads=4, num_classes=64)
    config.model = dict(
        image=dict(tower, patch_size=8, pool_type="gap"),
        text=dict(tower, causal=True, pool_type="eos"),
        loss="softmax",
    )
    config.data = common.shapes_data(image_size=32, max_len=16, vocab_size=128)
    config.data.data_dir = data_dir
    config.data.source = dict(image_size=32, train_size=512, test_size=64)
    config.optim = common.adamw(lr=1e-3, warmup_steps=2, weight_decay=0.1)
    config.evals = {}
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the measured errors here")
    args = p.parse_args(argv)
    if jax.default_backend() != "gpu":
        print(f"gpu_check: needs a GPU backend, jax has {jax.default_backend()!r}", file=sys.stderr)
        return 2
    results, failed = {"device": jax.devices()[0].device_kind}, []
    for name, check in [
        ("attention", check_attention),
        ("mixed_precision", check_mixed_precision),
        ("train_steps", check_train_steps),
    ]:
        try:
            results[name] = check()
            print(f"PASS {name}: {results[name]}")
        except AssertionError as e:
            results[name] = {"error": str(e)}
            failed.append(name)
            print(f"FAIL {name}: {e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
