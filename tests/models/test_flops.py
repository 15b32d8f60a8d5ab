"""models/flops.py: analytic counts by hand and against XLA's own cost analysis."""

import math

import jax
import jax.numpy as jnp
import pytest

from models import flops

B, L, D, MLP, HEADS, DEPTH = 2, 16, 128, 512, 4, 2


def _xla_flops(fn, *args, compile: bool = True) -> float:
    """XLA's FLOP count of fn(*args): of the optimised program, or (compile=False, several
    times faster to get) of the HLO as lowered, which agrees within ~1% here."""
    lowered = jax.jit(fn).lower(*args)
    return (lowered.compile() if compile else lowered).cost_analysis()["flops"]


def _layer_norm(x):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6)


def _attention(q_in, kv_in, p):
    """Multi-head attention of q_in [B, Q, D] over kv_in [B, K, D] with plain matmuls."""
    split = lambda x: x.reshape(*x.shape[:2], HEADS, -1).transpose(0, 2, 1, 3)  # [B, H, T, d]
    q, k, v = split(q_in @ p["q"]), split(kv_in @ p["k"]), split(kv_in @ p["v"])
    probs = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1]), -1)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3)
    return out.reshape(q_in.shape) @ p["o"]


def _encoder(x, layers):
    for p in layers:
        y = _layer_norm(x)
        x = x + _attention(y, y, p)
        x = x + jax.nn.relu(_layer_norm(x) @ p["w1"]) @ p["w2"]
    return _layer_norm(x)


def _weights(key, n_layers, width=D, mlp=MLP):
    shapes = dict(q=(width, width), k=(width, width), v=(width, width), o=(width, width))
    shapes.update(w1=(width, mlp), w2=(mlp, width))
    return [
        {n: jax.ShapeDtypeStruct(s, jnp.float32) for n, s in shapes.items()}
        for _ in range(n_layers)
    ]


def _assert_close_to_xla(analytic: float, xla: float):
    # The analytic count has only the matmuls; XLA adds norms, softmax, relu, residuals.
    assert analytic <= xla <= 1.05 * analytic, (analytic, xla, xla / analytic)


def test_transformer_hand_values():
    # 2*L*(4 D^2 + 2 D mlp) + 4 L^2 D per layer, L=2, D=4, mlp=8: 512 + 64.
    got = flops.transformer_flops_per_example(seq_len=2, width=4, depth=1, mlp_dim=8)
    assert got == 576
    assert flops.transformer_flops_per_example(seq_len=2, width=4, depth=3, mlp_dim=8) == 3 * 576
    glu = flops.transformer_flops_per_example(seq_len=2, width=4, depth=1, mlp_dim=8, glu=True)
    assert glu == 576 + 2 * 2 * 4 * 8


def test_vit_and_text_hand_values():
    # 8x8 image, patch 4: 4 patches of 48 values; D=4, mlp=8, depth 1.
    patch_embed = 2 * 4 * 48 * 4
    layer = lambda n: 2 * n * (4 * 16 + 2 * 4 * 8) + 4 * n * n * 4
    assert flops.vit_forward_flops(8, 4, 4, 1, 8) == patch_embed + layer(4)
    assert flops.vit_forward_flops(8, 4, 4, 1, 8, num_classes=10, pool_type="cls") == (
        patch_embed + layer(5) + 2 * 4 * 10
    )
    # MAP head: q/out projections on 1 probe, k/v on 4 tokens, 1x4 attention, MLP on 1 token.
    map_head = 2 * 2 * 16 + 2 * 4 * 2 * 16 + 4 * 4 * 4 + 2 * 2 * 4 * 8
    assert flops.vit_forward_flops(8, 4, 4, 1, 8, pool_type="map") == (
        patch_embed + layer(4) + map_head
    )
    assert flops.vit_forward_flops((8, 4), (4, 2), 4, 1, 8) == 2 * 4 * 24 * 4 + layer(4)
    assert flops.text_forward_flops(3, 4, 1, 8, num_classes=6) == layer(3) + 2 * 4 * 6
    assert flops.text_forward_flops(3, 4, 1, 8, vocab_size=50) == layer(3) + 2 * 3 * 4 * 50


def test_bad_vit_arguments():
    with pytest.raises(ValueError, match="pool_type"):
        flops.vit_forward_flops(8, 4, 4, 1, 8, pool_type="avg")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        flops.vit_forward_flops(10, 4, 4, 1, 8)


def test_transformer_matches_xla_count():
    x = jax.ShapeDtypeStruct((B, L, D), jnp.float32)
    xla = _xla_flops(_encoder, x, _weights(0, DEPTH))
    analytic = B * flops.transformer_flops_per_example(seq_len=L, width=D, depth=DEPTH, mlp_dim=MLP)
    _assert_close_to_xla(analytic, xla)


def test_vit_with_map_head_and_classifier_matches_xla_count():
    image, patch, classes = 32, 8, 10

    def vit(images, embed, layers, probe, head_layer, head):
        n = image // patch  # [B, H, W, 3] -> [B, N, P*P*3] patches.
        x = images.reshape(B, n, patch, n, patch, 3).transpose(0, 1, 3, 2, 4, 5)
        x = _encoder(x.reshape(B, n * n, -1) @ embed, layers)
        pooled = _attention(jnp.broadcast_to(probe, (B, 1, D)), x, head_layer)
        pooled = pooled + jax.nn.relu(_layer_norm(pooled) @ head_layer["w1"]) @ head_layer["w2"]
        return pooled[:, 0] @ head

    args = (
        jax.ShapeDtypeStruct((B, image, image, 3), jnp.float32),
        jax.ShapeDtypeStruct((patch * patch * 3, D), jnp.float32),
        _weights(0, DEPTH),
        jax.ShapeDtypeStruct((1, 1, D), jnp.float32),
        _weights(1, 1)[0],
        jax.ShapeDtypeStruct((D, classes), jnp.float32),
    )
    analytic = B * flops.vit_forward_flops(
        image, patch, D, DEPTH, MLP, num_classes=classes, pool_type="map"
    )
    _assert_close_to_xla(analytic, _xla_flops(vit, *args))


def test_train_flops_matches_xla_backward():
    x = jax.ShapeDtypeStruct((B, L, D), jnp.float32)
    weights = _weights(0, DEPTH)
    forward = B * flops.transformer_flops_per_example(seq_len=L, width=D, depth=DEPTH, mlp_dim=MLP)
    # Gradients for weights and input: forward + 2x backward.
    both = jax.grad(lambda w, x: _encoder(x, w).sum(), argnums=(0, 1))
    _assert_close_to_xla(flops.train_flops(forward), _xla_flops(both, weights, x, compile=False))
    # Input gradients only (a frozen tower that gradients pass through): ~2x.
    through = jax.grad(lambda x, w: _encoder(x, w).sum())
    expected = flops.train_flops(forward, frozen=True, backprop_through=True)
    _assert_close_to_xla(expected, _xla_flops(through, x, weights, compile=False))
    assert flops.train_flops(forward, frozen=True) == forward
