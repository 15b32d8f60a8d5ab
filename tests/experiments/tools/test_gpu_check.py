"""experiments/tools/gpu_check.py: refuses a machine without a GPU, and its backend-independent
checks pass on CPU (so a GPU run fails only for GPU reasons)."""

from experiments.tools import gpu_check


def test_refuses_without_a_gpu(capsys):
    assert gpu_check.main([]) == 2
    assert "needs a GPU backend" in capsys.readouterr().err


def test_mixed_precision_check_passes_on_cpu():
    out = gpu_check.check_mixed_precision()
    assert out["dots"] > 0 and out["dots_not_bf16_in_f32_out"] == 0
    assert 0 < out["loss_rel"] < 2e-2 and 0 < out["grad_rel"] < 5e-2
