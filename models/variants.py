"""Named transformer sizes: "B/16" -> width/depth/mlp_dim/num_heads/patch_size.

The sizes follow the ViT paper family (Ti/S/B/L) plus "M" (between S and B) and
"mu", a micro size used only by tests so that every model builds in milliseconds.
"""

# name: (width, depth, mlp_dim, num_heads)
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}

VARIANT_NAMES: tuple[str, ...] = tuple(_SIZES)


def decode_variant(variant: str) -> dict[str, int]:
    """Decodes a size name with an optional patch size.

    Args:
      variant: "<size>" or "<size>/<patch>", e.g. "B/16", "mu/8", "S".

    Returns:
      {"width", "depth", "mlp_dim", "num_heads"} plus "patch_size" when the string
      names one.

    Raises:
      ValueError: unknown size or a patch size that is not a positive integer.
    """
    size, sep, patch = variant.partition("/")
    if size not in _SIZES:
        raise ValueError(
            f"Unknown model variant {variant!r}: size must be one of {list(VARIANT_NAMES)}"
            " optionally followed by '/<patch_size>' (e.g. 'B/16')."
        )
    width, depth, mlp_dim, num_heads = _SIZES[size]
    out = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads}
    if sep:
        if not patch.isdigit() or int(patch) <= 0:
            raise ValueError(
                f"Bad patch size in variant {variant!r}: expected a positive integer after '/'."
            )
        out["patch_size"] = int(patch)
    return out
