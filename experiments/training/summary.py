"""Human-readable end-of-run summary: each metric next to its chance level."""

import os


def format_results(results: dict, workdir: str) -> str:
    """results: {eval_name: {metric: value, "chance_<metric>": value, ...}}."""
    lines = ["", "=" * 64, "Final evaluation"]
    for name, metrics in sorted(results.items()):
        lines.append(f"  {name}:")
        for key, value in sorted(metrics.items()):
            if key.startswith("chance_") or not isinstance(value, float | int):
                continue
            chance = metrics.get(f"chance_{key}")
            extra = f"   (chance {chance:.4f}, {value / chance:.1f}x)" if chance else ""
            lines.append(f"    {key:<14} {value:.4f}{extra}")
    workdir = os.path.abspath(workdir)
    lines += [
        f"Checkpoints: {os.path.join(workdir, 'checkpoints')}",
        f"TensorBoard: tensorboard --logdir {workdir}",
        f"Results:     {os.path.join(workdir, 'eval_results.json')}",
        "=" * 64,
    ]
    return "\n".join(lines)
